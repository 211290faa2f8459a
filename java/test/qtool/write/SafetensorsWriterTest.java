package qtool.write;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.SafetensorsFile;
import qtool.load.Weights;

class SafetensorsWriterTest {

    /** A tensor to write: bytes i * 37 + seed, so every tensor's content is distinct. */
    private record Sample(String name, DType dtype, long[] shape, byte[] bytes) {
        Sample(String name, DType dtype, long... shape) {
            this(name, dtype, shape, pattern(name.hashCode(), bytesOf(dtype, shape)));
        }

        static int bytesOf(DType dtype, long[] shape) {
            long n = dtype.bytes;
            for (long d : shape) n *= d;
            return Math.toIntExact(n);
        }

        static byte[] pattern(int seed, int n) {
            byte[] b = new byte[n];
            for (int i = 0; i < n; i++) b[i] = (byte) (i * 37 + seed);
            return b;
        }
    }

    private static void write(SafetensorsWriter w, Sample s) {
        w.add(s.name, s.dtype, s.shape, MemorySegment.ofArray(s.bytes));
    }

    private static void assertHolds(Map<String, Tensor> read, Sample s) {
        Tensor t = read.get(s.name);
        assertEquals(s.dtype, t.dtype(), s.name);
        assertArrayEquals(s.shape, t.shape(), s.name);
        assertArrayEquals(s.bytes, t.data().toArray(ValueLayout.JAVA_BYTE), s.name);
    }

