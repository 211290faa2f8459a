package qtool.quantize;

import java.util.stream.IntStream;
import qtool.QtoolException;

/**
 * EXL2 quantization of one linear layer on the CPU: ExLlamaV2 0.3.2's {@code AdaptiveGPTQ} (conversion/
 * adaptivegptq.py) with its {@code AdaptiveQuantizer} and the ext kernels it calls ({@code quantize_err},
 * {@code quantize_range}: fused_quantize_adjust + vv_mul_sub + addmm). This is the reference the CUDA version
 * ({@code Backend.exl2Quantize}) mirrors.
 *
 * <p>Work is split as ExLlamaV2 splits it, so that the expensive part is done once per linear input:
 * <ul>
 *   <li>{@link #prepare} (AdaptiveGPTQ.prepare): act-order permutation by decreasing diag(H); damping
 *       {@code max(0.12·mean(diag H), 1e-5)}, added again on each failed factorisation (10 attempts); U = the upper
 *       Cholesky factor of (H + damp·I)⁻¹ in processing order. No dead-input handling (ExLlamaV2 disabled it). The
 *       result is reused by every option of the linear and by linears sharing the input (q/k/v, gate/up), as
 *       ExLlamaV2's {@code reuse_h}.</li>
 *   <li>{@link #quantize}: for each group in storage order (decreasing bits), AdaptiveQuantizer.find_params on the
 *       group's rows as updated so far, then row by row: code = clamp(rint(w/s) + 2^(b−1)), q = fp16((code −
 *       2^(b−1))·s), err = (w − q)/U_kk, the group's later rows updated with err·U[k, ·]; after the group one product
 *       applies its errors to all later rows. The group is GPTQ's lazy block.</li>
 * </ul>
 *
 * <p>Orientation: ExLlamaV2 works on the transposed weight [in, out] (its rows are input features). qtool's API
 * takes W [out, in]; internally the weight is transposed and permuted to [in (processing order), out], so that each
 * row update runs along contiguous output columns, and {@link Exl2Tensor} documents which arrays keep that order.
 *
 * <p>H may be any positive multiple of ExLlamaV2's (Σ xᵀx / batches): the result does not depend on the scale
 * except through the 1e-5 floor on the damping.
 *
 * <p>Differences, all at the level of float rounding: H⁻¹'s factor is computed in double (ExLlamaV2: float32 on the
 * GPU); the p-grid error sums are accumulated in double in a fixed order (ExLlamaV2: float atomics, and __powf);
 * act-order ties keep index order (torch.argsort is not stable).
 */
public final class Exl2Gptq {
    /** AdaptiveGPTQ.percdamp. */
    public static final double PERCDAMP = 0.12;
    /** The damping's floor (torch.clamp(min = 1e-5)). */
    public static final double MIN_DAMP = 1e-5;
    /** Factorisations tried before "Hessian is not invertible". */
    public static final int MAX_ATTEMPTS = 10;

    /** AdaptiveQuantizer's search for the scale multiplier p: grid of P_GRID + 1 points in [MIN_P, MAX_P], |err|^NORM. */
    public static final float NORM = 3.5f;
    public static final float MIN_P = 0.70f;
    public static final float MAX_P = 1.2f;
    public static final int P_GRID = 96;

    private static final int COLUMN_CHUNK = 64;

    private Exl2Gptq() {}

    /**
     * What {@link #prepare} computes from H and every quantization of that input reuses. Backends hold it where
     * their kernels read it; close it when the last linear sharing the input is done.
     */
    public interface Factor extends AutoCloseable {
        /** Input features. */
        int in();

        /** Processing order: perm[k] = input feature of processing row k. */
        int[] perm();

        /** The absolute damping that made H factor. */
        double damp();

        /** Factorisations tried. */
        int attempts();

        @Override
        void close();
    }

    /**
     * The host form of a {@link Factor}.
     *
     * @param u [in, in] row-major, upper triangle: U with UᵀU = (H[perm][:, perm] + damp·I)⁻¹
     */
    public record Prepared(int in, int[] perm, float[] u, double damp, int attempts) implements Factor {
        @Override
        public void close() {}
    }

