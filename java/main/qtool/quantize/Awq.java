package qtool.quantize;

import java.util.stream.IntStream;

/**
 * AWQ (Lin et al., activation-aware weight quantization) as AutoAWQ's {@code AwqQuantizer} does it, on host arrays:
 * the group-wise round-to-nearest grid ({@code pseudo_quantize_tensor}), the per-input-channel scale search
 * ({@code _search_best_scale} with {@code duo_scaling}) and the clipping search ({@code _compute_best_clip}). Running
 * the block whose output the scale search compares is the caller's job ({@link BlockLoss}); see
 * {@code qtool.convert.AwqScaling} for the decoder-layer driver.
 *
 * <p>Weights are row-major [out, in] float arrays. Arithmetic is float32 where AutoAWQ's is fp16 (its model is in
 * half precision); scales are rounded to fp16 as soon as they are made, so that the codes are those the stored fp16
 * scales give back.
 */
public final class Awq {
    /** AutoAWQ's {@code n_grid}: the scale exponent runs over 0, 1/20, …, 19/20. */
    public static final int SCALE_GRID = 20;
    /**
     * qtool's AWQ default: the same points and the midpoints between them (0, 1/40, …, 39/40). The exponent is a
     * continuous choice; on stories260K the finer grid lowered the calibration perplexity on all four calibration sets
     * tried (by up to 5%) for twice the search time.
     */
    public static final int FINE_SCALE_GRID = 40;
    /** {@code _compute_best_clip}'s defaults: shrink max|w| by 0, 1/20, …, 9/20; at most ~512 sampled tokens. */
    public static final int CLIP_GRID = 20;
    public static final double CLIP_MAX_SHRINK = 0.5;
    public static final int CLIP_SAMPLE_TOKENS = 512;

    private Awq() {}

    // ---- the grid ------------------------------------------------------------------------------------------------

    /**
     * Quantizes values {@code w[from, to)} (one group of one row) onto AutoAWQ's grid, writing the dequantized values
     * to {@code deq[from, to)} and, when {@code codes} is not null, the codes to {@code codes[from, to)}. Returns the
     * scale (fp16-exact) and the zero point packed as {@code (long) floatBits << 32 | zero}.
     */
    static long quantizeGroup(float[] w, int from, int to, AwqParams p, float[] deq, byte[] codes) {
        int maxInt, zero;
        float scale;
        if (p.zeroPoint()) {
            float max = Float.NEGATIVE_INFINITY, min = Float.POSITIVE_INFINITY;
            for (int i = from; i < to; i++) {
                max = Math.max(max, w[i]);
                min = Math.min(min, w[i]);
            }
            maxInt = (1 << p.bits()) - 1;
            scale = fp16(Math.max(max - min, 1e-5f) / maxInt);
            zero = (int) Math.min(Math.max(-Math.rint(min / scale), 0), maxInt);
        } else {
            float maxAbs = 1e-5f;
            for (int i = from; i < to; i++) maxAbs = Math.max(maxAbs, Math.abs(w[i]));
            int half = 1 << (p.bits() - 1);
            maxInt = 2 * half - 1;
            scale = fp16(maxAbs / (half - 1));
            zero = half; // codes q + 2^(bits-1) for q in [-2^(bits-1), 2^(bits-1) - 1]: the symmetric grid as unsigned codes
        }
        for (int i = from; i < to; i++) {
            int q = (int) Math.min(Math.max(Math.rint(w[i] / scale) + zero, 0), maxInt);
            deq[i] = (q - zero) * scale;
            if (codes != null) codes[i] = (byte) q;
        }
        return (long) Float.floatToRawIntBits(scale) << 32 | zero;
    }

    private static float fp16(float v) {
        return Float.float16ToFloat(Float.floatToFloat16(v));
    }

