package qtool.format.torch;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.DType;

/**
 * A checkpoint written by {@code torch.save} (the zip format of PyTorch 1.6 and later): {@code ARCHIVE/data.pkl}
 * is the pickled object, {@code ARCHIVE/data/KEY} the raw bytes of each storage, {@code ARCHIVE/byteorder} says
 * "little" (absent in old files, which are little-endian). PyTorch stores every record uncompressed, so the file is
 * mapped and each storage is a slice of the mapping; tensors are zero-copy views into it, alive as long as the arena.
 * The zip directory is parsed here (zip64 included) rather than with java.util.zip, which would copy.
 */
public final class TorchZipFile {
    private static final int EOCD = 0x06054b50, ZIP64_LOCATOR = 0x07064b50, ZIP64_EOCD = 0x06064b50;
    private static final int CENTRAL = 0x02014b50, LOCAL = 0x04034b50;

    /** A storage: the dtype its type names and its bytes in the mapping. */
    public record Storage(String key, DType dtype, MemorySegment bytes) {}

    private final Path path;
    private final MemorySegment map;
    private final Map<String, MemorySegment> entries;
    private final String prefix;

    private TorchZipFile(Path path, MemorySegment map, Map<String, MemorySegment> entries, String prefix) {
        this.path = path;
        this.map = map;
        this.entries = entries;
        this.prefix = prefix;
    }