    /**
     * AdaptiveGPTQ.prepare (H given, not modified).
     *
     * @throws QtoolException when H + k·damp·I does not factor for k = 1..10 (ExLlamaV2: "Hessian is not invertible")
     */
    public static Prepared prepare(float[] hessian, int in) {
        if (in <= 0) throw new IllegalArgumentException("empty Hessian");
        if (hessian.length != (long) in * in) throw new IllegalArgumentException("H has " + hessian.length + " values, not " + in + "²");
        double[] diag = new double[in];
        for (int i = 0; i < in; i++) diag[i] = hessian[i * in + i];
        int[] perm = Gptq.processingOrder(diag, true);
        double damp = baseDamp(diag);
        boolean[] noDead = new boolean[in];
        for (int attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
            float[] u = Gptq.upperFactorOfInverse(hessian, in, perm, noDead, attempt * damp);
            if (u != null) return new Prepared(in, perm, u, attempt * damp, attempt);
        }
        throw notInvertible(in, damp);
    }

    /** max(PERCDAMP·mean(diag H), MIN_DAMP): the damping of the first attempt. */
    public static double baseDamp(double[] diag) {
        return Math.max(PERCDAMP * Gptq.meanDiagonal(diag), MIN_DAMP);
    }

    public static QtoolException notInvertible(int in, double damp) {
        return new QtoolException("EXL2: the Hessian (" + in + "×" + in + ") is not invertible even with " + MAX_ATTEMPTS
                + "× the damping " + damp + " (inputs not finite, or H not a sum of xᵀx?)");
    }