    private static List<String> list(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    @Test
    void roundTripsEveryDtypeAndScalarsAndEmptyTensors(@TempDir Path dir) throws IOException {
        List<Sample> samples = List.of(
                new Sample("f64", DType.F64, 3), new Sample("f32", DType.F32, 2, 3), new Sample("f16", DType.F16, 2, 3, 4),
                new Sample("bf16", DType.BF16, 5, 1), new Sample("i64", DType.I64, 2), new Sample("i32", DType.I32, 7),
                new Sample("i16", DType.I16, 3, 3), new Sample("i8", DType.I8, 9), new Sample("u8", DType.U8, 1, 1, 1, 5),
                new Sample("bool", DType.BOOL, 4),
                new Sample("scalar.f32", DType.F32), new Sample("scalar.i64", DType.I64), new Sample("scalar.bool", DType.BOOL),
                new Sample("empty", DType.F32, 0), new Sample("empty.rows", DType.BF16, 3, 0), new Sample("empty.cols", DType.I8, 0, 4));
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0, Map.of("quantizer", "qtool", "bits", "4"))) {
            for (Sample s : samples) write(w, s);
        }
        assertEquals(List.of("model.safetensors"), list(dir));
        try (Weights w = Weights.open(dir)) {
            assertEquals(samples.stream().map(Sample::name).toList(), List.copyOf(w.all().keySet()), "order kept");
            for (Sample s : samples) assertHolds(w.all(), s);
            assertEquals(Map.of("format", "pt", "quantizer", "qtool", "bits", "4"), w.files().get(0).metadata());
        }
        // A scalar's shape is [] in the header, an empty tensor's data_offsets are [x, x].
        Map<String, Object> header = header(dir.resolve("model.safetensors"));
        assertEquals(List.of(), Json.object(header.get("scalar.f32"), "").get("shape"));
        List<Object> offsets = Json.array(Json.object(header.get("empty.rows"), "").get("data_offsets"), "");
        assertEquals(offsets.get(0), offsets.get(1));
    }

    @Test
    void noTensorsStillMakesAValidFile(@TempDir Path dir) throws IOException {
        new SafetensorsWriter(dir, 0).close();
        assertEquals(List.of("model.safetensors"), list(dir));
        try (Weights w = Weights.open(dir)) {
            assertTrue(w.all().isEmpty());
        }
    }

    /** The header block is padded with spaces to the reserve, a multiple of 8, so the data starts 8-aligned. */
    @Test
    void headerIsPaddedWithSpacesToAnAlignedLength(@TempDir Path dir) throws IOException {
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            write(w, new Sample("odd", DType.U8, 3));
            write(w, new Sample("f32", DType.F32, 4));
        }
        byte[] raw = Files.readAllBytes(dir.resolve("model.safetensors"));
        long headerLen = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        assertEquals(SafetensorsWriter.HEADER_RESERVE, headerLen);
        assertEquals(0, headerLen % 8);
        assertEquals(8 + headerLen + 3 + 16, raw.length);
        String text = new String(raw, 8, (int) headerLen, StandardCharsets.US_ASCII);
        int jsonEnd = text.lastIndexOf('}') + 1;
        assertTrue(jsonEnd > 2 && text.substring(jsonEnd).chars().allMatch(c -> c == ' '), "padding is spaces");
        Json.parse(text, "padded header"); // trailing whitespace is valid JSON
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsFile f = SafetensorsFile.open(dir.resolve("model.safetensors"), arena);
            assertEquals(0, (f.tensors().get("odd").data().address() - f.mapping().address()) % 8, "data region starts aligned");
        }
    }

    /** A header larger than the reserve (thousands of tensors) makes the writer move the data behind it. */
    @Test
    void headerLargerThanTheReserveIsRewritten(@TempDir Path dir) throws IOException {
        List<Sample> samples = new java.util.ArrayList<>();
        for (int i = 0; i < 2500; i++) samples.add(new Sample("model.layers." + i + ".self_attn.some_rather_long_tensor_name.weight", DType.F32, 3));
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            for (Sample s : samples) write(w, s);
        }
        assertEquals(List.of("model.safetensors"), list(dir), "no leftover temporary file");
        byte[] raw = Files.readAllBytes(dir.resolve("model.safetensors"));
        long headerLen = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        assertTrue(headerLen > SafetensorsWriter.HEADER_RESERVE, "header " + headerLen);
        assertEquals(0, headerLen % 8);
        assertEquals(8 + headerLen + 2500 * 12, raw.length);
        try (Weights w = Weights.open(dir)) {
            for (Sample s : samples) assertHolds(w.all(), s);
        }
    }

    @Test
    void shardsBySizeWithTransformersNamesAndIndex(@TempDir Path dir) throws IOException {
        // 1000-byte shards: [a 400, b 400] [c 400, d 50, e 50] [f 1200: alone, being larger than a shard] [g 8]
        List<Sample> samples = List.of(new Sample("a", DType.F32, 100), new Sample("b", DType.F32, 10, 10), new Sample("c", DType.I32, 100),
                new Sample("d", DType.U8, 50), new Sample("e", DType.BF16, 25), new Sample("f", DType.F64, 150), new Sample("g", DType.F32, 2));
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 1000)) {
            for (Sample s : samples) write(w, s);
        }
        String s1 = "model-00001-of-00004.safetensors", s2 = "model-00002-of-00004.safetensors";
        String s3 = "model-00003-of-00004.safetensors", s4 = "model-00004-of-00004.safetensors";
        assertEquals(List.of(s1, s2, s3, s4, Weights.INDEX), list(dir));

        Map<String, Object> index = Json.readObject(dir.resolve(Weights.INDEX));
        assertEquals(2508L, Json.object(index.get("metadata"), "metadata").get("total_size"));
        Map<String, Object> expectedMap = new LinkedHashMap<>();
        for (String t : List.of("a", "b")) expectedMap.put(t, s1);
        for (String t : List.of("c", "d", "e")) expectedMap.put(t, s2);
        expectedMap.put("f", s3);
        expectedMap.put("g", s4);
        assertEquals(expectedMap, index.get("weight_map"));

        try (Weights w = Weights.open(dir)) {
            assertEquals(4, w.files().size());
            for (SafetensorsFile f : w.files()) {
                for (String t : f.tensors().keySet()) assertEquals(expectedMap.get(t), f.path().getFileName().toString(), t);
            }
            for (Sample s : samples) assertHolds(w.all(), s);
        }
    }

    @Test
    void oneShardIsNamedModelSafetensorsWithoutIndex(@TempDir Path dir) throws IOException {
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 1_000_000)) {
            write(w, new Sample("a", DType.F32, 100));
        }
        assertEquals(List.of("model.safetensors"), list(dir));
    }

    /** Until close, files have temporary names; abandoning deletes them, finished shards included. */
    @Test
    void abandonedWriterLeavesNothingBehind(@TempDir Path dir) throws IOException {
        SafetensorsWriter w = new SafetensorsWriter(dir, 1000);
        write(w, new Sample("a", DType.F32, 200));
        write(w, new Sample("b", DType.F32, 200));
        write(w, new Sample("c", DType.F32, 10));
        assertFalse(list(dir).isEmpty(), "shards are being written");
        assertTrue(list(dir).stream().noneMatch(n -> n.endsWith(".safetensors") || n.equals(Weights.INDEX)),
                "nothing looks finished before close: " + list(dir));
        w.abandon();
        assertEquals(List.of(), list(dir));
        w.close(); // after abandon, close finishes nothing
        assertEquals(List.of(), list(dir));
    }

    @Test
    void refusesWrongByteCountAndDuplicateNames(@TempDir Path dir) {
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            assertThrows(IllegalArgumentException.class, () -> w.add("a", DType.F32, new long[] {3}, MemorySegment.ofArray(new byte[8])));
            write(w, new Sample("a", DType.F32, 2));
            assertThrows(IllegalArgumentException.class, () -> write(w, new Sample("a", DType.F32, 2)));
        }
    }

    private static Map<String, Object> header(Path file) throws IOException {
        byte[] raw = Files.readAllBytes(file);
        long headerLen = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        return Json.object(Json.parse(new String(raw, 8, (int) headerLen, StandardCharsets.UTF_8), "header"), "header");
    }
}
