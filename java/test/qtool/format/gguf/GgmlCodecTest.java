package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;

class GgmlCodecTest {

    @Test
    void nearestIntRoundsHalfToEven() {
        assertEquals(0, GgmlCodec.nearestInt(0.5f));
        assertEquals(2, GgmlCodec.nearestInt(1.5f));
        assertEquals(2, GgmlCodec.nearestInt(2.5f));
        assertEquals(-2, GgmlCodec.nearestInt(-2.5f));
        assertEquals(-3, GgmlCodec.nearestInt(-2.6f));
        assertEquals(4194303, GgmlCodec.nearestInt(4194303f));
    }

    @Test
    void roundfRoundsHalfAwayFromZero() {
        assertEquals(3f, GgmlCodec.roundf(2.5f));
        assertEquals(-3f, GgmlCodec.roundf(-2.5f));
        assertEquals(0f, GgmlCodec.roundf(0.49999997f));
        assertEquals(-1f, GgmlCodec.roundf(-0.5f));
        assertEquals(127f, GgmlCodec.roundf(126.5f));
    }

    @Test
    void bf16RoundsToNearestEven() {
        assertEquals((short) 0x3f80, GgmlCodec.floatToBf16(1.0f));
        assertEquals((short) 0x3f80, GgmlCodec.floatToBf16(Float.intBitsToFloat(0x3f808000))); // tie, even stays
        assertEquals((short) 0x3f82, GgmlCodec.floatToBf16(Float.intBitsToFloat(0x3f818000))); // tie, odd rounds up
        assertEquals((short) 0x3f81, GgmlCodec.floatToBf16(Float.intBitsToFloat(0x3f808001)));
        assertTrue(Float.isNaN(GgmlCodec.bf16ToFloat(GgmlCodec.floatToBf16(Float.NaN))));
        assertEquals(-2.5f, GgmlCodec.bf16ToFloat(GgmlCodec.floatToBf16(-2.5f)));
    }

    @Test
    void floatTypesRoundTrip() {
        float[] x = {0f, -0f, 1f, -2.5f, 65504f, 1e-3f, 3.1415927f};
        assertArrayEquals(x, roundTrip(GgmlType.F32, x));
        float[] h = roundTrip(GgmlType.F16, x);
        for (int i = 0; i < x.length; i++) assertEquals(Float.float16ToFloat(Float.floatToFloat16(x[i])), h[i]);
        float[] b = roundTrip(GgmlType.BF16, x);
        for (int i = 0; i < x.length; i++) assertEquals(x[i], b[i], Math.abs(x[i]) / 128);
    }

    private static float[] roundTrip(GgmlType type, float[] x) {
        byte[] q = GgmlCodec.quantizeRow(type, x, null);
        assertEquals(type.byteSize(x.length), q.length);
        float[] y = new float[x.length];
        GgmlCodec.dequantizeRow(type, MemorySegment.ofArray(q), 0, y, 0, x.length);
        return y;
    }

    @Test
    void q4_0BlockByHand() {
        // x = j - 16: the largest magnitude is -16, so d = -16 / -8 = 2 and q = trunc(x / 2 + 8.5) clamped to 15
        float[] x = new float[32];
        for (int j = 0; j < 32; j++) x[j] = j - 16;
        byte[] q = GgmlCodec.quantizeRow(GgmlType.Q4_0, x, null);
        assertEquals(Float.floatToFloat16(2f), (short) ((q[0] & 0xff) | q[1] << 8));
        for (int j = 0; j < 16; j++) {
            int lo = Math.min(15, (int) ((j - 16) / 2f + 8.5f)), hi = Math.min(15, (int) ((j) / 2f + 8.5f));
            assertEquals(lo | hi << 4, q[2 + j] & 0xff, "byte " + j);
        }
        float[] y = roundTrip(GgmlType.Q4_0, x);
        for (int j = 0; j < 32; j++) assertEquals(x[j], y[j], 1.01f);
    }

    /** Relative RMS error bounds of a quantize/dequantize round trip on Gaussian rows. */
    private static final Map<GgmlType, Double> MAX_REL_RMSE = new EnumMap<>(Map.of(
            GgmlType.Q8_0, 0.01, GgmlType.Q6_K, 0.03, GgmlType.Q5_0, 0.06, GgmlType.Q5_1, 0.06, GgmlType.Q5_K, 0.06,
            GgmlType.Q4_0, 0.12, GgmlType.Q4_1, 0.12, GgmlType.Q4_K, 0.12, GgmlType.Q3_K, 0.25, GgmlType.Q2_K, 0.5));