    /** W rounded to the grid, group by group ({@code pseudo_quantize_tensor(w)[0]}). */
    public static float[] pseudoQuantize(float[] w, int out, int in, AwqParams p) {
        float[] deq = new float[w.length];
        int width = p.groupWidth(in);
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int g0 = 0; g0 < in; g0 += width) quantizeGroup(w, o * in + g0, o * in + Math.min(in, g0 + width), p, deq, null);
        });
        return deq;
    }

    /** The final quantization of a linear: codes, fp16 scales, zeros and the weight they stand for. */
    public static AwqResult quantize(float[] w, int out, int in, AwqParams p) {
        int width = p.groupWidth(in), groups = p.numGroups(in);
        float[] deq = new float[w.length], scales = new float[groups * out];
        byte[] codes = new byte[w.length];
        int[] zeros = new int[groups * out];
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int g = 0; g < groups; g++) {
                long sz = quantizeGroup(w, o * in + g * width, o * in + Math.min(in, (g + 1) * width), p, deq, codes);
                scales[g * out + o] = Float.intBitsToFloat((int) (sz >>> 32));
                zeros[g * out + o] = (int) sz;
            }
        });
        return new AwqResult(out, in, p, codes, scales, zeros, deq);
    }

    // ---- scale search --------------------------------------------------------------------------------------------

    /**
     * The block output error with these weights in place of the scaled group's linears (same order as given to
     * {@link #searchScale}): AutoAWQ's {@code _compute_loss}, the mean squared difference from the block's output
     * with the original weights.
     */
    @FunctionalInterface
    public interface BlockLoss {
        double loss(float[][] weights);
    }

    /**
     * The outcome of one group's search.
     *
     * @param scales        per input channel; the linears' columns are multiplied by them, the op before divided
     * @param ratio         the exponent chosen (k / grid), or −1 for no scaling
     * @param loss          block output MSE with Q(W·s)/s
     * @param unscaledLoss  block output MSE with plain Q(W), for reporting what the scaling gained
     */
    public record ScaleSearch(float[] scales, double ratio, double loss, double unscaledLoss) {}

    /**
     * AutoAWQ's w_mean: each weight's magnitude relative to the largest in its group, averaged per input channel over
     * all rows of all the group's linears.
     */
    public static float[] weightMean(float[][] weights, int[] outs, int in, AwqParams p) {
        double[] sum = new double[in];
        int width = p.groupWidth(in), rows = 0;
        for (int l = 0; l < weights.length; l++) {
            float[] w = weights[l];
            for (int o = 0; o < outs[l]; o++, rows++) {
                for (int g0 = 0; g0 < in; g0 += width) {
                    int end = Math.min(in, g0 + width);
                    float max = 0;
                    for (int i = g0; i < end; i++) max = Math.max(max, Math.abs(w[o * in + i]));
                    for (int i = g0; i < end; i++) sum[i] += Math.abs(w[o * in + i]) / (max + 1e-6f);
                }
            }
        }
        float[] mean = new float[in];
        for (int i = 0; i < in; i++) mean[i] = (float) (sum[i] / rows);
        return mean;
    }

    /** The candidate scales of one grid point: (x̄^r / (w̄^(1−r) + 1e-4)) ≥ 1e-4, normalized by √(max·min). */
    public static float[] candidateScales(float[] xMean, float[] wMean, double ratio) {
        int n = xMean.length;
        float[] s = new float[n];
        float max = 0, min = Float.POSITIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            s[i] = (float) Math.max(Math.pow(xMean[i], ratio) / (Math.pow(wMean[i], 1 - ratio) + 1e-4), 1e-4);
            max = Math.max(max, s[i]);
            min = Math.min(min, s[i]);
        }
        float norm = (float) Math.sqrt((double) max * min);
        for (int i = 0; i < n; i++) {
            s[i] /= norm;
            if (!Float.isFinite(s[i])) s[i] = 1; // AutoAWQ's guard against overflowing scales
        }
        return s;
    }

    /** How the search quantizes a candidate: Q(W·diag(s)) of the group's linear {@code linear} (its index). */
    @FunctionalInterface
    public interface ScaledQuantizer {
        float[] quantize(int linear, float[] scaledWeight, float[] scales);
    }

    /**
     * {@code _search_best_scale}: for r on the grid, scales s = candidateScales(x̄, w̄, r), every linear replaced by
     * Q(W·s)/s with AWQ's round-to-nearest, the block run; the s with the least output error wins (the first on ties).
     *
     * @param weights the linears that share the scaled input, [outs[l], in] each
     * @param xMean   mean |x| of each input channel over every calibration token
     * @param grid    exponents k / grid for k = 0 … grid − 1 ({@link #SCALE_GRID} as AutoAWQ, or {@link #FINE_SCALE_GRID})
     */
    public static ScaleSearch searchScale(float[][] weights, int[] outs, int in, float[] xMean, AwqParams p, int grid, BlockLoss loss) {
        return searchScale(weights, outs, in, xMean, p, grid, (l, ws, s) -> pseudoQuantize(ws, outs[l], in, p), false, loss);
    }

    /**
     * The search with the candidates quantized by {@code quantizer} — the quantizer that will quantize the scaled
     * model (GPTQ for {@code --awq-scale}), since scales that suit round-to-nearest need not suit it. With
     * {@code orNone}, no scaling (s = 1, reported as ratio −1) is a candidate too and wins ties: the search then never
     * makes the block's error on the calibration rows worse than the quantizer alone.
     */
    public static ScaleSearch searchScale(float[][] weights, int[] outs, int in, float[] xMean, AwqParams p, int grid,
                                          ScaledQuantizer quantizer, boolean orNone, BlockLoss loss) {
        float[] wMean = weightMean(weights, outs, in, p);
        float[] ones = new float[in];
        java.util.Arrays.fill(ones, 1f);
        float[][] plain = new float[weights.length][];
        for (int l = 0; l < weights.length; l++) plain[l] = quantizer.quantize(l, weights[l].clone(), ones);
        double unscaled = loss.loss(plain);
        double best = orNone ? unscaled : Double.POSITIVE_INFINITY, bestRatio = -1;
        float[] bestScales = orNone ? ones : null;
        for (int k = 0; k < grid; k++) {
            double ratio = (double) k / grid;
            float[] s = candidateScales(xMean, wMean, ratio);
            float[][] q = new float[weights.length][];
            for (int l = 0; l < weights.length; l++) q[l] = divideColumns(quantizer.quantize(l, scaleColumns(weights[l], in, s), s), in, s);
            double e = loss.loss(q);
            if (e < best) {
                best = e;
                bestRatio = ratio;
                bestScales = s;
            }
        }
        if (bestScales == null) throw new IllegalStateException("AWQ scale search: the block loss is NaN for every scale (NaN or Inf in the inputs)");
        return new ScaleSearch(bestScales, bestRatio, best, unscaled);
    }

    /** W·diag(s) for a row-major [·, in] matrix, as a new array. */
    public static float[] scaleColumns(float[] w, int in, float[] s) {
        float[] ws = new float[w.length];
        for (int r = 0; r < w.length / in; r++) for (int i = 0; i < in; i++) ws[r * in + i] = w[r * in + i] * s[i];
        return ws;
    }

    /** W·diag(s)⁻¹ for a row-major [·, in] matrix, as a new array. */
    public static float[] divideColumns(float[] w, int in, float[] s) {
        float[] r = new float[w.length];
        for (int t = 0; t < w.length / in; t++) for (int i = 0; i < in; i++) r[t * in + i] = w[t * in + i] / s[i];
        return r;
    }

    // ---- clipping ------------------------------------------------------------------------------------------------

    /** The token rows the clip search uses: every step-th of n, step = max(1, n / 512), from the first. */
    public static int clipSampleStep(long tokens) {
        return (int) Math.max(1, tokens / CLIP_SAMPLE_TOKENS);
    }

    /**
     * The clipping candidates of one group whose values span [min, max] (min ≤ 0 ≤ max) and whose largest magnitude
     * is {@code absMax}, as {lo, hi} pairs. AutoAWQ's ({@code asymmetric} false): ±absMax·(1 − k/20), k = 0 … 9.
     * qtool's ({@code asymmetric} true, for the zero-point grid, whose two ends are set apart): those, then every
     * pair (min·(1 − a/20), max·(1 − b/20)), a, b = 0 … 9 — an outlier on one side can be clipped without the other
     * side's range, and the choice is never worse than AutoAWQ's on the search's objective.
     */
    static float[][] clipCandidates(float min, float max, float absMax, boolean asymmetric) {
        int shrinks = (int) (CLIP_MAX_SHRINK * CLIP_GRID);
        float[][] c = new float[asymmetric ? shrinks + shrinks * shrinks : shrinks][];
        for (int k = 0; k < shrinks; k++) {
            float m = absMax * (1 - (float) k / CLIP_GRID);
            c[k] = new float[] {-m, m};
        }
        if (asymmetric) {
            for (int a = 0; a < shrinks; a++) {
                for (int b = 0; b < shrinks; b++) {
                    c[shrinks + a * shrinks + b] = new float[] {min * (1 - (float) a / CLIP_GRID), max * (1 - (float) b / CLIP_GRID)};
                }
            }
        }
        return c;
    }

    /**
     * {@code _compute_best_clip}: for each output row and group, the range [lo, hi] to clamp w to, among
     * {@link #clipCandidates}, that minimises the mean over sampled tokens of (x_g · (Q(clamp(w_g)) − w_g))².
     * Returns {lo, hi} per [out, groups], flattened.
     *
     * <p>That mean is dᵀ·H_g·d / tokens with d = Q(clamp(w_g)) − w_g and H_g = X_gᵀX_g, the group's block of the
     * sampled inputs' Gram matrix: each candidate then costs width² products instead of tokens × width (AutoAWQ's
     * direct form), a quarter of the work for 512 tokens and groups of 128 — the direct form is kept where the
     * sample is smaller than a group.
     *
     * @param x          sampled inputs [tokens, in] (already divided by the scale search's scales)
     * @param asymmetric search qtool's two-sided candidates (zero-point grids only; see {@link #clipCandidates})
     */
    public static float[] searchClip(float[] w, int out, int in, float[] x, int tokens, AwqParams p, boolean asymmetric) {
        int width = p.groupWidth(in), groups = p.numGroups(in);
        boolean twoSided = asymmetric && p.zeroPoint();
        float[] best = new float[2 * out * groups];
        boolean gram = tokens > width;
        double[][] h = gram ? groupGrams(x, tokens, in, width, groups) : null;
        IntStream.range(0, out).parallel().forEach(o -> {
            float[] cur = new float[in], deq = new float[in];
            double[] d = new double[width];
            float[] orgOut = gram ? null : new float[tokens];
            for (int g = 0; g < groups; g++) {
                int g0 = g * width, g1 = Math.min(in, g0 + width), n = g1 - g0, row = o * in;
                float min = 0, max = 0;
                for (int i = g0; i < g1; i++) {
                    min = Math.min(min, w[row + i]);
                    max = Math.max(max, w[row + i]);
                }
                if (!gram) for (int t = 0; t < tokens; t++) orgOut[t] = dot(x, t * in, w, row, g0, g1);
                double minErr = Double.POSITIVE_INFINITY;
                float[] bestRange = null;
                for (float[] range : clipCandidates(min, max, Math.max(-min, max), twoSided)) {
                    for (int i = g0; i < g1; i++) cur[i] = Math.min(Math.max(w[row + i], range[0]), range[1]);
                    quantizeGroup(cur, g0, g1, p, deq, null);
                    double err = 0;
                    if (gram) {
                        for (int i = 0; i < n; i++) d[i] = (double) deq[g0 + i] - w[row + g0 + i];
                        double[] hg = h[g];
                        for (int i = 0; i < n; i++) {
                            double sum = 0;
                            for (int j = 0; j < n; j++) sum += hg[i * n + j] * d[j];
                            err += d[i] * sum;
                        }
                    } else {
                        for (int t = 0; t < tokens; t++) {
                            double e = dot(x, t * in, deq, 0, g0, g1) - orgOut[t];
                            err += e * e;
                        }
                    }
                    err /= tokens;
                    if (err < minErr) {
                        minErr = err;
                        bestRange = range;
                    }
                }
                best[2 * (o * groups + g)] = bestRange == null ? min : bestRange[0];
                best[2 * (o * groups + g) + 1] = bestRange == null ? max : bestRange[1];
            }
        });
        return best;
    }

    /** H_g = X_gᵀX_g of each group's columns of x [tokens, in], row-major [n_g, n_g], in double. */
    private static double[][] groupGrams(float[] x, int tokens, int in, int width, int groups) {
        double[][] h = new double[groups][];
        IntStream.range(0, groups).parallel().forEach(g -> {
            int g0 = g * width, n = Math.min(in, g0 + width) - g0;
            double[] hg = new double[n * n];
            for (int t = 0; t < tokens; t++) {
                int r = t * in + g0;
                for (int i = 0; i < n; i++) {
                    double xi = x[r + i];
                    if (xi == 0) continue;
                    for (int j = 0; j < n; j++) hg[i * n + j] += xi * x[r + j];
                }
            }
            h[g] = hg;
        });
        return h;
    }

    /** {@code apply_clip}: clamps every group of W to its {lo, hi} from {@link #searchClip}, in place. */
    public static void applyClip(float[] w, int out, int in, float[] range, AwqParams p) {
        int width = p.groupWidth(in), groups = p.numGroups(in);
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                int k = 2 * (o * groups + i / width);
                w[o * in + i] = Math.min(Math.max(w[o * in + i], range[k]), range[k + 1]);
            }
        }
    }

    /** Σ_{i ∈ [g0, g1)} x[xOff + i] · w[wOff + i]. */
    private static float dot(float[] x, int xOff, float[] w, int wOff, int g0, int g1) {
        float s = 0;
        for (int i = g0; i < g1; i++) s += x[xOff + i] * w[wOff + i];
        return s;
    }
}
