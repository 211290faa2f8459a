package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.format.gguf.GgufTestFiles.Bytes;

class GgufFileTest {
    @TempDir
    Path dir;

    /** Opens a crafted file expecting a QtoolException whose message names the file and contains {@code expected}. */
    private void assertRejected(Bytes b, String expected) throws IOException {
        Path p = b.write(dir, "bad.gguf");
        QtoolException e = assertThrows(QtoolException.class, () -> GgufFile.open(p).close());
        assertTrue(e.getMessage().startsWith(p.toString()), "message names the file: " + e.getMessage());
        assertTrue(e.getMessage().contains(expected), "expected '" + expected + "' in: " + e.getMessage());
    }

    /** A valid file: one kv, one F32 tensor of 8 values. */
    private static Bytes valid() {
        Bytes b = new Bytes().header(3, 1, 1).kvString("general.architecture", "llama")
                .tensorInfo("t", GgmlType.F32, 0, 8).padTo(32);
        return b.zeros(32);
    }

    @Test
    void readsAHandMadeFile() throws IOException {
        Path p = valid().write(dir, "ok.gguf");
        try (GgufFile g = GgufFile.open(p)) {
            assertEquals(3, g.version());
            assertEquals(32, g.alignment());
            assertEquals("llama", g.getString("general.architecture"));
            assertEquals(1, g.tensors().size());
            GgufTensor t = g.tensor("t");
            assertEquals(GgmlType.F32, t.type());
            assertArrayEquals(new long[] {8}, t.dims());
            assertEquals(32, t.data().byteSize());
            assertEquals(g.dataOffset(), t.data().address() - g.tensors().get(0).data().address() + g.dataOffset());
        }
    }

    @Test
    void acceptsVersion2() throws IOException {
        Bytes b = new Bytes().header(2, 0, 1).kvU32("x", 7);
        try (GgufFile g = GgufFile.open(b.write(dir, "v2.gguf"))) {
            assertEquals(2, g.version());
            assertEquals(7L, g.getLong("x"));
        }
    }

    @Test
    void rejectsWrongMagic() throws IOException {
        assertRejected(new Bytes().raw("GGML".getBytes()).u32(3).u64(0).u64(0), "not a GGUF file");
        assertRejected(new Bytes().raw("{\"a\"".getBytes()).zeros(40), "not a GGUF file");
    }

    @Test
    void rejectsUnsupportedVersions() throws IOException {
        assertRejected(new Bytes().header(1, 0, 0), "unsupported GGUF version 1");
        assertRejected(new Bytes().header(4, 0, 0), "unsupported GGUF version 4");
        assertRejected(new Bytes().u32(GgufFile.MAGIC).u32(0x03000000L).u64(0).u64(0), "big-endian");
    }

    @Test
    void rejectsTruncatedHeader() throws IOException {
        assertRejected(new Bytes(), "truncated");
        assertRejected(new Bytes().raw("GG".getBytes()), "truncated");
        assertRejected(new Bytes().u32(GgufFile.MAGIC).u32(3).u32(0), "truncated");
    }

