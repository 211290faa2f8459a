package qtool.format.gguf;

import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * Writes a GGUF v3 file (layout in {@link GgufFile}) as a stream: first declare metadata and every tensor (name,
 * type, dims), then append each tensor's bytes in declaration order, in one piece or many. Each tensor's size follows
 * from its type and dims, so all offsets are known before the first data byte and the header is written then; the
 * model is never held in memory.
 *
 * <p>The file appears at its path only when {@link #close()} finds every tensor complete: until then it is written
 * to a temporary sibling, which {@link #abort()} or a failed close removes.
 *
 * <pre>{@code
 * try (var w = new GgufWriter(path)) {
 *     w.put("general.architecture", GgufValue.of("llama"));
 *     w.addTensor("blk.0.attn_q.weight", GgmlType.Q8_0, 576, 576);
 *     w.write(bytes);   // 576 rows of Q8_0
 * }
 * }</pre>
 */
public final class GgufWriter implements AutoCloseable {
    private final Path path;
    private final Path tmp;
    private final Map<String, GgufValue> metadata = new LinkedHashMap<>();
    private final List<Declared> tensors = new ArrayList<>();
    private final Map<String, Declared> byName = new LinkedHashMap<>();
    private OutputStream out;
    private final byte[] copyBuffer = new byte[1 << 20];
    private int alignment = GgufFile.DEFAULT_ALIGNMENT;
    private boolean headerWritten;
    private boolean closed;
    private int current;         // index of the tensor being written
    private long currentWritten; // bytes of it written so far

    private static final class Declared {
        final String name;
        final GgmlType type;
        final long[] dims;
        final long bytes;
        long offset;

        Declared(String name, GgmlType type, long[] dims, long bytes) {
            this.name = name;
            this.type = type;
            this.dims = dims;
            this.bytes = bytes;
        }
    }

    public GgufWriter(Path path) {
        this.path = path;
        this.tmp = path.resolveSibling(path.getFileName() + ".tmp");
        try {
            this.out = new BufferedOutputStream(Files.newOutputStream(tmp), 1 << 20);
        } catch (IOException e) {
            throw new QtoolException(path + ": cannot write: " + e.getMessage());
        }
    }

    public Path path() {
        return path;
    }

    /** Adds (or replaces) a metadata entry; before the first tensor data. */
    public GgufWriter put(String key, GgufValue value) {
        checkBeforeData("metadata '" + key + "'");
        if (key.equals(GgufFile.ALIGNMENT_KEY)) {
            if (value.type() != GgufValueType.UINT32) throw new IllegalArgumentException(key + " must be uint32");
            long a = (Long) value.value();
            if (a == 0 || Long.bitCount(a) != 1) throw new IllegalArgumentException(key + " must be a power of two");
            alignment = (int) a;
        }
        metadata.put(key, value);
        return this;
    }

    public GgufWriter putAll(Map<String, GgufValue> entries) {
        entries.forEach(this::put);
        return this;
    }

    public GgufWriter remove(String key) {
        checkBeforeData("metadata '" + key + "'");
        if (key.equals(GgufFile.ALIGNMENT_KEY)) alignment = GgufFile.DEFAULT_ALIGNMENT;
        metadata.remove(key);
        return this;
    }

    public GgufWriter putString(String key, String v) {
        return put(key, GgufValue.of(v));
    }

    public GgufWriter putUint32(String key, long v) {
        return put(key, GgufValue.uint32(v));
    }

    public GgufWriter putInt32(String key, int v) {
        return put(key, GgufValue.int32(v));
    }

    public GgufWriter putFloat32(String key, float v) {
        return put(key, GgufValue.float32(v));
    }

    public GgufWriter putBool(String key, boolean v) {
        return put(key, GgufValue.bool(v));
    }

    /** Declares a tensor; dims in ggml order (dims[0] = row length). Before the first tensor data. */
    public GgufWriter addTensor(String name, GgmlType type, long... dims) {
        checkBeforeData("tensor '" + name + "'");
        if (byName.containsKey(name)) throw new IllegalArgumentException("duplicate tensor name '" + name + "'");
        if (dims.length > GgufFile.MAX_DIMS) throw new IllegalArgumentException(name + ": more than 4 dims");
        long n = 1;
        for (long d : dims) {
            if (d < 0) throw new IllegalArgumentException(name + ": negative dim");
            n = Math.multiplyExact(n, d);
        }
        long rowLength = dims.length == 0 ? 1 : dims[0];
        if (rowLength % type.blockSize != 0) {
            throw new IllegalArgumentException(name + ": row length " + rowLength + " is not a multiple of " + type
                    + "'s block size " + type.blockSize);
        }
        Declared d = new Declared(name, type, dims.clone(), type.byteSize(n));
        tensors.add(d);
        byName.put(name, d);
        return this;
    }

    /** Bytes that tensor {@code name} takes (from its type and dims). */
    public long tensorBytes(String name) {
        Declared d = byName.get(name);
        if (d == null) throw new IllegalArgumentException("no tensor '" + name + "' declared");
        return d.bytes;
    }

    /** The whole data of the next tensor, which must be {@code name}. */
    public void writeTensor(String name, MemorySegment data) {
        ensureHeader();
        skipEmpty();
        if (current >= tensors.size() || !tensors.get(current).name.equals(name) || currentWritten != 0) {
            String expected = current < tensors.size() ? "'" + tensors.get(current).name + "'" : "no more tensors";
            throw new IllegalStateException("tensor '" + name + "' written out of order; expected " + expected);
        }
        if (data.byteSize() != tensors.get(current).bytes) {
            throw new IllegalArgumentException("tensor '" + name + "' has " + tensors.get(current).bytes
                    + " bytes, given " + data.byteSize());
        }
        write(data);
    }

    /** Appends bytes to the tensors in declaration order, moving to the next tensor when one is full. */
    public void write(MemorySegment data) {
        ensureHeader();
        long off = 0, n = data.byteSize();
        try {
            while (off < n) {
                skipEmpty();
                if (current >= tensors.size()) {
                    throw new IllegalStateException("more data than the declared tensors hold (" + (n - off) + " bytes over)");
                }
                Declared d = tensors.get(current);
                long take = Math.min(n - off, d.bytes - currentWritten);
                copy(data, off, take);
                off += take;
                currentWritten += take;
                if (currentWritten == d.bytes) finishTensor();
            }
        } catch (IOException e) {
            throw new QtoolException(path + ": cannot write: " + e.getMessage());
        }
    }

    public void write(byte[] data) {
        write(MemorySegment.ofArray(data));
    }

    private void skipEmpty() {
        try {
            while (current < tensors.size() && currentWritten == tensors.get(current).bytes) finishTensor();
        } catch (IOException e) {
            throw new QtoolException(path + ": cannot write: " + e.getMessage());
        }
    }

    private void finishTensor() throws IOException {
        Declared d = tensors.get(current);
        long pad = GgufFile.align(d.bytes, alignment) - d.bytes;
        for (long i = 0; i < pad; i++) out.write(0);
        current++;
        currentWritten = 0;
    }

    private void copy(MemorySegment src, long off, long n) throws IOException {
        while (n > 0) {
            int chunk = (int) Math.min(n, copyBuffer.length);
            MemorySegment.copy(src, ValueLayout.JAVA_BYTE, off, copyBuffer, 0, chunk);
            out.write(copyBuffer, 0, chunk);
            off += chunk;
            n -= chunk;
        }
    }

    private void checkBeforeData(String what) {
        if (closed) throw new IllegalStateException("writer is closed");
        if (headerWritten) throw new IllegalStateException(what + " declared after tensor data was written");
    }

    private void ensureHeader() {
        if (closed) throw new IllegalStateException("writer is closed");
        if (headerWritten) return;
        headerWritten = true;
        long offset = 0;
        for (Declared d : tensors) {
            d.offset = offset;
            offset = GgufFile.align(offset + d.bytes, alignment);
        }
        try {
            Encoder e = new Encoder();
            e.u32(GgufFile.MAGIC);
            e.u32(3);
            e.u64(tensors.size());
            e.u64(metadata.size());
            for (var kv : metadata.entrySet()) {
                e.string(kv.getKey());
                e.u32(kv.getValue().type().id);
                e.value(kv.getValue());
            }
            for (Declared d : tensors) {
                e.string(d.name);
                e.u32(d.dims.length);
                for (long dim : d.dims) e.u64(dim);
                e.u32(d.type.id);
                e.u64(d.offset);
            }
            long pad = GgufFile.align(e.size(), alignment) - e.size();
            for (long i = 0; i < pad; i++) e.write(0);
            e.writeTo(out);
        } catch (IOException ex) {
            throw new QtoolException(path + ": cannot write: " + ex.getMessage());
        }
    }

    /** Finishes the file and moves it into place; fails (removing the partial file) when tensor data is missing. */
    @Override
    public void close() {
        if (closed) return;
        ensureHeader();
        skipEmpty();
        if (current < tensors.size()) {
            Declared d = tensors.get(current);
            String msg = path + ": incomplete GGUF: tensor '" + d.name + "' has " + currentWritten + " of " + d.bytes
                    + " bytes" + (tensors.size() - current > 1 ? " and " + (tensors.size() - current - 1) + " more tensors have none" : "");
            abort();
            throw new QtoolException(msg);
        }
        closed = true;
        try {
            out.close();
            Files.move(tmp, path, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            deleteTmp();
            throw new QtoolException(path + ": cannot write: " + e.getMessage());
        }
    }

    /** Stops writing and removes the partial file. */
    public void abort() {
        if (closed) return;
        closed = true;
        try {
            out.close();
        } catch (IOException ignored) {
            // the file is being discarded
        }
        deleteTmp();
    }

    private void deleteTmp() {
        try {
            Files.deleteIfExists(tmp);
        } catch (IOException ignored) {
            // nothing more can be done; the name ends in .tmp
        }
    }

    /** Little-endian encoding of header, metadata and tensor infos. */
    private static final class Encoder extends ByteArrayOutputStream {
        Encoder() {
            super(1 << 16);
        }

        void u16(int v) {
            write(v);
            write(v >>> 8);
        }

        void u32(int v) {
            for (int i = 0; i < 4; i++) write(v >>> (8 * i));
        }

        void u64(long v) {
            for (int i = 0; i < 8; i++) write((int) (v >>> (8 * i)));
        }

        void string(String s) {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            u64(b.length);
            write(b, 0, b.length);
        }

        void value(GgufValue v) {
            if (v.type() == GgufValueType.ARRAY) {
                array(v);
            } else {
                scalar(v.type(), v.value());
            }
        }

        void scalar(GgufValueType t, Object o) {
            switch (t) {
                case UINT8, INT8 -> write((Integer) o);
                case UINT16, INT16 -> u16((Integer) o);
                case UINT32 -> u32((int) (long) (Long) o);
                case INT32 -> u32((Integer) o);
                case UINT64, INT64 -> u64((Long) o);
                case FLOAT32 -> u32(Float.floatToRawIntBits((Float) o));
                case FLOAT64 -> u64(Double.doubleToRawLongBits((Double) o));
                case BOOL -> write((Boolean) o ? 1 : 0);
                case STRING -> string((String) o);
                case ARRAY -> array((GgufValue) o);
            }
        }

        void array(GgufValue v) {
            u32(v.elementType().id);
            u64(v.length());
            switch (v.value()) {
                case byte[] a -> write(a, 0, a.length);
                case short[] a -> { for (short x : a) u16(x); }
                case int[] a -> { for (int x : a) u32(x); }
                case long[] a -> { for (long x : a) u64(x); }
                case float[] a -> { for (float x : a) u32(Float.floatToRawIntBits(x)); }
                case double[] a -> { for (double x : a) u64(Double.doubleToRawLongBits(x)); }
                case boolean[] a -> { for (boolean x : a) write(x ? 1 : 0); }
                case String[] a -> { for (String x : a) string(x); }
                case GgufValue[] a -> { for (GgufValue x : a) array(x); }
                default -> throw new IllegalStateException("unexpected array " + v.value().getClass());
            }
        }
    }
}