    @Test
    void quantizedRowsDecodeCloseToTheInput() {
        Random rnd = new Random(3);
        int n = 1024;
        float[] x = new float[n], imp = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) rnd.nextGaussian();
            imp[i] = (float) Math.exp(rnd.nextGaussian());
        }
        for (var e : MAX_REL_RMSE.entrySet()) {
            for (float[] qw : new float[][] {null, imp}) {
                float[] y = roundTrip(e.getKey(), x, qw);
                double se = 0, sx = 0;
                for (int i = 0; i < n; i++) {
                    se += (x[i] - y[i]) * (x[i] - y[i]);
                    sx += x[i] * x[i];
                }
                double rel = Math.sqrt(se / sx);
                assertTrue(rel < e.getValue(), e.getKey() + (qw == null ? "" : " with importance") + ": relative RMSE " + rel);
            }
        }
    }

    private static float[] roundTrip(GgmlType type, float[] x, float[] qw) {
        byte[] q = GgmlCodec.quantizeRow(type, x, qw);
        float[] y = new float[x.length];
        GgmlCodec.dequantizeRow(type, MemorySegment.ofArray(q), 0, y, 0, x.length);
        return y;
    }

    @Test
    void importanceChangesEveryTypeButQ8_0() {
        Random rnd = new Random(5);
        float[] x = new float[512], imp = new float[512];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rnd.nextGaussian();
            imp[i] = (float) Math.exp(2 * rnd.nextGaussian());
        }
        for (GgmlType t : MAX_REL_RMSE.keySet()) {
            boolean same = Arrays.equals(GgmlCodec.quantizeRow(t, x, null), GgmlCodec.quantizeRow(t, x, imp));
            assertEquals(t == GgmlType.Q8_0, same, t.toString());
        }
    }

    @Test
    void zeroRowsQuantizeToZeros() {
        float[] x = new float[256];
        for (GgmlType t : MAX_REL_RMSE.keySet()) {
            // (llama.cpp's Q4_0/Q5_0 give -0.0 here: d = 0 / -8; compared with a delta, -0.0 == 0)
            assertArrayEquals(x, roundTrip(t, x, null), 0f, t.toString());
            float[] ones = new float[256];
            Arrays.fill(ones, 1f);
            assertArrayEquals(x, roundTrip(t, x, ones), 0f, t + " with importance");
        }
    }

    // ---------------------------------------------------------------- the shared GGUF files

    private static void assertAllFinite(GgufFile g) {
        for (GgufTensor t : g.tensors()) {
            int rl = (int) t.rowLength();
            float[] row = new float[rl];
            double sumAbs = 0;
            for (long r = 0; r < t.rowCount(); r++) {
                GgmlCodec.dequantizeRow(t.type(), t.data(), r * t.rowBytes(), row, 0, rl);
                for (float v : row) {
                    if (!Float.isFinite(v)) throw new AssertionError(t + " row " + r + " holds " + v);
                    sumAbs += Math.abs(v);
                }
            }
            assertTrue(sumAbs > 0, t + " is all zeros");
        }
    }

    @Test
    void dequantizesTheTinyRandomLlama() {
        try (GgufFile g = GgufFile.open(GgufTestFiles.requireShared("models/tiny-random-gguf/llama-2-tiny-random.gguf"))) {
            assertEquals(12, g.tensors().size());
            assertEquals(32000, g.getStrings("tokenizer.ggml.tokens").length);
            assertEquals(32000, g.getFloats("tokenizer.ggml.scores").length);
            assertTrue(g.tensors().stream().anyMatch(t -> t.type() == GgmlType.F16));
            assertAllFinite(g);
        }
    }

    @Test
    void dequantizesSmolLm2() {
        try (GgufFile g = GgufFile.open(GgufTestFiles.requireShared("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"))) {
            assertEquals("llama", g.getString("general.architecture"));
            assertEquals(30, g.getInt("llama.block_count"));
            assertEquals(49152, g.getStrings("tokenizer.ggml.tokens").length);
            assertEquals(49152, g.getInts("tokenizer.ggml.token_type").length);
            assertEquals(272, g.tensors().size());
            assertEquals(GgmlType.Q8_0, g.tensor("token_embd.weight").type());
            assertEquals(GgmlType.Q4_1, g.tensor("blk.0.attn_q.weight").type());
            assertEquals(GgmlType.F32, g.tensor("output_norm.weight").type());
            assertArrayEquals(new long[] {576, 49152}, g.tensor("token_embd.weight").dims());
            assertAllFinite(g);

            // one Q8_0 block by hand: w = d * q
            GgufTensor emb = g.tensor("token_embd.weight");
            MemorySegment blk = emb.data().asSlice(34L * 1000, 34);
            float d = Float.float16ToFloat(blk.get(GgufFile.U16, 0));
            float[] y = new float[32];
            GgmlCodec.dequantizeRow(GgmlType.Q8_0, blk, 0, y, 0, 32);
            for (int j = 0; j < 32; j++) assertEquals(blk.get(java.lang.foreign.ValueLayout.JAVA_BYTE, 2 + j) * d, y[j]);
            // norms are plausible RMSNorm gains
            float[] norm = GgmlCodec.dequantize(g.tensor("output_norm.weight"));
            double mean = 0;
            for (float v : norm) mean += v / norm.length;
            assertTrue(mean > 0.1 && mean < 10, "mean norm gain " + mean);
            assertFalse(Float.isNaN(norm[0]));
        }
    }
}