    @Test
    void rejectsTruncatedMetadataAndTensorInfos() throws IOException {
        // key length says 20 bytes, 5 follow
        assertRejected(new Bytes().header(3, 0, 1).u64(20).raw("gener".getBytes()), "string of 20 bytes");
        // value type present, value cut
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.UINT64.id).u32(0), "truncated");
        // tensor info cut inside the dims
        assertRejected(new Bytes().header(3, 1, 0).str("t").u32(2).u64(8).u32(0), "truncated");
    }

    @Test
    void rejectsUnknownMetadataType() throws IOException {
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(13).u32(0), "unknown metadata value type 13");
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.ARRAY.id).u32(99).u64(1).u32(0),
                "unknown metadata value type 99");
    }

    @Test
    void rejectsUnknownTensorType() throws IOException {
        Bytes b = new Bytes().header(3, 1, 0).str("t").u32(1).u64(32).u32(99).u64(0).padTo(32).zeros(64);
        assertRejected(b, "ggml type 99");
        // IQ2_XXS (16) is a real ggml type that qtool does not implement
        b = new Bytes().header(3, 1, 0).str("t").u32(1).u64(256).u32(16).u64(0).padTo(32).zeros(128);
        assertRejected(b, "ggml type 16");
    }

    @Test
    void rejectsLengthsLongerThanTheFile() throws IOException {
        assertRejected(new Bytes().header(3, 0, 1).u64(1L << 40).zeros(16), "longer than");
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.STRING.id).u64(-1L), "string of 18446744073709551615 bytes");
        // arrays claiming more elements than the file can hold: no allocation happens
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.ARRAY.id).u32(GgufValueType.UINT64.id)
                .u64(1L << 60), "longer than");
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.ARRAY.id).u32(GgufValueType.STRING.id)
                .u64(Integer.MAX_VALUE).zeros(64), "longer than");
        assertRejected(new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.ARRAY.id).u32(GgufValueType.ARRAY.id)
                .u64(1L << 33).zeros(64), "longer than");
        // counts in the header
        assertRejected(new Bytes().header(3, 0, 1L << 50).zeros(100), "metadata entries");
        assertRejected(new Bytes().header(3, 1L << 50, 0).zeros(100), "tensors, more than the file can hold");
        assertRejected(new Bytes().header(3, -1L, 0), "tensors");
    }

    @Test
    void rejectsDeeplyNestedArrays() throws IOException {
        Bytes b = new Bytes().header(3, 0, 1).str("k").u32(GgufValueType.ARRAY.id);
        for (int i = 0; i < 100; i++) b.u32(GgufValueType.ARRAY.id).u64(1);
        assertRejected(b.u32(GgufValueType.UINT8.id).u64(0), "nested");
    }

    @Test
    void rejectsTensorDataPastTheEnd() throws IOException {
        Bytes b = new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 0, 8, 2).padTo(32).zeros(63);
        assertRejected(b, "past the end of the file");
        b = new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 1L << 62, 8).padTo(32).zeros(32);
        assertRejected(b, "past the end of the file");
        // the data section itself missing
        assertRejected(new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 0, 8), "truncated");
    }

    @Test
    void rejectsMisalignedAndOverlappingOffsets() throws IOException {
        Bytes b = new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 4, 8).padTo(32).zeros(64);
        assertRejected(b, "not a multiple of the alignment 32");
        b = new Bytes().header(3, 2, 0).tensorInfo("a", GgmlType.F32, 0, 16).tensorInfo("b", GgmlType.F32, 32, 8)
                .padTo(32).zeros(96);
        assertRejected(b, "overlap");
        // a large first tensor overlapping a later, non-adjacent one
        b = new Bytes().header(3, 3, 0).tensorInfo("big", GgmlType.F32, 0, 64).tensorInfo("b", GgmlType.F32, 64, 8)
                .tensorInfo("c", GgmlType.F32, 128, 8).padTo(32).zeros(256);
        assertRejected(b, "overlap");
    }

    @Test
    void rejectsRowsThatAreNotWholeBlocks() throws IOException {
        Bytes b = new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.Q4_0, 0, 33, 2).padTo(32).zeros(128);
        assertRejected(b, "not a multiple of the block size 32");
        b = new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.Q4_K, 0, 576).padTo(32).zeros(512);
        assertRejected(b, "row length 576, not a multiple of the block size 256");
    }

    @Test
    void rejectsBadDimsAndDuplicates() throws IOException {
        assertRejected(new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 0, 1, 1, 1, 1, 1).padTo(32).zeros(32),
                "5 dimensions");
        assertRejected(new Bytes().header(3, 1, 0).tensorInfo("t", GgmlType.F32, 0, 1L << 40, 1L << 40).padTo(32),
                "too many elements");
        assertRejected(new Bytes().header(3, 0, 2).kvU32("k", 1).kvU32("k", 2), "duplicate metadata key 'k'");
        assertRejected(new Bytes().header(3, 2, 0).tensorInfo("t", GgmlType.F32, 0, 8).tensorInfo("t", GgmlType.F32, 32, 8)
                .padTo(32).zeros(64), "duplicate tensor name 't'");
    }

    @Test
    void rejectsBadAlignment() throws IOException {
        assertRejected(new Bytes().header(3, 0, 1).kvU32(GgufFile.ALIGNMENT_KEY, 48), "not a power of two");
        assertRejected(new Bytes().header(3, 0, 1).kvU32(GgufFile.ALIGNMENT_KEY, 0), "not a power of two");
        assertRejected(new Bytes().header(3, 0, 1).kvString(GgufFile.ALIGNMENT_KEY, "32"), "expected uint32");
    }

    @Test
    void customAlignmentIsHonoured() throws IOException {
        Bytes b = new Bytes().header(3, 2, 1).kvU32(GgufFile.ALIGNMENT_KEY, 64)
                .tensorInfo("a", GgmlType.F32, 0, 4).tensorInfo("b", GgmlType.F32, 64, 4).padTo(64).zeros(128);
        try (GgufFile g = GgufFile.open(b.write(dir, "a64.gguf"))) {
            assertEquals(64, g.alignment());
            assertEquals(0, g.dataOffset() % 64);
        }
        b = new Bytes().header(3, 2, 1).kvU32(GgufFile.ALIGNMENT_KEY, 64)
                .tensorInfo("a", GgmlType.F32, 0, 4).tensorInfo("b", GgmlType.F32, 32, 4).padTo(64).zeros(128);
        assertRejected(b, "not a multiple of the alignment 64");
    }

    @Test
    void missingFileIsAUserError() {
        QtoolException e = assertThrows(QtoolException.class, () -> GgufFile.open(dir.resolve("nope.gguf")));
        assertTrue(e.getMessage().contains("no such file"));
    }

    // ---------------------------------------------------------------- writer round trip

    private static Map<String, GgufValue> allValueTypes() {
        Map<String, GgufValue> m = new java.util.LinkedHashMap<>();
        m.put("u8", new GgufValue(GgufValueType.UINT8, null, 200));
        m.put("i8", new GgufValue(GgufValueType.INT8, null, -100));
        m.put("u16", new GgufValue(GgufValueType.UINT16, null, 60000));
        m.put("i16", new GgufValue(GgufValueType.INT16, null, -30000));
        m.put("u32", GgufValue.uint32(4_000_000_000L));
        m.put("i32", GgufValue.int32(-2_000_000_000));
        m.put("f32", GgufValue.float32(1.5e-5f));
        m.put("bool", GgufValue.bool(true));
        m.put("string", GgufValue.of("héllo\n\"wörld\" ✓"));
        m.put("u64", GgufValue.uint64(-1L));
        m.put("i64", new GgufValue(GgufValueType.INT64, null, Long.MIN_VALUE));
        m.put("f64", new GgufValue(GgufValueType.FLOAT64, null, Math.PI));
        m.put("a.u8", new GgufValue(GgufValueType.ARRAY, GgufValueType.UINT8, new byte[] {1, (byte) 255}));
        m.put("a.i16", new GgufValue(GgufValueType.ARRAY, GgufValueType.INT16, new short[] {-1, 2}));
        m.put("a.u32", new GgufValue(GgufValueType.ARRAY, GgufValueType.UINT32, new int[] {-1, 7}));
        m.put("a.i32", GgufValue.int32s(1, -2, 3));
        m.put("a.i64", new GgufValue(GgufValueType.ARRAY, GgufValueType.INT64, new long[] {Long.MAX_VALUE}));
        m.put("a.f32", GgufValue.float32s(0.5f, -0f, Float.NaN));
        m.put("a.f64", new GgufValue(GgufValueType.ARRAY, GgufValueType.FLOAT64, new double[] {1e300}));
        m.put("a.bool", new GgufValue(GgufValueType.ARRAY, GgufValueType.BOOL, new boolean[] {true, false}));
        m.put("a.string", GgufValue.strings("a", "", "Ġthe"));
        m.put("a.empty", GgufValue.strings());
        m.put("a.nested", new GgufValue(GgufValueType.ARRAY, GgufValueType.ARRAY, new GgufValue[] {
            GgufValue.int32s(1, 2), GgufValue.strings("x"),
            new GgufValue(GgufValueType.ARRAY, GgufValueType.ARRAY, new GgufValue[] {GgufValue.float32s(3f)})}));
        return m;
    }

    @Test
    void writerRoundTripsMetadataAndTensors() throws IOException {
        Path p = dir.resolve("rt.gguf");
        Random rnd = new Random(1);
        float[] a = new float[64 * 3];
        for (int i = 0; i < a.length; i++) a[i] = (float) rnd.nextGaussian();
        byte[] q = new byte[(int) GgmlType.Q4_K.byteSize(512)];
        rnd.nextBytes(q);
        Map<String, GgufValue> meta = allValueTypes();
        byte[] rest = new byte[14 + 34];
        for (int i = 0; i < rest.length; i++) rest[i] = (byte) (i + 1);
        try (GgufWriter w = new GgufWriter(p)) {
            w.putAll(meta);
            w.addTensor("a", GgmlType.F32, 64, 3);
            w.addTensor("empty", GgmlType.F16, 0);
            w.addTensor("q", GgmlType.Q4_K, 256, 2);
            w.addTensor("h", GgmlType.F16, 7); // 14 bytes: the next tensor must be padded to 32
            w.addTensor("last", GgmlType.Q8_0, 32);
            w.writeTensor("a", GgufTestFiles.floatsLE(a));
            // "q" in two pieces, then "h" and "last" in one write spanning both
            w.write(Arrays.copyOfRange(q, 0, 100));
            w.write(Arrays.copyOfRange(q, 100, q.length));
            w.write(rest);
            assertFalse(Files.exists(p), "the file appears only when complete");
        }
        try (GgufFile g = GgufFile.open(p)) {
            assertEquals(3, g.version());
            assertEquals(meta.keySet(), g.entries().keySet());
            for (var e : meta.entrySet()) assertEquals(e.getValue(), g.entry(e.getKey()), e.getKey());
            assertEquals(200, g.metadata().get("u8"));
            assertEquals(4_000_000_000L, g.metadata().get("u32"));
            assertInstanceOf(List.class, g.metadata().get("a.nested"));
            assertEquals(List.of("a", "", "Ġthe"), Arrays.asList(g.getStrings("a.string")));
            assertEquals(4_000_000_000L, g.getLong("u32"));
            assertEquals(-1L, g.getLong("u64"));
            assertEquals(Math.PI, g.getDouble("f64"));
            assertEquals(1.5e-5f, (float) g.getDouble("f32"));
            assertTrue(g.getBool("bool", false));
            assertArrayEquals(new int[] {1, -2, 3}, g.getInts("a.i32"));
            QtoolException e = assertThrows(QtoolException.class, () -> g.getString("u32"));
            assertTrue(e.getMessage().contains("u32"), e.getMessage());
            assertThrows(QtoolException.class, () -> g.getInt("u32"));
            assertThrows(QtoolException.class, () -> g.getString("missing"));
            assertEquals("dflt", g.getString("missing", "dflt"));

            List<String> names = g.tensors().stream().map(GgufTensor::name).toList();
            assertEquals(List.of("a", "empty", "q", "h", "last"), names);
            for (GgufTensor t : g.tensors()) assertEquals(0, t.offset() % 32, t.name());
            assertArrayEquals(a, GgmlCodec.dequantize(g.tensor("a")));
            assertArrayEquals(new long[] {3, 64}, g.tensor("a").shape());
            assertEquals(0, g.tensor("empty").byteSize());
            assertArrayEquals(q, g.tensor("q").data().toArray(ValueLayout.JAVA_BYTE));
            assertEquals(2, g.tensor("q").rowCount());
            assertArrayEquals(Arrays.copyOfRange(q, 144, 288), g.tensor("q").row(1).toArray(ValueLayout.JAVA_BYTE));
            assertArrayEquals(Arrays.copyOfRange(rest, 0, 14), g.tensor("h").data().toArray(ValueLayout.JAVA_BYTE));
            assertArrayEquals(Arrays.copyOfRange(rest, 14, 48), g.tensor("last").data().toArray(ValueLayout.JAVA_BYTE));
            assertNull(g.tensor("nope"));
            assertThrows(QtoolException.class, () -> g.requireTensor("nope"));
        }
    }

    @Test
    void writerHonoursCustomAlignment() throws IOException {
        Path p = dir.resolve("a.gguf");
        try (GgufWriter w = new GgufWriter(p)) {
            w.putUint32(GgufFile.ALIGNMENT_KEY, 128);
            w.addTensor("x", GgmlType.F32, 3);
            w.addTensor("y", GgmlType.F32, 3);
            w.write(new byte[24]);
        }
        try (GgufFile g = GgufFile.open(p)) {
            assertEquals(128, g.alignment());
            assertEquals(0, g.dataOffset() % 128);
            assertEquals(128, g.tensor("y").offset());
        }
    }

    @Test
    void incompleteOrAbortedWritesLeaveNoFile() throws IOException {
        Path p = dir.resolve("inc.gguf");
        GgufWriter w = new GgufWriter(p);
        w.addTensor("x", GgmlType.F32, 8);
        w.addTensor("y", GgmlType.F32, 8);
        w.write(new byte[10]);
        QtoolException e = assertThrows(QtoolException.class, w::close);
        assertTrue(e.getMessage().contains("tensor 'x' has 10 of 32 bytes"), e.getMessage());
        assertFalse(Files.exists(p));
        try (var files = Files.list(dir)) {
            assertEquals(0, files.count(), "temporary file removed");
        }

        GgufWriter w2 = new GgufWriter(p);
        w2.addTensor("x", GgmlType.F32, 8);
        w2.write(new byte[32]);
        w2.abort();
        w2.close();
        assertFalse(Files.exists(p));
    }

    @Test
    void writerRejectsMisuse() {
        Path p = dir.resolve("m.gguf");
        try (GgufWriter w = new GgufWriter(p)) {
            assertThrows(IllegalArgumentException.class, () -> w.addTensor("bad", GgmlType.Q4_0, 33));
            w.addTensor("x", GgmlType.F32, 2);
            assertThrows(IllegalArgumentException.class, () -> w.addTensor("x", GgmlType.F32, 2));
            assertThrows(IllegalArgumentException.class, () -> w.writeTensor("x", MemorySegment.ofArray(new byte[4])));
            assertThrows(IllegalStateException.class, () -> w.writeTensor("y", MemorySegment.ofArray(new byte[8])));
            w.write(new byte[8]);
            assertThrows(IllegalStateException.class, () -> w.write(new byte[1]));
            assertThrows(IllegalStateException.class, () -> w.putString("late", "x"));
        }
    }

    // ---------------------------------------------------------------- damaged files: never anything but QtoolException

    private Path writeSample() throws IOException {
        Path p = dir.resolve("sample.gguf");
        try (GgufWriter w = new GgufWriter(p)) {
            w.putAll(allValueTypes());
            w.addTensor("a", GgmlType.F32, 8, 2);
            w.addTensor("q", GgmlType.Q8_0, 64);
            w.addTensor("k", GgmlType.Q6_K, 256);
            w.write(new byte[64 + 68 + 210]);
        }
        return p;
    }

    @Test
    void everyTruncationIsReportedAsTruncated() throws IOException {
        Path p = writeSample();
        byte[] full = Files.readAllBytes(p);
        long dataEnd;
        try (GgufFile g = GgufFile.open(p)) {
            GgufTensor last = g.tensor("k");
            dataEnd = g.dataOffset() + last.offset() + last.byteSize();
        }
        Path cut = dir.resolve("cut.gguf");
        for (int n = 0; n < full.length; n++) {
            Files.write(cut, Arrays.copyOf(full, n));
            if (n >= dataEnd) { // only trailing padding is missing: still a complete file
                GgufFile.open(cut).close();
                continue;
            }
            try {
                GgufFile.open(cut).close();
                fail("a file cut at " + n + " of " + full.length + " bytes was accepted");
            } catch (QtoolException e) {
                assertTrue(e.getMessage().contains("truncated"), "cut at " + n + ": " + e.getMessage());
            }
        }
    }

    @Test
    void corruptedBytesGiveQtoolExceptionsOnly() throws IOException {
        Path p = writeSample();
        byte[] full = Files.readAllBytes(p);
        long dataOffset;
        try (GgufFile g = GgufFile.open(p)) {
            dataOffset = g.dataOffset();
        }
        Random rnd = new Random(7);
        Path bad = dir.resolve("corrupt.gguf");
        int accepted = 0;
        for (int iter = 0; iter < 1000; iter++) {
            byte[] b = full.clone();
            int flips = 1 + rnd.nextInt(4);
            for (int f = 0; f < flips; f++) {
                int at = rnd.nextInt((int) dataOffset);
                b[at] = rnd.nextInt(3) == 0 ? (byte) 0xff : (byte) rnd.nextInt(256);
            }
            Files.write(bad, b);
            try (GgufFile g = GgufFile.open(bad)) {
                g.metadata();
                accepted++;
            } catch (QtoolException expected) {
                // the point: a clear error
            } catch (RuntimeException | Error e) {
                throw new AssertionError("iteration " + iter + ": " + e, e);
            }
        }
        assertTrue(accepted > 0, "some corruptions (inside strings) are harmless");
    }
}
