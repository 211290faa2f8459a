package qtool.quantize;

import java.util.Arrays;
import java.util.Comparator;
import java.util.stream.IntStream;
import qtool.QtoolException;

/**
 * GPTQ (Frantar et al., 2022) for one linear layer, on the CPU, following IST-DASLab/gptq's {@code fasterquant}
 * step for step; AutoGPTQ's additions (static groups, g_idx, returned scales and zeros) follow its {@code gptq.py}.
 * This is the reference implementation the CUDA version mirrors.
 *
 * <p>Inputs: W [out, in] row-major float (HF orientation), H [in, in] = 2/n·Σ xᵀx from {@link #accumulateHessian}.
 * Then, as gptq.py:
 * <ol>
 *   <li>without groups, each row's grid comes from the whole original row (before dead columns are zeroed);</li>
 *   <li>dead inputs (H_ii = 0) get H_ii = 1 and a zero weight column;</li>
 *   <li>static groups: every group's grid from the original (unpermuted) weights, up front;</li>
 *   <li>act-order: columns sorted by decreasing diag(H);</li>
 *   <li>H += damp·mean(diag H)·I; U = upper Cholesky factor of H⁻¹;</li>
 *   <li>per block of {@code blockSize} columns: quantize column i, err = (w − q)/U_ii, subtract err·U[i, i+1:] from
 *       the block's later columns; after the block one product applies the block's errors to all later columns;</li>
 *   <li>with groups (not static), a group's grid is computed when its first column comes up, from the weights as
 *       they are then.</li>
 * </ol>
 * Differences on purpose: H⁻¹'s factor is computed in double (gptq.py: float32), which only makes it more accurate;
 * a failed Cholesky raises the damping ×10 and retries instead of failing (reported in the result); act-order ties
 * keep index order (torch.argsort(descending=True) is not stable, so torch may order exact ties differently; ties
 * in practice are dead columns, whose order does not change any weight).
 *
 * <p>Rows of W are independent given U (every row uses the same U and has its own grids), so the work is split
 * into tiles of rows, one thread each; within a tile the lazy block update runs over column chunks so that U's
 * block rows are reused by every row of the tile from cache.
 */
public final class Gptq {
    /** Damping is raised ×10 per failed factorisation, up to this fraction of the mean diagonal. */
    public static final double MAX_DAMP = 1.0;
    private static final int TILE_ROWS = 16;
    private static final int CHUNK = 512;

    private Gptq() {}

    /**
     * Adds a batch of inputs to a Hessian as gptq.py's {@code add_batch}: H ← H·n/(n + m) + (2/(n + m))·XᵀX with n =
     * {@code seenSoFar} samples before and m = {@code rows} samples in the batch (every row of X counts as one).
     * Returns n + m, to pass as {@code seenSoFar} next time.
     *
     * @param h [in, in] running Hessian, updated in place (start from zeros)
     * @param x [rows, in] layer inputs, one token per row
     */
    public static long accumulateHessian(float[] h, float[] x, int rows, int in, long seenSoFar) {
        return accumulateHessian(h, x, rows, in, seenSoFar, rows);
    }

    /**
     * As {@link #accumulateHessian(float[], float[], int, int, long)} with the batch counting as {@code samples}
     * samples. gptq.py counts sequences ({@code inp.shape[0]} of a [batch, seq, hidden] input), not tokens: pass the
     * number of sequences to reproduce its H and its loss figure. The GPTQ result does not depend on this scale (the
     * damping is relative and U_ii cancels in the update); only the loss does.
     */
    public static long accumulateHessian(float[] h, float[] x, int rows, int in, long seenSoFar, long samples) {
        if (h.length != (long) in * in) throw new IllegalArgumentException("H has " + h.length + " values, not " + in + "²");
        if (x.length < (long) rows * in) throw new IllegalArgumentException("X has " + x.length + " values, not " + rows + "×" + in);
        if (samples <= 0) throw new IllegalArgumentException("samples must be positive: " + samples);
        long total = seenSoFar + samples;
        float decay = (float) ((double) seenSoFar / total);
        float scale = (float) Math.sqrt(2.0 / total);
        IntStream.range(0, in).parallel().forEach(i -> {
            for (int j = 0; j < in; j++) h[i * in + j] *= decay;
        });
        float[] xs = new float[rows * in];
        for (int k = 0; k < xs.length; k++) xs[k] = scale * x[k];
        // Upper triangle by tiles of rows, mirrored: element (i, j) belongs to the tile of min(i, j), so tiles
        // running in parallel never write the same element.
        int tiles = (in + TILE_ROWS - 1) / TILE_ROWS;
        IntStream.range(0, tiles).parallel().forEach(tile -> {
            int i0 = tile * TILE_ROWS, i1 = Math.min(i0 + TILE_ROWS, in);
            float[] acc = new float[(i1 - i0) * in];
            for (int t = 0; t < rows; t++) {
                int xRow = t * in;
                for (int i = i0; i < i1; i++) {
                    float a = xs[xRow + i];
                    if (a == 0) continue;
                    int accRow = (i - i0) * in;
                    for (int j = i; j < in; j++) acc[accRow + j] += a * xs[xRow + j];
                }
            }
            for (int i = i0; i < i1; i++) {
                int accRow = (i - i0) * in;
                h[i * in + i] += acc[accRow + i];
                for (int j = i + 1; j < in; j++) {
                    h[i * in + j] += acc[accRow + j];
                    h[j * in + i] += acc[accRow + j];
                }
            }
        });
        return total;
    }

