package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import qtool.QtoolException;

class GptqTest {
    static final int OUT = 48, IN = 256, ROWS = 512;
    static final float[] W = GptqTestData.weights(OUT, IN, 1);
    static final float[] X = GptqTestData.correlatedInputs(ROWS, IN, 2);
    static final float[] H = GptqTestData.hessian(X, ROWS, IN);

    enum Order { NONE, ACT_ORDER, STATIC, ACT_ORDER_STATIC }

    static Stream<Arguments> everySetting() {
        List<Arguments> all = new ArrayList<>();
        for (int bits : new int[] {2, 3, 4, 8}) {
            for (int group : new int[] {32, 128, -1}) {
                for (boolean sym : new boolean[] {true, false}) {
                    for (Order order : Order.values()) {
                        if (group == -1 && (order == Order.STATIC || order == Order.ACT_ORDER_STATIC)) continue;
                        all.add(Arguments.of(bits, group, sym, order));
                    }
                }
            }
        }
        return all.stream();
    }

    static GptqParams params(int bits, int group, boolean sym, Order order) {
        return new GptqParams(bits, group, sym, order == Order.ACT_ORDER || order == Order.ACT_ORDER_STATIC,
                0.01, 128, order == Order.STATIC || order == Order.ACT_ORDER_STATIC, false, false);
    }

    @ParameterizedTest(name = "{0} bits, group {1}, sym {2}, {3}")
    @MethodSource("everySetting")
    void resultIsExactlyItsCodesAndBeatsRoundToNearest(int bits, int group, boolean sym, Order order) {
        GptqParams p = params(bits, group, sym, order);
        GptqResult r = Gptq.quantize(W, OUT, IN, H, p);
        checkRepresentation(r);

        // Round-to-nearest of the original weights with the very same grids: GPTQ must do better on correlated inputs.
        float[] rtn = roundToNearest(W, r);
        double gptqError = GptqTestData.proxyError(W, r.dequantized(), X, OUT, IN, ROWS);
        double rtnError = GptqTestData.proxyError(W, rtn, X, OUT, IN, ROWS);
        assertTrue(gptqError < 0.9 * rtnError, "GPTQ " + gptqError + " vs RTN " + rtnError);

        // And better than plain RTN with its own grids from the original weights.
        float[] plain = roundToNearest(W, Gptq.quantize(W, OUT, IN, identityHessian(IN), p.withActOrder(false)));
        assertTrue(gptqError < 0.9 * GptqTestData.proxyError(W, plain, X, OUT, IN, ROWS));

        // gptq.py's loss is the OBS objective ½·tr(ΔW·(H + λI)·ΔWᵀ) that its greedy steps add up to.
        assertEquals(halfQuadratic(W, r.dequantized(), H, r.damp()), r.loss(), 2e-3 * r.loss());
        assertEquals(0, r.dampRetries());
        assertEquals(0.01, r.damp());
    }

    /** codes in range, zeros in range, g_idx consistent with the mode, and dequantized == codes exactly. */
    static void checkRepresentation(GptqResult r) {
        GptqParams p = r.params();
        int maxq = p.maxq();
        int groups = p.numGroups(r.in());
        assertEquals(groups * r.out(), r.scales().length);
        assertEquals(groups, r.numGroups());
        for (int o = 0; o < r.out(); o++) {
            for (int i = 0; i < r.in(); i++) assertTrue(r.code(o, i) <= maxq);
        }
        for (int z : r.zeros()) assertTrue(z >= 0 && z <= maxq, "zero " + z);
        if (p.sym()) for (int z : r.zeros()) assertEquals((maxq + 1) / 2, z);
        for (float s : r.scales()) assertTrue(s > 0 && Float.isFinite(s));
        int width = p.groupWidth(r.in());
        int[] position = new int[r.in()];
        for (int k = 0; k < r.in(); k++) position[r.perm()[k]] = k;
        for (int i = 0; i < r.in(); i++) {
            int expected = (p.actOrder() && !p.staticGroups() ? position[i] : i) / width;
            assertEquals(expected, r.gIdx()[i], "g_idx of column " + i);
        }
        assertArrayEquals(r.dequantized(), r.dequantizeFromCodes());
    }

