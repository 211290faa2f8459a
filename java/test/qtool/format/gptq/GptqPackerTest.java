package qtool.format.gptq;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import qtool.QtoolException;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker.PackedLinear;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.GptqTestData;

class GptqPackerTest {

    record Linear(int out, int in, int bits, byte[] codes, float[] scales, int[] zeros, int[] gIdx) {}

    static Linear random(int out, int in, int bits, int group, int minZero, long seed) {
        Random rnd = new Random(seed);
        int maxq = (1 << bits) - 1;
        int groups = (in + group - 1) / group;
        byte[] codes = new byte[out * in];
        for (int k = 0; k < codes.length; k++) codes[k] = (byte) rnd.nextInt(maxq + 1);
        float[] scales = new float[groups * out];
        for (int k = 0; k < scales.length; k++) scales[k] = (float) (0.001 + rnd.nextDouble() * 0.01);
        int[] zeros = new int[groups * out];
        for (int k = 0; k < zeros.length; k++) zeros[k] = minZero + rnd.nextInt(maxq + 1 - minZero);
        int[] gIdx = new int[in];
        for (int i = 0; i < in; i++) gIdx[i] = rnd.nextInt(groups); // any assignment, as act-order makes
        return new Linear(out, in, bits, codes, scales, zeros, gIdx);
    }

    static PackedLinear pack(Linear l, CheckpointFormat f) {
        return GptqPacker.pack("layer", l.out, l.in, l.bits, l.codes, l.scales, l.zeros, l.gIdx, f);
    }

    @ParameterizedTest(name = "{0} bits")
    @ValueSource(ints = {2, 3, 4, 8})
    void roundTripsBitExactly(int bits) {
        for (CheckpointFormat f : CheckpointFormat.values()) {
            // v1 cannot hold a zero point of 0 (see zeroPointZeroInV1); v2 can.
            Linear l = random(96, 128, bits, 32, f == CheckpointFormat.GPTQ ? 1 : 0, bits * 10L + f.ordinal());
            PackedLinear p = pack(l, f);
            assertArrayEquals(new long[] {128 * bits / 32, 96}, p.qweightShape());
            assertArrayEquals(new long[] {4, 96 * bits / 32}, p.qzerosShape());
            assertEquals(0, p.v1WrappedZeros());
            int[] codes = GptqPacker.unpackCodes(p);
            for (int k = 0; k < codes.length; k++) assertEquals(l.codes[k] & 0xFF, codes[k]);
            assertArrayEquals(l.zeros, GptqPacker.unpackZeros(p));
            assertArrayEquals(l.gIdx, p.gIdx());
            float[] w = GptqPacker.dequantize(p);
            for (int o = 0; o < l.out; o++) {
                for (int i = 0; i < l.in; i++) {
                    int g = l.gIdx[i] * l.out + o;
                    float s = Float.float16ToFloat(Float.floatToFloat16(l.scales[g]));
                    assertEquals(s * ((l.codes[o * l.in + i] & 0xFF) - l.zeros[g]), w[o * l.in + i]);
                }
            }
        }
    }

    @ParameterizedTest(name = "{0} bits")
    @ValueSource(ints = {2, 3, 4, 8})
    void matchesAutoGptqPackLoops(int bits) {
        Linear l = random(64, 96, bits, 32, 1, 7 + bits);
        PackedLinear p = pack(l, CheckpointFormat.GPTQ);
        int[][] intweight = new int[l.in][l.out]; // AutoGPTQ's intweight is [in, out]
        for (int o = 0; o < l.out; o++) for (int i = 0; i < l.in; i++) intweight[i][o] = l.codes[o * l.in + i] & 0xFF;
        assertArrayEquals(flatten(autoGptqPackRows(intweight, bits)), p.qweight());
        int groups = l.scales.length / l.out;
        int[][] zerosMinusOne = new int[groups][l.out];
        for (int g = 0; g < groups; g++) for (int o = 0; o < l.out; o++) zerosMinusOne[g][o] = l.zeros[g * l.out + o] - 1;
        // AutoGPTQ packs qzeros column-wise with the same loop; packing the transposed zeros row-wise is the same.
        int[][] transposed = new int[l.out][groups];
        for (int g = 0; g < groups; g++) for (int o = 0; o < l.out; o++) transposed[o][g] = zerosMinusOne[g][o];
        int[][] packedT = autoGptqPackRows(transposed, bits);
        int[] expected = new int[p.qzeros().length];
        int wordsPerRow = l.out * bits / 32;
        for (int w = 0; w < wordsPerRow; w++) for (int g = 0; g < groups; g++) expected[g * wordsPerRow + w] = packedT[w][g];
        assertArrayEquals(expected, p.qzeros());
        // And GPTQModel's torch unpacking (its wf shift tables) reads our qweight back.
        int[] codes = gptqModelUnpackQweight(p.qweight(), l.in, l.out, bits);
        for (int o = 0; o < l.out; o++) for (int i = 0; i < l.in; i++) assertEquals(l.codes[o * l.in + i] & 0xFF, codes[i * l.out + o]);
    }