    /**
     * Quantizes W [out, in] given H [in, in]. Neither array is modified.
     *
     * @throws QtoolException when H + damp·mean(diag)·I does not factor even at damp {@link #MAX_DAMP} (H not
     *                        positive semi-definite, or not finite)
     */
    public static GptqResult quantize(float[] w, int out, int in, float[] h, GptqParams p) {
        if (out <= 0 || in <= 0) throw new IllegalArgumentException("empty layer: " + out + "×" + in);
        if (w.length != (long) out * in) throw new IllegalArgumentException("W has " + w.length + " values, not " + out + "×" + in);
        if (h.length != (long) in * in) throw new IllegalArgumentException("H has " + h.length + " values, not " + in + "²");
        Quantizer quantizer = Quantizer.of(p);
        int g = p.groupSize();
        int numGroups = p.numGroups(in);
        float[] scales = new float[numGroups * out];
        int[] zeros = new int[numGroups * out];
        float[] wk = w.clone();

        // Without groups gptq.py's grid comes from the row as given, before dead columns are zeroed.
        if (g == -1) {
            IntStream.range(0, out).parallel().forEach(o -> {
                Quantizer.Grid grid = quantizer.findParams(wk, o * in, o * in + in);
                scales[o] = grid.scale();
                zeros[o] = (int) grid.zero();
            });
        }

        float[] diagH = new float[in];
        for (int i = 0; i < in; i++) diagH[i] = h[i * in + i];
        boolean[] dead = new boolean[in];
        for (int i = 0; i < in; i++) dead[i] = diagH[i] == 0;
        double[] diag = effectiveDiagonal(diagH);
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) if (dead[i]) wk[o * in + i] = 0;
        }

        float[] staticScale = null, staticZero = null;
        if (p.staticGroups()) {
            float[] ss = staticScale = new float[numGroups * out];
            float[] sz = staticZero = new float[numGroups * out];
            IntStream.range(0, out).parallel().forEach(o -> {
                for (int k = 0; k < numGroups; k++) {
                    Quantizer.Grid grid = quantizer.findParams(wk, o * in + k * g, o * in + Math.min((k + 1) * g, in));
                    ss[k * out + o] = grid.scale();
                    sz[k * out + o] = grid.zero();
                    scales[k * out + o] = grid.scale();
                    zeros[k * out + o] = (int) grid.zero();
                }
            });
        }

        int[] perm = processingOrder(diag, p.actOrder());

        double meanDiag = meanDiagonal(diag);
        double damp = p.damp();
        int retries = 0;
        float[] u;
        while (true) {
            u = upperFactorOfInverse(h, in, perm, dead, damp * meanDiag);
            if (u != null) break;
            damp = raisedDamp(damp, in, meanDiag);
            retries++;
        }

        float[] wp = new float[out * in]; // W in processing order; each column becomes its quantized value
        int[] order = perm;
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int k = 0; k < in; k++) wp[o * in + k] = wk[o * in + order[k]];
        });

        byte[] codes = new byte[out * in];
        int tileRows = Math.max(1, Math.min(TILE_ROWS, out / (4 * Runtime.getRuntime().availableProcessors())));
        int tiles = (out + tileRows - 1) / tileRows;
        double[] tileLoss = new double[tiles];
        float[] uf = u, ss = staticScale, sz = staticZero;
        IntStream.range(0, tiles).parallel().forEach(tile -> {
            int r0 = tile * tileRows, r1 = Math.min(r0 + tileRows, out);
            tileLoss[tile] = quantizeRows(r0, r1, wp, uf, in, out, p, quantizer, order, ss, sz, scales, zeros, codes);
        });
        double loss = 0;
        for (double l : tileLoss) loss += l;

        float[] dequantized = new float[out * in];
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int k = 0; k < in; k++) dequantized[o * in + order[k]] = wp[o * in + k];
        });

        return new GptqResult(out, in, p, codes, scales, zeros, groupIndex(perm, p), dequantized, loss, damp, retries, perm);
    }

    // ---- the bookkeeping every implementation shares (CudaBackend.gptq calls these too) ----------------------------

    /** diag(H) as GPTQ uses it, in double: dead inputs (H_ii = 0) count as 1. */
    public static double[] effectiveDiagonal(float[] diagH) {
        double[] diag = new double[diagH.length];
        for (int i = 0; i < diag.length; i++) diag[i] = diagH[i] == 0 ? 1 : diagH[i];
        return diag;
    }

    /**
     * The processing order: the identity, or with act-order the columns by decreasing (effective) diagonal; the sort
     * is stable, so ties keep index order.
     */
    public static int[] processingOrder(double[] diag, boolean actOrder) {
        int n = diag.length;
        if (!actOrder) return IntStream.range(0, n).toArray();
        return IntStream.range(0, n).boxed()
                .sorted(Comparator.comparingDouble((Integer i) -> diag[i]).reversed()) // stable: ties keep index order
                .mapToInt(Integer::intValue).toArray();
    }

    /** The mean of the effective diagonal, which the damping is a fraction of. */
    public static double meanDiagonal(double[] diag) {
        double meanDiag = 0;
        for (double d : diag) meanDiag += d;
        return meanDiag / diag.length;
    }

    /**
     * The damping to try after a failed factorisation at {@code damp}: ×10 (0 becomes the default 0.01).
     *
     * @throws QtoolException when that would pass {@link #MAX_DAMP}
     */
    public static double raisedDamp(double damp, int in, double meanDiag) {
        double next = damp == 0 ? GptqParams.DEFAULT_DAMP : damp * 10;
        if (next > MAX_DAMP * (1 + 1e-9)) {
            throw new QtoolException("GPTQ: the Hessian (" + in + "×" + in + ") is not positive definite even with damp "
                    + damp + " of its mean diagonal " + meanDiag + " (inputs not finite, or H not a sum of xᵀx?)");
        }
        return next;
    }

    /**
     * GPTQ's g_idx: dynamic groups with act-order follow the processing order (g_idx = position // g, as AutoGPTQ);
     * static groups and no act-order follow the original order.
     */
    public static int[] groupIndex(int[] perm, GptqParams p) {
        int in = perm.length;
        int[] invperm = new int[in];
        for (int k = 0; k < in; k++) invperm[perm[k]] = k;
        int width = p.groupWidth(in);
        int[] gIdx = new int[in];
        for (int i = 0; i < in; i++) gIdx[i] = (p.actOrder() && !p.staticGroups() ? invperm[i] : i) / width;
        return gIdx;
    }

    /**
     * The upper Cholesky factor U of (H' + damping·I)⁻¹ in processing order, as float [in, in] (upper triangle), where
     * H' is H permuted with dead diagonals set to 1; null when it does not factor. gptq.py computes
     * cholesky → cholesky_inverse → cholesky(upper); here one factorisation and one triangular inverse give the
     * same U: with J the order reversal, A = J·H·J = RᵀR gives H⁻¹ = VᵀV for V = J·R⁻ᵀ·J, upper triangular with a
     * positive diagonal, hence the factor.
     */
    static float[] upperFactorOfInverse(float[] h, int n, int[] perm, boolean[] dead, double dampAbs) {
        double[] a = new double[n * n];
        // A[i][j] (j >= i) = H'[perm[n-1-i]][perm[n-1-j]]: H's lower triangle, as torch.linalg.cholesky reads it.
        IntStream.range(0, n).parallel().forEach(i -> {
            int ra = perm[n - 1 - i];
            for (int j = i; j < n; j++) a[i * n + j] = h[ra * n + perm[n - 1 - j]];
            a[i * n + i] = (dead[ra] ? 1 : h[ra * n + ra]) + dampAbs;
        });
        if (!Cholesky.upperInPlace(a, n) || !Cholesky.invertUpperInPlace(a, n)) return null;
        float[] u = new float[n * n];
        IntStream.range(0, n).parallel().forEach(i -> {
            for (int j = i; j < n; j++) u[i * n + j] = (float) a[(n - 1 - j) * n + (n - 1 - i)];
        });
        return u;
    }

    /** The column loop of fasterquant for rows [r0, r1) of the permuted weights; returns their share of the loss. */
    private static double quantizeRows(int r0, int r1, float[] wp, float[] u, int in, int out, GptqParams p,
                                       Quantizer quantizer, int[] perm, float[] staticScale, float[] staticZero,
                                       float[] scales, int[] zeros, byte[] codes) {
        int rows = r1 - r0;
        int g = p.groupSize();
        int bs = p.blockSize();
        int maxq = quantizer.maxq();
        float[] scale = new float[rows], zero = new float[rows];
        if (g == -1) {
            for (int t = 0; t < rows; t++) {
                scale[t] = scales[r0 + t];
                zero[t] = zeros[r0 + t];
            }
        }
        float[] err = new float[rows * bs];
        float[] blockStart = new float[rows * bs];
        float[] groupValues = g == -1 ? null : new float[g];
        float[] sum = new float[CHUNK];
        double loss = 0;
        for (int i1 = 0; i1 < in; i1 += bs) {
            int i2 = Math.min(i1 + bs, in), count = i2 - i1;
            for (int t = 0; t < rows; t++) System.arraycopy(wp, (r0 + t) * in + i1, blockStart, t * bs, count);
            for (int i = i1; i < i2; i++) {
                if (g != -1) {
                    if (staticScale != null) {
                        int k = perm[i] / g;
                        for (int t = 0; t < rows; t++) {
                            scale[t] = staticScale[k * out + r0 + t];
                            zero[t] = staticZero[k * out + r0 + t];
                        }
                    } else if (i % g == 0) {
                        // gptq.py reads W[:, i:i+g] here, not the block copy W1: columns of the current block are
                        // seen as they were at the block's start, without this block's updates so far.
                        int end = Math.min(i + g, in);
                        for (int t = 0; t < rows; t++) {
                            int base = (r0 + t) * in;
                            for (int c = i; c < end; c++) {
                                groupValues[c - i] = c < i2 ? blockStart[t * bs + c - i1] : wp[base + c];
                            }
                            Quantizer.Grid grid = quantizer.findParams(groupValues, 0, end - i);
                            scale[t] = grid.scale();
                            zero[t] = grid.zero();
                            scales[(i / g) * out + r0 + t] = grid.scale();
                            zeros[(i / g) * out + r0 + t] = (int) grid.zero();
                        }
                    }
                }
                int uRow = i * in;
                float d = u[uRow + i];
                for (int t = 0; t < rows; t++) {
                    int base = (r0 + t) * in;
                    float wv = wp[base + i];
                    int c = Quantizer.code(wv, scale[t], zero[t], maxq);
                    float q = Quantizer.dequantize(c, scale[t], zero[t]);
                    codes[base + perm[i]] = (byte) c;
                    wp[base + i] = q;
                    float diff = wv - q;
                    loss += diff * diff / (d * d) / 2;
                    float e = diff / d;
                    err[t * bs + i - i1] = e;
                    if (e == 0) continue;
                    for (int j = i + 1; j < i2; j++) wp[base + j] -= e * u[uRow + j];
                }
            }
            // W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:], a chunk of columns at a time.
            for (int c0 = i2; c0 < in; c0 += CHUNK) {
                int len = Math.min(CHUNK, in - c0);
                for (int t = 0; t < rows; t++) {
                    Arrays.fill(sum, 0, len, 0f);
                    int k = 0;
                    for (; k + 4 <= count; k += 4) { // four rows of U per pass over the sum
                        int e0 = t * bs + k;
                        float f0 = err[e0], f1 = err[e0 + 1], f2 = err[e0 + 2], f3 = err[e0 + 3];
                        int u0 = (i1 + k) * in + c0, u1 = u0 + in, u2 = u1 + in, u3 = u2 + in;
                        for (int c = 0; c < len; c++) sum[c] += f0 * u[u0 + c] + f1 * u[u1 + c] + f2 * u[u2 + c] + f3 * u[u3 + c];
                    }
                    for (; k < count; k++) {
                        float e = err[t * bs + k];
                        int uOff = (i1 + k) * in + c0;
                        for (int c = 0; c < len; c++) sum[c] += e * u[uOff + c];
                    }
                    int base = (r0 + t) * in + c0;
                    for (int c = 0; c < len; c++) wp[base + c] -= sum[c];
                }
            }
        }
        return loss;
    }
}
