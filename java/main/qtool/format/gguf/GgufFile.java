package qtool.format.gguf;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * A GGUF file (version 2 or 3), memory-mapped read-only. The file layout (ggml {@code docs/gguf.md}), all
 * little-endian:
 *
 * <pre>
 * header        "GGUF" | u32 version | u64 tensor_count | u64 kv_count
 * kv[kv_count]  string key | u32 value type | value
 *               (string = u64 byte length + UTF-8 bytes, no terminator;
 *                array = u32 element type | u64 count | elements, arrays may nest)
 * tensor infos  string name | u32 n_dims | u64 dims[n_dims] | u32 ggml type | u64 offset
 * padding       to a multiple of general.alignment (u32, default 32)
 * data          each tensor at data start + offset, offsets multiples of the alignment
 * </pre>
 *
 * Version 1 (32-bit counts and lengths) is not read. Every length and count read from the file is checked against
 * the bytes left before anything is allocated, so a damaged or crafted file gives a {@link QtoolException} naming
 * the file and the problem, never an OutOfMemoryError or a crash. Tensors are zero-copy slices of the mapping and
 * stay valid until {@link #close()}.
 */
public final class GgufFile implements AutoCloseable {
    public static final int MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
    public static final int DEFAULT_ALIGNMENT = 32;
    public static final String ALIGNMENT_KEY = "general.alignment";
    /** ggml's GGML_MAX_DIMS: tensors with more dims cannot be loaded by llama.cpp. */
    public static final int MAX_DIMS = 4;
    /** Arrays of arrays deeper than this are refused (they would only serve to exhaust the stack). */
    static final int MAX_NESTING = 8;

    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfDouble F64 = ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final Path path;
    private final Arena arena;
    private final MemorySegment file;
    private final int version;
    private final int alignment;
    private final long dataOffset;
    private final Map<String, GgufValue> entries;
    private final List<GgufTensor> tensors;
    private final Map<String, GgufTensor> tensorsByName;
    private Map<String, Object> plainMetadata;

    private GgufFile(Path path, Arena arena, MemorySegment file) {
        this.path = path;
        this.arena = arena;
        this.file = file;
        Parser p = new Parser(path, file);
        this.version = p.header();
        long tensorCount = p.tensorCount;
        long kvCount = p.kvCount;
        this.entries = Collections.unmodifiableMap(p.metadata(kvCount));
        this.alignment = alignmentOf(path, entries);
        List<GgufTensor> infos = p.tensorInfos(tensorCount);
        long headerEnd = p.pos;
        long dataStart = align(headerEnd, alignment);
        if (!infos.isEmpty() && dataStart > file.byteSize()) {
            throw new QtoolException(path + ": truncated GGUF file: the data section would start at byte " + dataStart
                    + " but the file has " + file.byteSize() + " bytes");
        }
        this.dataOffset = Math.min(dataStart, file.byteSize());
        this.tensors = Collections.unmodifiableList(placeTensors(infos));
        Map<String, GgufTensor> byName = new LinkedHashMap<>();
        for (GgufTensor t : tensors) byName.put(t.name(), t);
        this.tensorsByName = Collections.unmodifiableMap(byName);
    }

    /** Maps and parses {@code path}; the caller closes the result. */
    public static GgufFile open(Path path) {
        Arena arena = Arena.ofShared();
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = ch.size();
            MemorySegment seg = size == 0 ? MemorySegment.ofArray(new byte[0]) : ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
            return new GgufFile(path, arena, seg);
        } catch (NoSuchFileException e) {
            arena.close();
            throw new QtoolException(path + ": no such file");
        } catch (IOException e) {
            arena.close();
            throw new QtoolException(path + ": cannot read: " + e.getMessage());
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    public Path path() {
        return path;
    }

    public int version() {
        return version;
    }

    public int alignment() {
        return alignment;
    }

    /** Byte offset of the data section in the file. */
    public long dataOffset() {
        return dataOffset;
    }

    public long fileSize() {
        return file.byteSize();
    }

    /** Metadata with types, in file order. */
    public Map<String, GgufValue> entries() {
        return entries;
    }

    /** Metadata as plain Java values (see {@link GgufValueType}), in file order. */
    public Map<String, Object> metadata() {
        if (plainMetadata == null) {
            Map<String, Object> m = new LinkedHashMap<>();
            for (var e : entries.entrySet()) m.put(e.getKey(), e.getValue().plain());
            plainMetadata = Collections.unmodifiableMap(m);
        }
        return plainMetadata;
    }

    public GgufValue entry(String key) {
        return entries.get(key);
    }

    public boolean has(String key) {
        return entries.containsKey(key);
    }

    public List<GgufTensor> tensors() {
        return tensors;
    }

    /** The tensor of this name, or null. */
    public GgufTensor tensor(String name) {
        return tensorsByName.get(name);
    }

    /** The tensor of this name; a QtoolException naming the file when it is missing. */
    public GgufTensor requireTensor(String name) {
        GgufTensor t = tensorsByName.get(name);
        if (t == null) throw new QtoolException(path + ": no tensor named '" + name + "'");
        return t;
    }

    // ---- typed metadata access; errors name the file and key ----

    public String getString(String key) {
        return (String) require(key, GgufValueType.STRING).value();
    }

    public String getString(String key, String dflt) {
        return has(key) ? getString(key) : dflt;
    }

    /** Any integer type as a long. */
    public long getLong(String key) {
        GgufValue v = require(key, null);
        if (!isInteger(v.type())) throw wrongType(key, v, "an integer");
        return ((Number) v.value()).longValue();
    }

    public long getLong(String key, long dflt) {
        return has(key) ? getLong(key) : dflt;
    }

    /** An integer that must fit in an int. */
    public int getInt(String key) {
        long v = getLong(key);
        if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) {
            throw new QtoolException(path + ": metadata " + key + " = " + v + " is out of range");
        }
        return (int) v;
    }

    public int getInt(String key, int dflt) {
        return has(key) ? getInt(key) : dflt;
    }

    /** Any numeric type as a double. */
    public double getDouble(String key) {
        GgufValue v = require(key, null);
        if (!isInteger(v.type()) && v.type() != GgufValueType.FLOAT32 && v.type() != GgufValueType.FLOAT64) {
            throw wrongType(key, v, "a number");
        }
        return ((Number) v.value()).doubleValue();
    }

    public double getDouble(String key, double dflt) {
        return has(key) ? getDouble(key) : dflt;
    }

    public boolean getBool(String key, boolean dflt) {
        return has(key) ? (Boolean) require(key, GgufValueType.BOOL).value() : dflt;
    }

    public String[] getStrings(String key) {
        return (String[]) requireArray(key, GgufValueType.STRING).value();
    }

    public float[] getFloats(String key) {
        return (float[]) requireArray(key, GgufValueType.FLOAT32).value();
    }

    /** An INT32 or UINT32 array. */
    public int[] getInts(String key) {
        GgufValue v = require(key, GgufValueType.ARRAY);
        if (v.elementType() != GgufValueType.INT32 && v.elementType() != GgufValueType.UINT32) {
            throw wrongType(key, v, "an array of int32");
        }
        return (int[]) v.value();
    }

    private GgufValue require(String key, GgufValueType type) {
        GgufValue v = entries.get(key);
        if (v == null) throw new QtoolException(path + ": metadata key '" + key + "' is missing");
        if (type != null && v.type() != type) throw wrongType(key, v, type.name().toLowerCase());
        return v;
    }

    private GgufValue requireArray(String key, GgufValueType element) {
        GgufValue v = require(key, GgufValueType.ARRAY);
        if (v.elementType() != element) throw wrongType(key, v, "an array of " + element.name().toLowerCase());
        return v;
    }

    private QtoolException wrongType(String key, GgufValue v, String expected) {
        return new QtoolException(path + ": metadata " + key + " is " + v + ", expected " + expected);
    }

    static boolean isInteger(GgufValueType t) {
        return switch (t) {
            case UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64 -> true;
            default -> false;
        };
    }

    /** Unmaps the file; tensor segments become invalid. */
    @Override
    public void close() {
        arena.close();
    }

    static long align(long x, long alignment) {
        return (x + alignment - 1) / alignment * alignment;
    }

    private static int alignmentOf(Path path, Map<String, GgufValue> entries) {
        GgufValue v = entries.get(ALIGNMENT_KEY);
        if (v == null) return DEFAULT_ALIGNMENT;
        if (v.type() != GgufValueType.UINT32) {
            throw new QtoolException(path + ": " + ALIGNMENT_KEY + " is " + v + ", expected uint32");
        }
        long a = (Long) v.value();
        if (a == 0 || Long.bitCount(a) != 1 || a > (1 << 30)) {
            throw new QtoolException(path + ": " + ALIGNMENT_KEY + " = " + a + " is not a power of two (up to 2^30)");
        }
        return (int) a;
    }

    /** Checks each tensor's offset and size against the data section and the others, then slices its bytes. */
    private List<GgufTensor> placeTensors(List<GgufTensor> infos) {
        long dataSize = file.byteSize() - dataOffset;
        List<GgufTensor> placed = new ArrayList<>(infos.size());
        for (GgufTensor t : infos) {
            long bytes = t.byteSize();
            if (t.offset() % alignment != 0) {
                throw new QtoolException(path + ": tensor '" + t.name() + "' has offset " + t.offset()
                        + ", not a multiple of the alignment " + alignment);
            }
            if (t.offset() > dataSize || bytes > dataSize - t.offset()) {
                throw new QtoolException(path + ": truncated GGUF file: tensor '" + t.name() + "' (" + bytes
                        + " bytes at data offset " + t.offset() + ") ends past the end of the file (data section has "
                        + dataSize + " bytes)");
            }
            placed.add(new GgufTensor(t.name(), t.type(), t.dims(), t.offset(),
                    file.asSlice(dataOffset + t.offset(), bytes)));
        }
        List<GgufTensor> byOffset = new ArrayList<>(placed);
        byOffset.sort(Comparator.comparingLong(GgufTensor::offset));
        GgufTensor furthest = null; // the tensor reaching furthest into the data section so far
        for (GgufTensor cur : byOffset) {
            if (cur.byteSize() == 0) continue;
            if (furthest != null && furthest.offset() + furthest.byteSize() > cur.offset()) {
                throw new QtoolException(path + ": tensors '" + furthest.name() + "' (data offset " + furthest.offset()
                        + ", " + furthest.byteSize() + " bytes) and '" + cur.name() + "' (data offset " + cur.offset()
                        + ") overlap");
            }
            if (furthest == null || cur.offset() + cur.byteSize() > furthest.offset() + furthest.byteSize()) furthest = cur;
        }
        return placed;
    }

    /** Reads the header, metadata and tensor infos, checking every read against the end of the file. */
    private static final class Parser {
        final Path path;
        final MemorySegment seg;
        final long size;
        long pos;
        long tensorCount;
        long kvCount;
        String context = "header";

        Parser(Path path, MemorySegment seg) {
            this.path = path;
            this.seg = seg;
            this.size = seg.byteSize();
        }

        int header() {
            if (size < 4) throw truncated(4);
            int magic = seg.get(U32, 0);
            if (magic != MAGIC) {
                throw new QtoolException(path + ": not a GGUF file (starts with " + hex(4) + ", expected \"GGUF\")");
            }
            pos = 4;
            context = "header";
            int v = u32();
            if (v != 2 && v != 3) {
                String hint = v == 1 ? " (GGUF v1, 32-bit lengths, predates llama.cpp's current loader)"
                        : Integer.reverseBytes(v) == 2 || Integer.reverseBytes(v) == 3 ? " (a big-endian GGUF file)" : "";
                throw new QtoolException(path + ": unsupported GGUF version " + Integer.toUnsignedString(v) + hint
                        + "; qtool reads versions 2 and 3");
            }
            tensorCount = u64();
            kvCount = u64();
            // Each kv takes at least 13 bytes (8-byte key length, 4-byte type, 1-byte value) and each tensor
            // info at least 24; counts the file cannot hold are refused before anything is allocated.
            if (kvCount < 0 || kvCount > (size - pos) / 13) {
                throw new QtoolException(path + ": truncated or corrupt GGUF file: header claims "
                        + Long.toUnsignedString(kvCount) + " metadata entries, more than the file can hold");
            }
            if (tensorCount < 0 || tensorCount > (size - pos) / 24) {
                throw new QtoolException(path + ": truncated or corrupt GGUF file: header claims "
                        + Long.toUnsignedString(tensorCount) + " tensors, more than the file can hold");
            }
            return v;
        }

        Map<String, GgufValue> metadata(long count) {
            Map<String, GgufValue> m = new LinkedHashMap<>();
            for (long i = 0; i < count; i++) {
                context = "metadata entry " + i + " key";
                String key = string();
                context = "metadata " + key;
                GgufValueType type = valueType(u32());
                GgufValue v = value(type, 0);
                if (m.putIfAbsent(key, v) != null) {
                    throw new QtoolException(path + ": duplicate metadata key '" + key + "'");
                }
            }
            return m;
        }

        List<GgufTensor> tensorInfos(long count) {
            List<GgufTensor> out = new ArrayList<>((int) Math.min(count, 4096));
            java.util.Set<String> names = new java.util.HashSet<>();
            for (long i = 0; i < count; i++) {
                context = "tensor info " + i + " name";
                String name = string();
                context = "tensor info '" + name + "'";
                int nDims = u32();
                if (nDims < 0 || nDims > MAX_DIMS) {
                    throw new QtoolException(path + ": tensor '" + name + "' has " + Integer.toUnsignedString(nDims)
                            + " dimensions; at most " + MAX_DIMS + " are supported");
                }
                long[] dims = new long[nDims];
                long n = 1;
                for (int d = 0; d < nDims; d++) {
                    dims[d] = u64();
                    if (dims[d] < 0) {
                        throw new QtoolException(path + ": tensor '" + name + "' has dimension " + d + " = "
                                + Long.toUnsignedString(dims[d]) + ", too large");
                    }
                    if (dims[d] != 0 && n > Long.MAX_VALUE / dims[d]) {
                        throw new QtoolException(path + ": tensor '" + name + "' has too many elements");
                    }
                    n *= dims[d];
                }
                int typeId = u32();
                GgmlType type = GgmlType.byId(Integer.toUnsignedLong(typeId));
                if (type == null) {
                    throw new QtoolException(path + ": tensor '" + name + "' has ggml type "
                            + Integer.toUnsignedString(typeId) + ", which qtool does not support (supported: "
                            + supportedTypes() + ")");
                }
                long rowLength = nDims == 0 ? 1 : dims[0];
                if (rowLength % type.blockSize != 0) {
                    throw new QtoolException(path + ": tensor '" + name + "' of type " + type + " has row length "
                            + rowLength + ", not a multiple of the block size " + type.blockSize);
                }
                if (n / type.blockSize > Long.MAX_VALUE / type.typeSize) {
                    throw new QtoolException(path + ": tensor '" + name + "' is too large");
                }
                long offset = u64();
                if (offset < 0) {
                    throw new QtoolException(path + ": tensor '" + name + "' has offset "
                            + Long.toUnsignedString(offset) + ", past the end of the file");
                }
                if (!names.add(name)) throw new QtoolException(path + ": duplicate tensor name '" + name + "'");
                out.add(new GgufTensor(name, type, dims, offset, MemorySegment.NULL));
            }
            return out;
        }

        private GgufValue value(GgufValueType type, int depth) {
            return switch (type) {
                case UINT8 -> scalar(type, Byte.toUnsignedInt(bytes(1).get(ValueLayout.JAVA_BYTE, 0)));
                case INT8 -> scalar(type, (int) bytes(1).get(ValueLayout.JAVA_BYTE, 0));
                case UINT16 -> scalar(type, Short.toUnsignedInt(bytes(2).get(U16, 0)));
                case INT16 -> scalar(type, (int) bytes(2).get(U16, 0));
                case UINT32 -> scalar(type, Integer.toUnsignedLong(u32()));
                case INT32 -> scalar(type, u32());
                case UINT64, INT64 -> scalar(type, u64());
                case FLOAT32 -> scalar(type, bytes(4).get(F32, 0));
                case FLOAT64 -> scalar(type, bytes(8).get(F64, 0));
                case BOOL -> scalar(type, bytes(1).get(ValueLayout.JAVA_BYTE, 0) != 0);
                case STRING -> scalar(type, string());
                case ARRAY -> array(depth);
            };
        }

        private static GgufValue scalar(GgufValueType type, Object v) {
            return new GgufValue(type, null, v);
        }

        private GgufValue array(int depth) {
            if (depth >= MAX_NESTING) {
                throw new QtoolException(path + ": " + context + ": arrays nested more than " + MAX_NESTING + " deep");
            }
            GgufValueType et = valueType(u32());
            long n = u64();
            long left = size - pos;
            if (n < 0 || n > left / et.minEncodedSize()) {
                throw new QtoolException(path + ": truncated or corrupt GGUF file: " + context + " is an array of "
                        + Long.toUnsignedString(n) + " " + et + " values at byte " + (pos - 12)
                        + ", longer than the " + left + " bytes left in the file");
            }
            if (n > Integer.MAX_VALUE - 8) {
                throw new QtoolException(path + ": " + context + ": array of " + n + " elements is too long");
            }
            int len = (int) n;
            Object values = switch (et) {
                case UINT8, INT8 -> bytes(len).toArray(ValueLayout.JAVA_BYTE);
                case UINT16, INT16 -> copy(len, 2, U16, new short[len]);
                case UINT32, INT32 -> copy(len, 4, U32, new int[len]);
                case UINT64, INT64 -> copy(len, 8, U64, new long[len]);
                case FLOAT32 -> copy(len, 4, F32, new float[len]);
                case FLOAT64 -> copy(len, 8, F64, new double[len]);
                case BOOL -> {
                    MemorySegment b = bytes(len);
                    boolean[] a = new boolean[len];
                    for (int i = 0; i < len; i++) a[i] = b.get(ValueLayout.JAVA_BYTE, i) != 0;
                    yield a;
                }
                case STRING -> {
                    String[] a = new String[len];
                    for (int i = 0; i < len; i++) a[i] = string();
                    yield a;
                }
                case ARRAY -> {
                    GgufValue[] a = new GgufValue[len];
                    for (int i = 0; i < len; i++) a[i] = array(depth + 1);
                    yield a;
                }
            };
            return new GgufValue(GgufValueType.ARRAY, et, values);
        }

        private Object copy(int len, int elemSize, ValueLayout layout, Object dst) {
            MemorySegment src = bytes((long) len * elemSize);
            MemorySegment.copy(src, layout, 0, dst, 0, len);
            return dst;
        }

        private GgufValueType valueType(int id) {
            GgufValueType t = GgufValueType.byId(Integer.toUnsignedLong(id));
            if (t == null) {
                throw new QtoolException(path + ": " + context + " has unknown metadata value type "
                        + Integer.toUnsignedString(id) + " at byte " + (pos - 4) + " (known: 0-12)");
            }
            return t;
        }

        String string() {
            long len = u64();
            if (len < 0 || len > size - pos) {
                throw new QtoolException(path + ": truncated or corrupt GGUF file: " + context + " is a string of "
                        + Long.toUnsignedString(len) + " bytes at byte " + (pos - 8) + ", longer than the "
                        + (size - pos) + " bytes left in the file");
            }
            if (len > Integer.MAX_VALUE - 8) throw new QtoolException(path + ": " + context + ": string too long");
            MemorySegment b = bytes(len);
            return new String(b.toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
        }

        int u32() {
            return bytes(4).get(U32, 0);
        }

        long u64() {
            return bytes(8).get(U64, 0);
        }

        MemorySegment bytes(long n) {
            if (n > size - pos) throw truncated(n);
            MemorySegment s = seg.asSlice(pos, n);
            pos += n;
            return s;
        }

        private QtoolException truncated(long n) {
            return new QtoolException(path + ": truncated GGUF file: " + context + " needs " + n + " bytes at byte "
                    + pos + ", but the file has " + size + " bytes");
        }

        private String hex(int n) {
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < n; i++) sb.append(String.format("%02x", seg.get(ValueLayout.JAVA_BYTE, i)));
            return "0x" + sb;
        }
    }

    static String supportedTypes() {
        StringBuilder sb = new StringBuilder();
        for (GgmlType t : GgmlType.values()) {
            if (!sb.isEmpty()) sb.append(", ");
            sb.append(t).append('=').append(t.id);
        }
        return sb.toString();
    }

    /** Whether a file begins with the GGUF magic (for format sniffing). */
    public static boolean looksLikeGguf(Path path) {
        try (var in = Files.newInputStream(path)) {
            byte[] b = in.readNBytes(4);
            return b.length == 4 && b[0] == 'G' && b[1] == 'G' && b[2] == 'U' && b[3] == 'F';
        } catch (IOException e) {
            return false;
        }
    }
}