    /** AutoGPTQ qlinear_cuda pack(): rows of uint32 built with |= and <<, numpy uint32 semantics. */
    static int[][] autoGptqPackRows(int[][] iw, int bits) {
        int cols = iw[0].length;
        long mask = 0xFFFFFFFFL;
        long[][] q = new long[iw.length / 32 * bits][cols];
        int i = 0, row = 0;
        while (row < q.length) {
            for (int c = 0; c < cols; c++) {
                int j0 = i, r = row;
                if (bits != 3) {
                    for (int j = j0; j < j0 + 32 / bits; j++) q[r][c] |= (u(iw[j][c]) << (bits * (j - j0))) & mask;
                } else {
                    int k = j0;
                    for (int j = k; j < k + 10; j++) q[r][c] |= (u(iw[j][c]) << (3 * (j - k))) & mask;
                    k += 10;
                    q[r][c] |= (u(iw[k][c]) << 30) & mask;
                    r++;
                    q[r][c] |= (u(iw[k][c]) >> 2) & 1;
                    k++;
                    for (int j = k; j < k + 10; j++) q[r][c] |= (u(iw[j][c]) << (3 * (j - k) + 1)) & mask;
                    k += 10;
                    q[r][c] |= (u(iw[k][c]) << 31) & mask;
                    r++;
                    q[r][c] |= (u(iw[k][c]) >> 1) & 0x3;
                    k++;
                    for (int j = k; j < k + 10; j++) q[r][c] |= (u(iw[j][c]) << (3 * (j - k) + 2)) & mask;
                }
            }
            i += bits == 3 ? 32 : 32 / bits;
            row += bits == 3 ? 3 : 1;
        }
        int[][] out = new int[q.length][cols];
        for (int r = 0; r < q.length; r++) for (int c = 0; c < cols; c++) out[r][c] = (int) q[r][c];
        return out;
    }

    private static long u(int v) {
        return v & 0xFFFFFFFFL; // numpy's astype(np.uint32): -1 becomes 0xFFFFFFFF
    }

    private static int[] flatten(int[][] m) {
        int[] f = new int[m.length * m[0].length];
        for (int r = 0; r < m.length; r++) System.arraycopy(m[r], 0, f, r * m[0].length, m[0].length);
        return f;
    }

    /** GPTQModel's dequantize_weight unpacking, [in, out], with its wf shift tables and 3-bit fix-ups. */
    static int[] gptqModelUnpackQweight(int[] qweight, int in, int out, int bits) {
        int[] codes = new int[in * out];
        int maxq = (1 << bits) - 1;
        if (bits != 3) {
            int per = 32 / bits;
            for (int r = 0; r < in / per; r++) {
                for (int k = 0; k < per; k++) {
                    for (int o = 0; o < out; o++) codes[(r * per + k) * out + o] = (qweight[r * out + o] >> (bits * k)) & maxq;
                }
            }
            return codes;
        }
        int[][] wf = {{0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0}, {0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}, {0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0}};
        for (int blk = 0; blk < in / 32; blk++) {
            for (int o = 0; o < out; o++) {
                int[][] wgt = new int[3][12];
                for (int j = 0; j < 3; j++) for (int k = 0; k < 12; k++) wgt[j][k] = (qweight[(3 * blk + j) * out + o] >> wf[j][k]) & 7;
                wgt[0][10] = (wgt[0][10] & 0x3) | ((qweight[(3 * blk + 1) * out + o] << 2) & 0x4);
                wgt[1][11] = (wgt[1][11] & 0x1) | ((qweight[(3 * blk + 2) * out + o] << 1) & 0x6);
                int i = blk * 32;
                for (int k = 0; k < 11; k++) codes[(i++) * out + o] = wgt[0][k] & 7;
                for (int k = 1; k < 12; k++) codes[(i++) * out + o] = wgt[1][k] & 7;
                for (int k = 1; k < 11; k++) codes[(i++) * out + o] = wgt[2][k] & 7;
            }
        }
        return codes;
    }

    @Test
    void symmetricZeroWordsAreTheWellKnownConstants() {
        int[][] cases = {{4, 0x77777777, 0x88888888}, {2, 0x55555555, 0xAAAAAAAA}, {8, 0x7F7F7F7F, 0x80808080}};
        for (int[] c : cases) {
            int bits = c[0];
            int z = 1 << (bits - 1);
            Linear l = new Linear(32, 32, bits, new byte[32 * 32], filled(32, 0.01f), filledInt(32, z), new int[32]);
            for (int w : pack(l, CheckpointFormat.GPTQ).qzeros()) assertEquals(c[1], w, bits + "-bit v1");
            for (int w : pack(l, CheckpointFormat.GPTQ_V2).qzeros()) assertEquals(c[2], w, bits + "-bit v2");
        }
        // 3-bit, z = 4: v1 stores 3 in every field of the 96-bit stream, v2 stores 4.
        Linear l = new Linear(32, 32, 3, new byte[32 * 32], filled(32, 0.01f), filledInt(32, 4), new int[32]);
        assertArrayEquals(new int[] {0xdb6db6db, 0xb6db6db6, 0x6db6db6d}, pack(l, CheckpointFormat.GPTQ).qzeros());
        assertArrayEquals(new int[] {0x24924924, 0x49249249, 0x92492492}, pack(l, CheckpointFormat.GPTQ_V2).qzeros());
    }

