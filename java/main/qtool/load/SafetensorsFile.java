package qtool.load;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Tensor;

/**
 * One memory-mapped safetensors file. Layout: u64 little-endian header length N, N bytes of JSON
 * ({@code name: {dtype, shape, data_offsets: [begin, end]}} plus optional {@code __metadata__}), then the data
 * region that the offsets index. Each tensor is a zero-copy slice of the mapping; the mapping lives as long as the
 * arena given to {@link #open}. Every inconsistency is rejected up front, so no later read can fault.
 */
public final class SafetensorsFile {
    /** Headers are small; a larger claimed length is corruption, not a reason to allocate gigabytes. */
    private static final long MAX_HEADER_BYTES = 256L << 20;

    private final Path path;
    private final MemorySegment mapping;
    private final Map<String, Tensor> tensors;
    private final Map<String, String> metadata;

    private SafetensorsFile(Path path, MemorySegment mapping, Map<String, Tensor> tensors, Map<String, String> metadata) {
        this.path = path;
        this.mapping = mapping;
        this.tensors = tensors;
        this.metadata = metadata;
    }

    public static SafetensorsFile open(Path path, Arena arena) {
        MemorySegment map;
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size < 8) throw bad(path, "truncated: " + size + " bytes, a safetensors file starts with an 8-byte header length");
            map = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
        } catch (java.nio.file.NoSuchFileException e) {
            throw new QtoolException(path + ": no such file");
        } catch (IOException e) {
            throw new QtoolException(path + ": cannot read: " + e.getMessage());
        }
        long size = map.byteSize();
        long headerLen = map.get(ValueLayout.JAVA_LONG_UNALIGNED, 0);
        if (headerLen >= 0 && headerLen < 2) throw bad(path, "header length " + headerLen + " is too short for a JSON object");
        if (headerLen < 0 || headerLen > size - 8 || headerLen > MAX_HEADER_BYTES) {
            throw bad(path, "header length " + Long.toUnsignedString(headerLen) + " runs past the end of the file (" + size + " bytes)");
        }
        byte[] headerBytes = map.asSlice(8, headerLen).toArray(ValueLayout.JAVA_BYTE);
        Map<String, Object> header = Json.object(Json.parse(headerBytes, path + " header"), path + " header");
        long dataStart = 8 + headerLen;
        long dataSize = size - dataStart;

        Map<String, String> metadata = new LinkedHashMap<>();
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        record Span(String name, long begin, long end) {}
        List<Span> spans = new ArrayList<>();
        for (Map.Entry<String, Object> e : header.entrySet()) {
            String name = e.getKey();
            if (name.equals("__metadata__")) {
                if (e.getValue() instanceof Map<?, ?> m) m.forEach((k, v) -> metadata.put(String.valueOf(k), String.valueOf(v)));
                continue;
            }
            String where = path + ": tensor '" + name + "'";
            Map<String, Object> info = Json.object(e.getValue(), where);
            if (!(info.get("dtype") instanceof String dt)) throw new QtoolException(where + ": missing dtype");
            DType dtype = DType.fromSafetensors(dt, where);
            long[] shape = longs(info.get("shape"), where + " shape");
            long[] offsets = longs(info.get("data_offsets"), where + " data_offsets");
            if (offsets.length != 2) throw new QtoolException(where + ": data_offsets must hold [begin, end]");
            long begin = offsets[0], end = offsets[1];
            if (begin < 0 || end < begin || end > dataSize) {
                throw new QtoolException(where + ": data_offsets [" + begin + ", " + end + "] lie outside the data region (" + dataSize + " bytes)");
            }
            long expected = dtype.bytes;
            for (long d : shape) {
                if (d < 0) throw new QtoolException(where + ": negative dimension in shape");
                try {
                    expected = Math.multiplyExact(expected, d);
                } catch (ArithmeticException overflow) {
                    throw new QtoolException(where + ": shape " + java.util.Arrays.toString(shape) + " x " + dtype + " is more than 2^63 bytes");
                }
            }
            if (expected != end - begin) {
                throw new QtoolException(where + ": shape " + java.util.Arrays.toString(shape) + " x " + dtype + " is " + expected
                        + " bytes but data_offsets span " + (end - begin));
            }
            spans.add(new Span(name, begin, end));
            tensors.put(name, new Tensor(map.asSlice(dataStart + begin, end - begin), dtype, shape));
        }
        spans.sort(Comparator.comparingLong(Span::begin).thenComparingLong(Span::end));
        // Compare each span with the one reaching furthest so far, not just its predecessor: a short or empty
        // tensor between two others must not hide their overlap. Empty tensors occupy no bytes.
        Span reach = null;
        for (Span b : spans) {
            if (b.end == b.begin) continue;
            if (reach != null && b.begin < reach.end) {
                throw bad(path, "tensors '" + reach.name + "' and '" + b.name + "' overlap (bytes " + b.begin + ".." + Math.min(reach.end, b.end) + ")");
            }
            if (reach == null || b.end > reach.end) reach = b;
        }
        return new SafetensorsFile(path, map, tensors, metadata);
    }

    private static long[] longs(Object v, String where) {
        if (!(v instanceof List<?> l)) throw new QtoolException(where + ": expected an array of integers");
        long[] r = new long[l.size()];
        for (int i = 0; i < r.length; i++) {
            if (!(l.get(i) instanceof Long n)) throw new QtoolException(where + ": expected an array of integers");
            r[i] = n;
        }
        return r;
    }

    private static QtoolException bad(Path path, String problem) {
        return new QtoolException(path + ": " + problem);
    }

    public Path path() {
        return path;
    }

    /** The whole mapped file (tests use it to show tensors are slices of it). */
    public MemorySegment mapping() {
        return mapping;
    }

    public Map<String, Tensor> tensors() {
        return tensors;
    }

    public Map<String, String> metadata() {
        return metadata;
    }
}
