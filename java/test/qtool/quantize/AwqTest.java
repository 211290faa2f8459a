package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

/** AWQ's grid, scale search and clip search on host arrays. */
class AwqTest {

    private static float[] gaussian(int n, long seed) {
        Random r = new Random(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian();
        return v;
    }

    @Test
    void gridCodesScalesAndZerosGiveTheDequantizedWeight() {
        int out = 16, in = 80;  // 80 = 2 groups of 32 and a ragged one of 16
        float[] w = gaussian(out * in, 1);
        for (boolean zp : new boolean[] {true, false}) {
            AwqParams p = new AwqParams(4, 32, zp);
            AwqResult r = Awq.quantize(w, out, in, p);
            assertEquals(3, r.numGroups());
            float[] pseudo = Awq.pseudoQuantize(w, out, in, p);
            for (int o = 0; o < out; o++) {
                for (int i = 0; i < in; i++) {
                    int g = i / 32;
                    float s = r.scales()[g * out + o];
                    assertEquals(s, Float.float16ToFloat(Float.floatToFloat16(s)), "fp16-exact scale");
                    assertTrue(r.code(o, i) >= 0 && r.code(o, i) <= 15);
                    float deq = s * (r.code(o, i) - r.zeros()[g * out + o]);
                    assertEquals(deq, r.dequantized()[o * in + i]);
                    assertEquals(deq, pseudo[o * in + i]);
                    assertTrue(Math.abs(deq - w[o * in + i]) <= s * (zp ? 0.5f : 1f) + 1e-6f, "error within the grid step");
                    if (!zp) assertEquals(8, r.zeros()[g * out + o]);
                }
            }
        }
    }

    @Test
    void asymmetricGridFollowsMinAndMax() {
        // one group: min -1, max 2 → scale 3/15 = 0.2, zero = -round(-1 / 0.2) = 5
        float[] w = {-1f, 2f, 0.5f, 0.1f};
        AwqResult r = Awq.quantize(w, 1, 4, new AwqParams(4, -1, true));
        assertEquals(Float.float16ToFloat(Float.floatToFloat16(0.2f)), r.scales()[0]);
        assertEquals(5, r.zeros()[0]);
        assertEquals(0, r.code(0, 0));
        assertEquals(15, r.code(0, 1));
    }

    @Test
    void scaleSearchProtectsSalientChannelsAndPicksTheLeastLoss() {
        int out = 32, in = 64, tokens = 256;
        float[] w = gaussian(out * in, 2);
        float[] x = gaussian(tokens * in, 3);
        for (int t = 0; t < tokens; t++) for (int i = 0; i < 4; i++) x[t * in + i] *= 30;  // four salient input channels
        float[] xMean = new float[in];
        for (int t = 0; t < tokens; t++) for (int i = 0; i < in; i++) xMean[i] += Math.abs(x[t * in + i]) / tokens;
        AwqParams p = new AwqParams(4, 32, true);
        double[] losses = new double[Awq.SCALE_GRID + 1];
        int[] calls = {0};
        Awq.ScaleSearch s = Awq.searchScale(new float[][] {w}, new int[] {out}, in, xMean, p, Awq.SCALE_GRID, q -> {
            double e = outputError(w, q[0], x, out, in, tokens);
            losses[calls[0]++] = e;
            return e;
        });
        assertEquals(Awq.SCALE_GRID + 1, calls[0]);  // plain round-to-nearest for the report, then the grid
        double min = Double.POSITIVE_INFINITY;
        for (int k = 1; k <= Awq.SCALE_GRID; k++) min = Math.min(min, losses[k]);
        assertEquals(min, s.loss());
        assertEquals(losses[0], s.unscaledLoss());
        assertTrue(s.ratio() > 0, "salient channels need scaling: ratio " + s.ratio());
        assertTrue(s.loss() < 0.7 * s.unscaledLoss(), s.loss() + " vs round-to-nearest " + s.unscaledLoss());
        for (int i = 0; i < 4; i++) assertTrue(s.scales()[i] > s.scales()[10], "salient channel " + i + " scaled up");
    }

    @Test
    void clipSearchClipsWhereItLowersTheOutputError() {
        int out = 8, in = 64, tokens = 100;
        float[] w = gaussian(out * in, 4);
        w[5] = 9;  // an outlier that stretches its group's grid, on an input that is almost always 0: clipping pays
        float[] x = gaussian(tokens * in, 5);
        for (int t = 0; t < tokens; t++) x[t * in + 5] *= 0.01f;
        AwqParams p = new AwqParams(4, 32, true);
        for (boolean twoSided : new boolean[] {false, true}) {
            float[] range = Awq.searchClip(w, out, in, x, tokens, p, twoSided);
            float[] clipped = w.clone();
            Awq.applyClip(clipped, out, in, range, p);
            double before = outputError(w, Awq.pseudoQuantize(w, out, in, p), x, out, in, tokens);
            double after = outputError(w, Awq.pseudoQuantize(clipped, out, in, p), x, out, in, tokens);
            assertTrue(after <= before, after + " > " + before);
            assertTrue(range[1] < 9, "the outlier's group is clipped: " + range[1]);
        }
    }

    @Test
    void clipSearchPicksTheLeastOutputErrorOfItsGrid() {
        // the search works from the groups' Gram matrices when the sample outnumbers a group's columns: its choice
        // must be the argmin of the direct objective, mean over tokens of (x_g·(Q(clamp(w_g)) − w_g))², per group
        int out = 6, in = 96, tokens = 200;
        AwqParams p = new AwqParams(4, 32, true);
        float[] w = gaussian(out * in, 7), x = gaussian(tokens * in, 8);
        int groups = p.numGroups(in), width = p.groupWidth(in);
        for (boolean twoSided : new boolean[] {false, true}) {
            float[] range = Awq.searchClip(w, out, in, x, tokens, p, twoSided);
            for (int o = 0; o < out; o++) {
                for (int g = 0; g < groups; g++) {
                    float min = 0, max = 0;
                    for (int i = g * width; i < (g + 1) * width; i++) {
                        min = Math.min(min, w[o * in + i]);
                        max = Math.max(max, w[o * in + i]);
                    }
                    double bestErr = Double.POSITIVE_INFINITY;
                    float[] best = null;
                    for (float[] c : Awq.clipCandidates(min, max, Math.max(-min, max), twoSided)) {
                        float[] row = java.util.Arrays.copyOfRange(w, o * in, o * in + in);
                        for (int i = g * width; i < (g + 1) * width; i++) row[i] = Math.min(Math.max(row[i], c[0]), c[1]);
                        float[] q = Awq.pseudoQuantize(row, 1, in, p);
                        double err = 0;
                        for (int t = 0; t < tokens; t++) {
                            double e = 0;
                            for (int i = g * width; i < (g + 1) * width; i++) e += x[t * in + i] * ((double) q[i] - w[o * in + i]);
                            err += e * e;
                        }
                        if (err < bestErr) {
                            bestErr = err;
                            best = c;
                        }
                    }
                    int k = 2 * (o * groups + g);
                    assertEquals(best[0], range[k], "row " + o + ", group " + g + ", lo, two-sided " + twoSided);
                    assertEquals(best[1], range[k + 1], "row " + o + ", group " + g + ", hi, two-sided " + twoSided);
                }
            }
        }
    }

    @Test
    void twoSidedClipCandidatesHoldAutoAwqsAndClipOneSideAlone() {
        float[][] sym = Awq.clipCandidates(-1, 3, 3, false), two = Awq.clipCandidates(-1, 3, 3, true);
        assertEquals(10, sym.length);
        for (int k = 0; k < sym.length; k++) assertArrayEquals(sym[k], two[k]);
        // (min·1, max·(1 − 9/20)): the positive side shrunk alone, which no symmetric range can do here
        assertTrue(java.util.Arrays.stream(two).anyMatch(c -> c[0] == -1f && c[1] == 3f * (1 - 9f / 20)));
    }

    /** Σ over tokens and outputs of (x·wᵀ − x·qᵀ)². */
    private static double outputError(float[] w, float[] q, float[] x, int out, int in, int tokens) {
        double e = 0;
        for (int t = 0; t < tokens; t++) {
            for (int o = 0; o < out; o++) {
                double d = 0;
                for (int i = 0; i < in; i++) d += x[t * in + i] * (w[o * in + i] - q[o * in + i]);
                e += d * d;
            }
        }
        return e;
    }
}