    private static float[] filled(int n, float v) {
        float[] a = new float[n];
        java.util.Arrays.fill(a, v);
        return a;
    }

    private static int[] filledInt(int n, int v) {
        int[] a = new int[n];
        java.util.Arrays.fill(a, v);
        return a;
    }

    @Test
    void zeroPointZeroInV1WrapsItsFieldAndIsCounted() {
        for (int bits : new int[] {2, 3, 4, 8}) {
            Linear l = random(32, 64, bits, 32, 0, bits);
            l.zeros[0] = 0;
            l.zeros[5] = 0;
            l.zeros[6] = 1;
            PackedLinear v1 = pack(l, CheckpointFormat.GPTQ);
            assertTrue(v1.v1WrappedZeros() >= 2);
            int[] read = GptqPacker.unpackZeros(v1);
            assertEquals(1 << bits, read[0], "v1 readers add 1 to the stored 2^bits - 1");
            assertEquals(1 << bits, read[5]);
            assertEquals(1, read[6], "the wrap stays inside its field");
            for (int k = 0; k < read.length; k++) if (l.zeros[k] != 0) assertEquals(l.zeros[k], read[k]);
            PackedLinear v2 = pack(l, CheckpointFormat.GPTQ_V2);
            assertEquals(0, v2.v1WrappedZeros());
            assertArrayEquals(l.zeros, GptqPacker.unpackZeros(v2));
        }
    }

    @Test
    void dimensionsThatDoNotFillWordsAreNamed() {
        QtoolException e = assertThrows(QtoolException.class, () -> pack(random(32, 172, 4, 32, 1, 1), CheckpointFormat.GPTQ));
        assertTrue(e.getMessage().contains("layer.qweight") && e.getMessage().contains("in_features = 172")
                && e.getMessage().contains("multiple of 8"), e.getMessage());
        e = assertThrows(QtoolException.class, () -> pack(random(32, 48, 3, 16, 1, 1), CheckpointFormat.GPTQ));
        assertTrue(e.getMessage().contains("multiple of 32"), e.getMessage());
        e = assertThrows(QtoolException.class, () -> pack(random(32, 24, 2, 8, 1, 1), CheckpointFormat.GPTQ));
        assertTrue(e.getMessage().contains("multiple of 16"), e.getMessage());
        e = assertThrows(QtoolException.class, () -> pack(random(36, 64, 3, 32, 1, 1), CheckpointFormat.GPTQ));
        assertTrue(e.getMessage().contains("layer.qzeros") && e.getMessage().contains("out_features = 36"), e.getMessage());
        // 8-bit packs 4 per word: 172 inputs fit.
        pack(random(32, 172, 8, 32, 1, 1), CheckpointFormat.GPTQ);
        assertThrows(QtoolException.class, () -> GptqPacker.pack("x", 1, 1, 4, new byte[1], new float[] {1e6f}, new int[] {1}, new int[1], CheckpointFormat.GPTQ));
    }

    @Test
    void gptqResultsPackAndDequantizeAsTheirCodes() {
        int out = 64, in = 192, rows = 256;
        float[] w = GptqTestData.weights(out, in, 3);
        float[] x = GptqTestData.correlatedInputs(rows, in, 4);
        float[] h = GptqTestData.hessian(x, rows, in);
        for (int bits : new int[] {2, 3, 4, 8}) {
            GptqResult r = Gptq.quantize(w, out, in, h, GptqParams.of(bits).withGroupSize(64).withSym(false).withActOrder(true));
            PackedLinear p = GptqPacker.pack("model.layers.0.mlp.up_proj", r, CheckpointFormat.GPTQ_V2);
            float[] fromCheckpoint = GptqPacker.dequantize(p);
            for (int o = 0; o < out; o++) {
                for (int i = 0; i < in; i++) {
                    int g = r.gIdx()[i] * out + o;
                    float s16 = Float.float16ToFloat(Float.floatToFloat16(r.scales()[g]));
                    assertEquals(s16 * (r.code(o, i) - r.zeros()[g]), fromCheckpoint[o * in + i]);
                    // fp32 scales vs stored fp16 scales: relative difference below fp16's half ulp
                    float exact = r.dequantized()[o * in + i];
                    assertEquals(exact, fromCheckpoint[o * in + i], Math.abs(exact) * 0x1p-11 + 1e-12);
                }
            }
        }
    }
}