    /** Each weight rounded with the result's grid for its group. */
    static float[] roundToNearest(float[] w, GptqResult r) {
        float[] q = new float[w.length];
        for (int o = 0; o < r.out(); o++) {
            for (int i = 0; i < r.in(); i++) {
                int g = r.gIdx()[i] * r.out() + o;
                q[o * r.in() + i] = Quantizer.quantize(w[o * r.in() + i], r.scales()[g], r.zeros()[g], r.params().maxq());
            }
        }
        return q;
    }

    static float[] identityHessian(int n) {
        float[] h = new float[n * n];
        for (int i = 0; i < n; i++) h[i * n + i] = 1;
        return h;
    }

    /** ½ Σ_rows Δ·(H' + damp·mean(diag H')·I)·Δᵀ with H' = H with zero diagonals set to 1, in double. */
    static double halfQuadratic(float[] w, float[] q, float[] h, double damp) {
        int n = (int) Math.round(Math.sqrt(h.length));
        int out = w.length / n;
        double mean = 0;
        for (int i = 0; i < n; i++) mean += h[i * n + i] == 0 ? 1 : h[i * n + i];
        mean /= n;
        double total = 0;
        double[] d = new double[n];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < n; i++) d[i] = h[i * n + i] == 0 ? -q[o * n + i] : (double) w[o * n + i] - q[o * n + i];
            for (int i = 0; i < n; i++) {
                double s = 0;
                for (int j = 0; j < n; j++) s += (i == j ? (h[i * n + i] == 0 ? 1 : h[i * n + i]) + damp * mean : h[i * n + j]) * d[j];
                total += d[i] * s;
            }
        }
        return total / 2;
    }

    @Test
    void raggedGroups() {
        for (int[] shape : new int[][] {{16, 576, 128}, {16, 172, 32}, {8, 100, 64}}) {
            int out = shape[0], in = shape[1], group = shape[2];
            float[] w = GptqTestData.weights(out, in, 5);
            float[] x = GptqTestData.correlatedInputs(2 * in, in, 6);
            float[] h = GptqTestData.hessian(x, 2 * in, in);
            for (Order order : Order.values()) {
                for (int bits : new int[] {3, 4}) {
                    GptqResult r = Gptq.quantize(w, out, in, h, params(bits, group, false, order));
                    assertEquals((in + group - 1) / group, r.numGroups());
                    checkRepresentation(r);
                    int lastGroupSize = 0;
                    for (int g : r.gIdx()) if (g == r.numGroups() - 1) lastGroupSize++;
                    assertEquals(in - (r.numGroups() - 1) * group, lastGroupSize, in + " columns in groups of " + group);
                    assertEquals(halfQuadratic(w, r.dequantized(), h, r.damp()), r.loss(), 2e-3 * r.loss());
                }
            }
        }
    }

    @Test
    void deadInputsGetZeroWeights() {
        int out = 32, in = 96, rows = 256;
        float[] w = GptqTestData.weights(out, in, 7);
        float[] x = GptqTestData.correlatedInputs(rows, in, 8);
        int[] dead = {0, 5, 40, 41, 95};
        for (int t = 0; t < rows; t++) for (int i : dead) x[t * in + i] = 0;
        float[] h = GptqTestData.hessian(x, rows, in);
        for (int i : dead) assertEquals(0f, h[i * in + i]);
        for (Order order : Order.values()) {
            for (int group : new int[] {32, -1}) {
                if (group == -1 && order.name().contains("STATIC")) continue;
                GptqResult r = Gptq.quantize(w, out, in, h, params(4, group, order == Order.NONE, order));
                checkRepresentation(r);
                for (int o = 0; o < out; o++) for (int i : dead) assertEquals(0f, r.dequantized()[o * in + i], "row " + o + " column " + i);
                assertEquals(halfQuadratic(w, r.dequantized(), h, r.damp()), r.loss(), 2e-3 * r.loss());
                if (order == Order.ACT_ORDER) {
                    // Dead columns count with diag 1; the order is by decreasing diag, ties in index order.
                    int[] expected = java.util.stream.IntStream.range(0, in).boxed()
                            .sorted((a, b) -> {
                                float da = h[a * in + a] == 0 ? 1 : h[a * in + a], db = h[b * in + b] == 0 ? 1 : h[b * in + b];
                                return da != db ? Float.compare(db, da) : Integer.compare(a, b);
                            })
                            .mapToInt(Integer::intValue).toArray();
                    assertArrayEquals(expected, r.perm());
                }
            }
        }
    }

    @Test
    void actOrderSortsByDecreasingDiagonalStably() {
        int n = 6;
        float[] h = identityHessian(n);
        float[] diag = {2, 5, 2, 7, 5, 1};
        for (int i = 0; i < n; i++) h[i * n + i] = diag[i];
        GptqResult r = Gptq.quantize(GptqTestData.weights(4, n, 9), 4, n, h, GptqParams.of(4).withGroupSize(-1).withActOrder(true));
        assertArrayEquals(new int[] {3, 1, 4, 0, 2, 5}, r.perm());
    }

    @Test
    void dampingIsRaisedWhenTheHessianIsIndefinite() {
        int out = 16, in = 64, rows = 16; // rank-deficient X, then pushed below zero
        float[] x = GptqTestData.correlatedInputs(rows, in, 10);
        float[] h = GptqTestData.hessian(x, rows, in);
        double mean = 0;
        for (int i = 0; i < in; i++) mean += h[i * in + i];
        mean /= in;
        for (int i = 0; i < in; i++) h[i * in + i] -= (float) (0.05 * mean); // smallest eigenvalue ≈ -0.05·mean
        float[] w = GptqTestData.weights(out, in, 11);
        GptqResult r = Gptq.quantize(w, out, in, h, GptqParams.of(4).withGroupSize(32));
        assertEquals(1, r.dampRetries());
        assertTrue(r.dampRaised());
        assertEquals(0.1, r.damp(), 1e-12);
        checkRepresentation(r);

        // damp 0 on a singular H starts over at the default 0.01.
        float[] singular = GptqTestData.hessian(x, rows, in);
        for (int i = 0; i < in; i++) for (int j = 0; j < in; j++) singular[i * in + j] = i < 2 && j < 2 ? 1 : 0;
        GptqResult s = Gptq.quantize(w, out, in, singular, GptqParams.of(4).withGroupSize(32).withDamp(0));
        assertTrue(s.dampRetries() >= 1);
        assertTrue(s.damp() >= 0.01);

        float[] negative = identityHessian(in);
        for (int i = 0; i < in; i++) negative[i * in + i] = -1;
        QtoolException e = assertThrows(QtoolException.class, () -> Gptq.quantize(w, out, in, negative, GptqParams.of(4)));
        assertTrue(e.getMessage().contains("not positive definite"), e.getMessage());
    }

    @Test
    void upperFactorOfInverseMatchesTheTextbookRoute() {
        for (int n : new int[] {1, 2, 5, 31, 32, 33, 70, 130, 300}) {
            float[] x = GptqTestData.correlatedInputs(2 * n + 3, n, n);
            float[] h = GptqTestData.hessian(x, 2 * n + 3, n);
            java.util.List<Integer> shuffled = new java.util.ArrayList<>();
            for (int i = 0; i < n; i++) shuffled.add(i);
            java.util.Collections.shuffle(shuffled, new java.util.Random(n));
            int[] perm = shuffled.stream().mapToInt(Integer::intValue).toArray();
            double mean = 0;
            for (int i = 0; i < n; i++) mean += h[i * n + i];
            double damp = 0.01 * mean / n;
            float[] u = Gptq.upperFactorOfInverse(h, n, perm, new boolean[n], damp);
            // gptq.py: L = cholesky(H); Hinv = cholesky_inverse(L); U = cholesky(Hinv, upper=True), here in double.
            double[] a = new double[n * n];
            for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) a[i * n + j] = h[perm[i] * n + perm[j]] + (i == j ? damp : 0);
            double[] inv = invertSpd(a, n);
            double[] expected = upperCholesky(inv, n);
            double maxAbs = 0;
            for (double v : expected) maxAbs = Math.max(maxAbs, Math.abs(v));
            for (int i = 0; i < n; i++) {
                for (int j = i; j < n; j++) {
                    assertEquals(expected[i * n + j], u[i * n + j], 1e-5 * maxAbs, "n=" + n + " U[" + i + "][" + j + "]");
                }
            }
        }
    }

    /** Gauss-Jordan inverse, the plainest route. */
    static double[] invertSpd(double[] a, int n) {
        double[] m = a.clone();
        double[] inv = new double[n * n];
        for (int i = 0; i < n; i++) inv[i * n + i] = 1;
        for (int c = 0; c < n; c++) {
            double pivot = m[c * n + c];
            for (int j = 0; j < n; j++) {
                m[c * n + j] /= pivot;
                inv[c * n + j] /= pivot;
            }
            for (int r = 0; r < n; r++) {
                if (r == c) continue;
                double f = m[r * n + c];
                for (int j = 0; j < n; j++) {
                    m[r * n + j] -= f * m[c * n + j];
                    inv[r * n + j] -= f * inv[c * n + j];
                }
            }
        }
        return inv;
    }

    /** A = UᵀU, column by column, the textbook way. */
    static double[] upperCholesky(double[] a, int n) {
        double[] u = new double[n * n];
        for (int j = 0; j < n; j++) {
            for (int i = 0; i <= j; i++) {
                double s = a[i * n + j];
                for (int k = 0; k < i; k++) s -= u[k * n + i] * u[k * n + j];
                u[i * n + j] = i == j ? Math.sqrt(s) : s / u[i * n + i];
            }
        }
        return u;
    }

    @Test
    void hessianIsTheRunningAverageOfTwoXtX() {
        int in = 40, rows = 90;
        float[] x = GptqTestData.correlatedInputs(rows, in, 12);
        float[] h = new float[in * in];
        long n = 0;
        int[] batches = {10, 50, 30};
        int at = 0;
        for (int b : batches) {
            float[] part = java.util.Arrays.copyOfRange(x, at * in, (at + b) * in);
            n = Gptq.accumulateHessian(h, part, b, in, n);
            at += b;
        }
        assertEquals(rows, n);
        for (int i = 0; i < in; i++) {
            for (int j = 0; j < in; j++) {
                double s = 0;
                for (int t = 0; t < rows; t++) s += (double) x[t * in + i] * x[t * in + j];
                assertEquals(2 * s / rows, h[i * in + j], 1e-5 * Math.max(1, Math.abs(2 * s / rows)));
                assertEquals(h[i * in + j], h[j * in + i]);
            }
        }
        // Counting each batch as one sample (gptq.py's sequences): H = 2/batches · Σ XᵀX.
        float[] hs = new float[in * in];
        long samples = 0;
        at = 0;
        for (int b : batches) {
            samples = Gptq.accumulateHessian(hs, java.util.Arrays.copyOfRange(x, at * in, (at + b) * in), b, in, samples, 1);
            at += b;
        }
        assertEquals(3, samples);
        for (int k = 0; k < h.length; k++) assertEquals(h[k] * rows / 3.0, hs[k], 1e-4 * Math.max(1, Math.abs(hs[k])));
    }

    @Test
    void mseGridsStillRepresentExactly() {
        for (Order order : Order.values()) {
            GptqParams p = params(3, 32, false, order).withMse(true);
            GptqResult r = Gptq.quantize(W, OUT, IN, H, p);
            checkRepresentation(r);
            assertEquals(halfQuadratic(W, r.dequantized(), H, r.damp()), r.loss(), 2e-3 * r.loss());
        }
    }

    @Test
    void inputsAreNotModified() {
        float[] w = W.clone(), h = H.clone();
        Gptq.quantize(w, OUT, IN, h, params(4, 32, false, Order.ACT_ORDER));
        assertArrayEquals(W, w);
        assertArrayEquals(H, h);
    }

    @Test
    void smolLmMlpShapesAreFast() {
        // SmolLM2-135M: gate/up [1536, 576], down [576, 1536]. Warm up once, then time.
        for (int[] shape : new int[][] {{1536, 576}, {576, 1536}}) {
            int out = shape[0], in = shape[1];
            float[] w = GptqTestData.weights(out, in, 13);
            float[] h = GptqBench.randomSpd(in, 14);
            GptqParams p = GptqParams.of(4).withActOrder(true);
            Gptq.quantize(w, out, in, h, p);
            long t0 = System.nanoTime();
            GptqResult r = Gptq.quantize(w, out, in, h, p);
            double seconds = (System.nanoTime() - t0) / 1e9;
            System.out.printf("GPTQ %d×%d 4-bit g128 act-order: %.3f s on %d threads%n", out, in, seconds, Runtime.getRuntime().availableProcessors());
            checkRepresentation(r);
            assertTrue(seconds < 5, out + "×" + in + " took " + seconds + " s");
        }
    }
}
