package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import qtool.load.DType;

/**
 * Each CpuBackend operation against a plain double-precision loop, with both kernel sets (the Vector API one and
 * the scalar fallback), on shapes that leave partial tiles, partial panels and partial vectors everywhere.
 */
class CpuBackendTest {

    static Stream<CpuBackend> backends() {
        List<CpuBackend> list = new ArrayList<>();
        list.add(new CpuBackend(new ScalarKernels()));
        if (CpuKernels.vectorModulePresent()) list.add(new CpuBackend());
        return list.stream();
    }

    /** The build passes --add-modules jdk.incubator.vector to tests (pom.xml), so the default backend is the SIMD one. */
    @Test
    void testJvmHasTheVectorKernels() {
        assertTrue(CpuKernels.vectorModulePresent(), "surefire's argLine lacks --add-modules jdk.incubator.vector");
        assertTrue(new CpuBackend().description().contains("vector"), new CpuBackend().description());
    }

    @ParameterizedTest
    @MethodSource("backends")
    void linearMatchesDoubleSums(CpuBackend b) {
        Random rnd = new Random(1);
        int[][] shapes = {{1, 64, 172}, {3, 13, 37}, {15, 64, 65}, {16, 64, 172}, {37, 100, 70}, {130, 72, 48}, {64, 576, 200}};
        for (int[] s : shapes) {
            int rows = s[0], in = s[1], outF = s[2];
            for (boolean withBias : new boolean[] {false, true}) {
                float[] x = random(rnd, rows * in), w = random(rnd, outF * in), bias = random(rnd, outF);
                Tensor out = b.allocate(DType.F32, rows, outF);
                b.linear(out, tensor(b, x, rows, in), tensor(b, w, outF, in), withBias ? tensor(b, bias, outF) : null);
                float[] got = host(out);
                for (int r = 0; r < rows; r++) {
                    for (int o = 0; o < outF; o++) {
                        double sum = withBias ? bias[o] : 0, mag = Math.abs(sum);
                        for (int i = 0; i < in; i++) {
                            sum += (double) x[r * in + i] * w[o * in + i];
                            mag += Math.abs((double) x[r * in + i] * w[o * in + i]);
                        }
                        assertEquals(sum, got[r * outF + o], 1e-6 * mag + 1e-7, shapeName(s) + " bias " + withBias + " at " + r + "," + o);
                    }
                }
            }
        }
    }

    /** A row slice as input and output: the backend must honor tensor offsets inside the backing array. */
    @ParameterizedTest
    @MethodSource("backends")
    void linearOnRowSlices(CpuBackend b) {
        Random rnd = new Random(2);
        int rows = 21, in = 40, outF = 33;
        float[] x = random(rnd, (rows + 3) * in), w = random(rnd, outF * in);
        Tensor out = b.allocate(DType.F32, rows + 5, outF);
        b.linear(out.rowSlice(2, rows), tensor(b, x, rows + 3, in).rowSlice(3, rows), tensor(b, w, outF, in), null);
        float[] got = host(out);
        for (int r = 0; r < rows; r++) {
            for (int o = 0; o < outF; o++) {
                double sum = 0;
                for (int i = 0; i < in; i++) sum += (double) x[(r + 3) * in + i] * w[o * in + i];
                assertEquals(sum, got[(r + 2) * outF + o], 1e-5);
            }
        }
        for (int o = 0; o < 2 * outF; o++) assertEquals(0f, got[o], "rows before the slice are untouched");
    }