    public static TorchZipFile open(Path path, Arena arena) {
        MemorySegment map;
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            map = ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena);
        } catch (java.nio.file.NoSuchFileException e) {
            throw new QtoolException(path + ": no such file");
        } catch (IOException e) {
            throw new QtoolException(path + ": cannot read: " + e.getMessage());
        }
        if (map.byteSize() >= 2 && u8(map, 0) == 0x80) {
            throw new QtoolException(path + ": a legacy (pre-1.6, non-zip) torch.save file; re-save it with a newer PyTorch");
        }
        Map<String, MemorySegment> entries = readDirectory(path, map);
        String prefix = null;
        for (String name : entries.keySet()) {
            if (name.endsWith("/data.pkl") && name.indexOf('/') == name.length() - "/data.pkl".length()) {
                prefix = name.substring(0, name.length() - "data.pkl".length());
            }
        }
        if (prefix == null) throw new QtoolException(path + ": a zip file without ARCHIVE/data.pkl, not a torch.save checkpoint");
        MemorySegment order = entries.get(prefix + "byteorder");
        if (order != null) {
            String o = new String(order.toArray(ValueLayout.JAVA_BYTE), StandardCharsets.US_ASCII).trim();
            if (!o.equals("little")) throw new QtoolException(path + ": byteorder '" + o + "'; only little-endian checkpoints are supported");
        }
        return new TorchZipFile(path, map, entries, prefix);
    }

    public Path path() {
        return path;
    }

    /** Entry names, as the zip lists them. */
    public List<String> entryNames() {
        return new ArrayList<>(entries.keySet());
    }

    /** The bytes of one entry, zero-copy. */
    public MemorySegment entry(String name) {
        MemorySegment s = entries.get(name);
        if (s == null) throw new QtoolException(path + ": no entry " + name);
        return s;
    }

    /** Unpickles data.pkl: the checkpoint's object, with tensors as zero-copy {@link Tensor}s. */
    public Object load() {
        byte[] pkl = entry(prefix + "data.pkl").toArray(ValueLayout.JAVA_BYTE);
        Map<String, Storage> storages = new LinkedHashMap<>();
        String where = path + " (" + prefix + "data.pkl)";
        try {
            return new SafeUnpickler(pkl, where, pid -> storage(pid, storages, where), args -> rebuildTensor(args, where)).load();
        } catch (ArithmeticException e) { // sizes whose product or offset overflows 64 bits
            throw new QtoolException(where + ": tensor sizes overflow: " + e.getMessage());
        }
    }

    /** The checkpoint's tensors by name: a state dict, or a dict holding one under "state_dict"/"model". */
    public Map<String, Tensor> tensors() {
        Object root = load();
        if (root instanceof Map<?, ?> m && !m.isEmpty() && !(m.values().iterator().next() instanceof Tensor)) {
            for (String key : List.of("state_dict", "model")) {
                if (m.get(key) instanceof Map<?, ?> inner) root = inner;
            }
        }
        if (!(root instanceof Map<?, ?> m)) throw new QtoolException(path + ": holds " + root + ", not a dict of tensors");
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : m.entrySet()) {
            if (e.getKey() instanceof String k && e.getValue() instanceof Tensor t) out.put(k, t);
        }
        return out;
    }

    private Storage storage(Object pid, Map<String, Storage> storages, String where) {
        // ('storage', storage_type, key, location, numel), as torch.serialization._save's persistent_id writes it
        if (!(pid instanceof List<?> t) || t.size() != 5 || !"storage".equals(t.get(0))
                || !(t.get(1) instanceof SafeUnpickler.Global type) || !(t.get(2) instanceof String key) || !(t.get(4) instanceof Long numel)) {
            throw new QtoolException(where + ": unexpected persistent id " + pid);
        }
        Storage cached = storages.get(key);
        if (cached != null) return cached;
        DType dtype = switch (type.name()) {
            case "HalfStorage" -> DType.F16;
            case "BFloat16Storage" -> DType.BF16;
            case "FloatStorage" -> DType.F32;
            case "IntStorage" -> DType.I32;
            case "LongStorage" -> DType.I64;
            default -> throw new QtoolException(where + ": storage type " + type + " is not supported");
        };
        MemorySegment bytes = entries.get(prefix + "data/" + key);
        if (bytes == null) throw new QtoolException(path + ": storage " + key + " is missing (" + prefix + "data/" + key + ")");
        if (numel < 0 || numel > bytes.byteSize() / dtype.bytes) {
            throw new QtoolException(path + ": storage " + key + " holds " + bytes.byteSize() + " bytes, less than " + numel + " " + dtype + " elements");
        }
        Storage s = new Storage(key, dtype, bytes.asSlice(0, numel * dtype.bytes));
        storages.put(key, s);
        return s;
    }

    /** _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]). */
    private static Tensor rebuildTensor(List<Object> args, String where) {
        if (args.size() < 4 || !(args.get(0) instanceof Storage s) || !(args.get(1) instanceof Long offset)
                || !(args.get(2) instanceof List<?> size) || !(args.get(3) instanceof List<?> stride) || size.size() != stride.size()) {
            throw new QtoolException(where + ": _rebuild_tensor_v2 with unexpected arguments " + args);
        }
        long[] shape = new long[size.size()];
        long expected = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            if (!(size.get(i) instanceof Long d) || !(stride.get(i) instanceof Long st) || d < 0) {
                throw new QtoolException(where + ": tensor size/stride are not integers: " + size + " " + stride);
            }
            shape[i] = d;
            if (d != 1 && st != expected) {
                throw new QtoolException(where + ": tensor in storage " + s.key() + " with size " + size + " and stride " + stride
                        + " is not contiguous (save it with .contiguous())");
            }
            expected = Math.multiplyExact(expected, d);
        }
        long elements = s.bytes().byteSize() / s.dtype().bytes;
        if (offset < 0 || offset + expected > elements) {
            throw new QtoolException(where + ": tensor " + size + " at offset " + offset + " runs past storage " + s.key() + " (" + elements + " elements)");
        }
        return new Tensor(s.bytes().asSlice(offset * s.dtype().bytes, expected * s.dtype().bytes), s.dtype(), shape);
    }

    // ---- zip directory ----

    private static Map<String, MemorySegment> readDirectory(Path path, MemorySegment map) {
        long size = map.byteSize();
        long eocd = -1;
        for (long p = size - 22; p >= Math.max(0, size - 22 - 65535); p--) {
            if (i32(map, p) == EOCD) {
                eocd = p;
                break;
            }
        }
        if (eocd < 0) throw new QtoolException(path + ": not a zip file (no end-of-central-directory record; truncated?)");
        long count = u16(map, eocd + 10);
        long cdSize = u32(map, eocd + 12);
        long cdOffset = u32(map, eocd + 16);
        if (count == 0xffff || cdSize == 0xffffffffL || cdOffset == 0xffffffffL) {
            long loc = eocd - 20;
            if (loc < 0 || i32(map, loc) != ZIP64_LOCATOR) throw new QtoolException(path + ": zip64 sizes without a zip64 locator");
            long z = map.get(ValueLayout.JAVA_LONG_UNALIGNED, loc + 8);
            if (z < 0 || z + 56 > size || i32(map, z) != ZIP64_EOCD) throw new QtoolException(path + ": zip64 end record missing or truncated");
            count = map.get(ValueLayout.JAVA_LONG_UNALIGNED, z + 32);
            cdSize = map.get(ValueLayout.JAVA_LONG_UNALIGNED, z + 40);
            cdOffset = map.get(ValueLayout.JAVA_LONG_UNALIGNED, z + 48);
        }
        if (cdOffset < 0 || cdSize < 0 || cdOffset + cdSize > size) throw new QtoolException(path + ": central directory runs past the end of the file (truncated?)");
        Map<String, MemorySegment> entries = new LinkedHashMap<>();
        long p = cdOffset;
        for (long i = 0; i < count; i++) {
            if (p + 46 > cdOffset + cdSize || i32(map, p) != CENTRAL) throw new QtoolException(path + ": corrupt central directory at byte " + p);
            int method = (int) u16(map, p + 10);
            long compSize = u32(map, p + 20);
            long uncompSize = u32(map, p + 24);
            int nameLen = (int) u16(map, p + 28), extraLen = (int) u16(map, p + 30), commentLen = (int) u16(map, p + 32);
            long localOffset = u32(map, p + 42);
            if (p + 46 + nameLen + extraLen + commentLen > cdOffset + cdSize) throw new QtoolException(path + ": corrupt central directory at byte " + p);
            String name = new String(map.asSlice(p + 46, nameLen).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
            // zip64 extra field (id 1): the 64-bit values, in this order, for those whose 32-bit field is saturated
            long e = p + 46 + nameLen, eEnd = e + extraLen;
            while (e + 4 <= eEnd) {
                int id = (int) u16(map, e), len = (int) u16(map, e + 2);
                if (id == 1) {
                    long q = e + 4;
                    if (uncompSize == 0xffffffffL) { uncompSize = map.get(ValueLayout.JAVA_LONG_UNALIGNED, q); q += 8; }
                    if (compSize == 0xffffffffL) { compSize = map.get(ValueLayout.JAVA_LONG_UNALIGNED, q); q += 8; }
                    if (localOffset == 0xffffffffL) { localOffset = map.get(ValueLayout.JAVA_LONG_UNALIGNED, q); }
                }
                e += 4 + len;
            }
            p += 46 + nameLen + extraLen + commentLen;
            if (localOffset < 0 || localOffset + 30 > size || i32(map, localOffset) != LOCAL) {
                throw new QtoolException(path + ": entry " + name + ": local header missing (file truncated or corrupt)");
            }
            long dataStart = localOffset + 30 + u16(map, localOffset + 26) + u16(map, localOffset + 28);
            if (method != 0 || compSize != uncompSize) {
                throw new QtoolException(path + ": entry " + name + " is compressed (method " + method + "); torch.save stores entries uncompressed");
            }
            if (compSize < 0 || dataStart + compSize > cdOffset || dataStart + compSize > size) {
                throw new QtoolException(path + ": entry " + name + " is truncated (" + compSize + " bytes at " + dataStart + " run past its end)");
            }
            entries.put(name, map.asSlice(dataStart, compSize));
        }
        return entries;
    }

    private static int u8(MemorySegment m, long at) {
        return m.get(ValueLayout.JAVA_BYTE, at) & 0xff;
    }

    private static long u16(MemorySegment m, long at) {
        return m.get(ValueLayout.JAVA_SHORT_UNALIGNED, at) & 0xffffL;
    }

    private static long u32(MemorySegment m, long at) {
        return m.get(ValueLayout.JAVA_INT_UNALIGNED, at) & 0xffffffffL;
    }

    private static int i32(MemorySegment m, long at) {
        return m.get(ValueLayout.JAVA_INT_UNALIGNED, at);
    }
}