    /**
     * Quantizes W [out, in] (not modified) with the option {@code params}, given its input's {@link #prepare}.
     * The result's dequantized weight is what ExLlamaV2 puts back into the layer.
     */
    public static Exl2Tensor quantize(Prepared prepared, float[] weight, int out, Exl2Params params) {
        int in = prepared.in();
        if (out <= 0) throw new IllegalArgumentException("no output features");
        if (weight.length != (long) out * in) throw new IllegalArgumentException("W has " + weight.length + " values, not " + out + "×" + in);
        Exl2Params.GroupLayout layout = params.layout(in);
        int[] perm = prepared.perm();
        float[] u = prepared.u();

        float[] w = new float[in * out]; // [processing row, column], updated in place
        IntStream.range(0, in).parallel().forEach(k -> {
            int src = perm[k];
            for (int o = 0; o < out; o++) w[k * out + o] = weight[o * in + src];
        });
        byte[] codes = new byte[in * out];
        float[] quant = new float[in * out];
        int groups = layout.count();
        byte[] qscale = new byte[groups * out];
        float[] qscaleMax = new float[groups];
        int maxRows = 0;
        for (int r : layout.rows()) maxRows = Math.max(maxRows, r);
        float[] err = new float[maxRows * out];
        int chunks = (out + COLUMN_CHUNK - 1) / COLUMN_CHUNK;

        for (int g = 0; g < groups; g++) {
            int a = layout.firstRow()[g], b = a + layout.rows()[g], bits = layout.bits()[g];
            float[] scale = findParams(w, a, b, out, bits, qscale, g * out, qscaleMax, g);
            float qzero = 1 << (bits - 1), maxq = (1 << bits) - 1;
            // quantize_range's row loop; columns are independent inside a group.
            IntStream.range(0, chunks).parallel().forEach(ch -> {
                int o0 = ch * COLUMN_CHUNK, o1 = Math.min(o0 + COLUMN_CHUNK, out);
                for (int c = a; c < b; c++) {
                    float d = u[c * in + c];
                    int row = c * out, eRow = (c - a) * out;
                    for (int o = o0; o < o1; o++) {
                        float x = w[row + o];
                        float s = scale[o];
                        float code = Math.clamp((float) Math.rint(x / s) + qzero, 0f, maxq);
                        float q = Exl2Tensor.fp16((code - qzero) * s);
                        codes[row + o] = (byte) (int) code;
                        quant[row + o] = q;
                        err[eRow + o] = (x - q) / d;
                    }
                    for (int r = c + 1; r < b; r++) {
                        float coef = u[c * in + r];
                        int rRow = r * out;
                        for (int o = o0; o < o1; o++) w[rRow + o] -= coef * err[eRow + o];
                    }
                }
            });
            // weights[b:] -= hessian_inv[a:b, b:]ᵀ @ error[a:b]; every later row independently.
            int rowsInGroup = b - a;
            IntStream.range(b, in).parallel().forEach(r -> {
                int rRow = r * out;
                for (int k = 0; k < rowsInGroup; k++) {
                    float coef = u[(a + k) * in + r];
                    if (coef == 0) continue;
                    int eRow = k * out;
                    for (int o = 0; o < out; o++) w[rRow + o] -= coef * err[eRow + o];
                }
            });
        }

        float[] dequantized = new float[out * in];
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int k = 0; k < in; k++) dequantized[o * in + perm[k]] = quant[k * out + o];
        });
        return new Exl2Tensor(out, in, params, layout, perm.clone(), codes, qscale, qscaleMax, dequantized,
                prepared.damp(), prepared.attempts());
    }

    /**
     * AdaptiveQuantizer.find_params on rows [a, b) of w [rows, out]: per column, a sub-scale qscale in 1..16 relative
     * to the group's largest scale, then the multiplier p on the grid [MIN_P, MAX_P] minimising Σ|w − q|^3.5 over the
     * group (quantize_err), then the fp16 rounding of the "sanity test". Writes the group's qscale and qscaleMax and
     * returns the per-column scales the codes use (fp16 values).
     */
    static float[] findParams(float[] w, int a, int b, int out, int bits, byte[] qscaleOut, int qscaleOffset,
                              float[] qscaleMaxOut, int group) {
        float maxq = (1 << bits) - 1;
        float qzero = (maxq + 1) / 2;
        float halfMaxq = maxq / 2;
        float[] base = new float[out];
        IntStream.range(0, out).parallel().forEach(o -> {
            float m = 0;
            for (int r = a; r < b; r++) m = Math.max(m, Math.abs(w[r * out + o]));
            base[o] = (m + 1e-12f) / halfMaxq;
        });
        float qmax = 0;
        for (float v : base) qmax = Math.max(qmax, v);
        float[] tw = new float[out];
        byte[] qs = new byte[out];
        for (int o = 0; o < out; o++) {
            float tp = (float) Math.sqrt(base[o] / qmax) * 16;
            float q = Math.clamp((float) Math.rint(tp), 1f, 16f);
            qs[o] = (byte) q;
            float t = q / 16;
            tw[o] = t * t * qmax;
        }
        double[] errors = gridErrors(w, a, b, out, tw, qzero, maxq);
        int best = 0;
        for (int i = 1; i <= P_GRID; i++) if (errors[i] < errors[best]) best = i;
        float bestF = best / (float) P_GRID;
        float bestP = MAX_P * bestF + MIN_P * (1 - bestF);
        float qscaleMax = Exl2Tensor.fp16(qmax * bestP);
        qscaleMaxOut[group] = qscaleMax;
        float[] scale = new float[out];
        for (int o = 0; o < out; o++) {
            qscaleOut[qscaleOffset + o] = qs[o];
            scale[o] = Exl2Tensor.subScale(qs[o], qscaleMax);
        }
        return scale;
    }

    /** quantize_err: for each grid point p, Σ over the group of |clamp(rint(w/(s·p)), −qzero, maxq − qzero)·s·p − w|^3.5. */
    private static double[] gridErrors(float[] w, int a, int b, int out, float[] tw, float qzero, float maxq) {
        float lo = -qzero, hi = maxq - qzero;
        int chunks = (out + COLUMN_CHUNK - 1) / COLUMN_CHUNK;
        double[][] partial = new double[chunks][];
        IntStream.range(0, chunks).parallel().forEach(ch -> {
            int o0 = ch * COLUMN_CHUNK, o1 = Math.min(o0 + COLUMN_CHUNK, out);
            double[] sums = new double[P_GRID + 1];
            float[] s = new float[o1 - o0];
            for (int i = 0; i <= P_GRID; i++) {
                float pi = i / (float) P_GRID;
                float p = MIN_P * (1.0f - pi) + MAX_P * pi;
                for (int o = o0; o < o1; o++) s[o - o0] = tw[o] * p;
                double sum = 0;
                for (int r = a; r < b; r++) {
                    int row = r * out;
                    float rowSum = 0;
                    for (int o = o0; o < o1; o++) {
                        float sc = s[o - o0];
                        float x = w[row + o];
                        float e = Math.abs(Math.clamp((float) Math.rint(x / sc), lo, hi) * sc - x);
                        rowSum += e * e * e * (float) Math.sqrt(e); // |e|^3.5
                    }
                    sum += rowSum;
                }
                sums[i] = sum;
            }
            partial[ch] = sums;
        });
        double[] total = new double[P_GRID + 1];
        for (double[] p : partial) for (int i = 0; i <= P_GRID; i++) total[i] += p[i];
        return total;
    }
}