    @ParameterizedTest
    @MethodSource("backends")
    void rmsNormSiluAddMatch(CpuBackend b) {
        Random rnd = new Random(3);
        int rows = 7, dim = 61;
        float[] x = random(rnd, rows * dim), w = random(rnd, dim), y = random(rnd, rows * dim);
        Tensor out = b.allocate(DType.F32, rows, dim);
        b.rmsNorm(out, tensor(b, x, rows, dim), tensor(b, w, dim), 1e-5f);
        float[] got = host(out);
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int i = 0; i < dim; i++) ss += (double) x[r * dim + i] * x[r * dim + i];
            double inv = 1 / Math.sqrt(ss / dim + 1e-5);
            for (int i = 0; i < dim; i++) assertEquals(w[i] * x[r * dim + i] * inv, got[r * dim + i], 1e-5);
        }

        float[] g = new float[rows * dim];
        for (int i = 0; i < g.length; i++) g[i] = (float) ((rnd.nextDouble() - 0.5) * 200); // far into both tails
        Tensor gate = tensor(b, g, rows, dim);
        b.siluMul(gate, gate, tensor(b, y, rows, dim));
        got = host(gate);
        for (int i = 0; i < g.length; i++) {
            double want = g[i] / (1 + Math.exp(-g[i])) * y[i];
            assertEquals(want, got[i], 1e-6 * Math.abs(want) + 1e-30, "silu at " + g[i]);
        }

        Tensor a = tensor(b, x, rows, dim);
        b.add(a, tensor(b, y, rows, dim));
        got = host(a);
        for (int i = 0; i < x.length; i++) assertEquals(x[i] + y[i], got[i]);
    }

    @ParameterizedTest
    @MethodSource("backends")
    void crossEntropyMatchesLogSumExp(CpuBackend b) {
        Random rnd = new Random(4);
        int rows = 5, vocab = 1003;
        float[] logits = new float[rows * vocab];
        for (int i = 0; i < logits.length; i++) logits[i] = (float) (rnd.nextGaussian() * (i < vocab ? 1 : 40)); // row 0 mild, others peaked
        int[] targets = {0, 17, 1002, 500, 999};
        Tensor out = b.allocate(DType.F32, rows, 1);
        Tensor t = b.allocate(DType.I32, rows, 1);
        b.copyFromHost(MemorySegment.ofArray(targets), t);
        b.crossEntropy(out, tensor(b, logits, rows, vocab), t);
        float[] got = host(out);
        for (int r = 0; r < rows; r++) {
            double max = Double.NEGATIVE_INFINITY, sum = 0;
            for (int i = 0; i < vocab; i++) max = Math.max(max, logits[r * vocab + i]);
            for (int i = 0; i < vocab; i++) sum += Math.exp(logits[r * vocab + i] - max);
            double want = Math.log(sum) + max - logits[r * vocab + targets[r]];
            assertEquals(want, got[r], 1e-6 * Math.abs(want) + 1e-6, "row " + r);
        }
    }

    @ParameterizedTest
    @MethodSource("backends")
    void ropeRotatesPairsHalfApart(CpuBackend b) {
        Random rnd = new Random(5);
        int seqLen = 6, batch = 2, heads = 3, hd = 8, startPos = 4;
        float[] x = random(rnd, batch * seqLen * heads * hd), inv = {1f, 0.3f, 0.01f, 0.001f};
        Tensor t = tensor(b, x, batch * seqLen, heads * hd);
        b.rope(t, heads, hd, seqLen, startPos, tensor(b, inv, inv.length));
        float[] got = host(t);
        for (int r = 0; r < batch * seqLen; r++) {
            for (int h = 0; h < heads; h++) {
                for (int j = 0; j < hd / 2; j++) {
                    float angle = (startPos + r % seqLen) * inv[j];
                    int i = r * heads * hd + h * hd + j;
                    assertEquals(x[i] * Math.cos(angle) - x[i + hd / 2] * Math.sin(angle), got[i], 1e-6);
                    assertEquals(x[i + hd / 2] * Math.cos(angle) + x[i] * Math.sin(angle), got[i + hd / 2], 1e-6);
                }
            }
        }
    }

    /** Prefill over several query blocks, then decoding one position at a time through the same cache. */
    @ParameterizedTest
    @MethodSource("backends")
    void attentionMatchesSoftmaxOverTheCache(CpuBackend b) {
        int[][] configs = {{2, 37, 4, 2, 8}, {1, 20, 3, 1, 64}, {1, 33, 2, 2, 6}, {1, 50, 8, 4, 8}};
        for (int[] c : configs) {
            int batch = c[0], prefill = c[1], heads = c[2], kvHeads = c[3], hd = c[4], maxSeq = prefill + 3;
            Random rnd = new Random(6);
            float[][] kAll = new float[batch][maxSeq * kvHeads * hd], vAll = new float[batch][maxSeq * kvHeads * hd];
            Tensor kc = b.allocate(DType.F32, batch, maxSeq, kvHeads * hd), vc = b.allocate(DType.F32, batch, maxSeq, kvHeads * hd);
            int start = 0;
            for (int seqLen : new int[] {prefill, 1, 1, 1}) {
                float[] q = new float[batch * seqLen * heads * hd], k = random(rnd, batch * seqLen * kvHeads * hd), v = random(rnd, k.length);
                for (int i = 0; i < q.length; i++) q[i] = (float) (rnd.nextGaussian() * 6); // sharp, some far-off scores
                for (int bb = 0; bb < batch; bb++) {
                    System.arraycopy(k, bb * seqLen * kvHeads * hd, kAll[bb], start * kvHeads * hd, seqLen * kvHeads * hd);
                    System.arraycopy(v, bb * seqLen * kvHeads * hd, vAll[bb], start * kvHeads * hd, seqLen * kvHeads * hd);
                }
                Tensor out = b.allocate(DType.F32, batch * seqLen, heads * hd);
                b.attention(out, tensor(b, q, batch * seqLen, heads * hd), tensor(b, k, batch * seqLen, kvHeads * hd),
                        tensor(b, v, batch * seqLen, kvHeads * hd), kc, vc, batch, seqLen, start, heads, kvHeads, hd);
                float[] got = host(out);
                for (int bb = 0; bb < batch; bb++) {
                    for (int t = 0; t < seqLen; t++) {
                        for (int h = 0; h < heads; h++) {
                            int kvh = h / (heads / kvHeads), len = start + t + 1, qb = ((bb * seqLen + t) * heads + h) * hd;
                            double[] p = new double[len];
                            double max = Double.NEGATIVE_INFINITY, sum = 0;
                            for (int pos = 0; pos < len; pos++) {
                                for (int d = 0; d < hd; d++) p[pos] += (double) q[qb + d] * kAll[bb][(pos * kvHeads + kvh) * hd + d];
                                p[pos] /= Math.sqrt(hd);
                                max = Math.max(max, p[pos]);
                            }
                            for (int pos = 0; pos < len; pos++) sum += p[pos] = Math.exp(p[pos] - max);
                            for (int d = 0; d < hd; d++) {
                                double want = 0;
                                for (int pos = 0; pos < len; pos++) want += p[pos] / sum * vAll[bb][(pos * kvHeads + kvh) * hd + d];
                                assertEquals(want, got[qb + d], 2e-6, "config " + shapeName(c) + " start " + start + " b" + bb + " t" + t + " h" + h + " d" + d);
                            }
                        }
                    }
                }
                start += seqLen;
            }
        }
    }

    private static String shapeName(int[] s) {
        return java.util.Arrays.toString(s);
    }

    private static float[] random(Random rnd, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = rnd.nextFloat() * 2 - 1;
        return a;
    }

    private static Tensor tensor(Backend b, float[] data, long... shape) {
        Tensor t = b.allocate(DType.F32, shape);
        b.copyFromHost(MemorySegment.ofArray(data), t);
        return t;
    }

    private static float[] host(Tensor t) {
        float[] a = new float[Math.toIntExact(t.numel())];
        MemorySegment.copy(t.data(), 0, MemorySegment.ofArray(a), 0, t.byteSize());
        return a;
    }
}
