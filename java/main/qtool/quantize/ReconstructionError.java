package qtool.quantize;

import java.lang.foreign.MemorySegment;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.load.DType;

/**
 * The relative reconstruction error of a quantized linear on its calibration inputs X, ‖WX − QX‖² / ‖WX‖² (rows of
 * X are tokens, so the products are XWᵀ), from the Gram matrix H = XᵀX that GPTQ already summed: ‖(W − Q)Xᵀ‖² =
 * tr((W − Q) H (W − Q)ᵀ), so no pass over the calibration rows is needed. The figure GPTQ papers and the issue's
 * reference comparison use per layer; H's scale (GPTQ's 2/n) cancels.
 *
 * <p>Computed on the backend in row blocks of the weight: T = D·H (one GEMM, H symmetric), then Σ T∘D as a
 * one-row product of the flattened block with itself, all in F32 with F32 sums.
 */
public final class ReconstructionError {
    /** Rows per block: about 4 Mi floats of D and of T on the device at a time. */
    private static final long BLOCK_FLOATS = 1L << 22;

    private ReconstructionError() {}

    /**
     * ‖(W − Q)X‖² / ‖WX‖² for {@code weight} [out, in] on the host (any float type), {@code quantized} [out, in] the
     * floats that replace it, {@code gram} F32 [in, in] on the backend. 0 when W X is 0.
     */
    public static double relative(Backend backend, Tensor weight, float[] quantized, Tensor gram) {
        int out = weight.rows(), in = weight.cols();
        if (quantized.length != (long) out * in) throw new IllegalArgumentException("quantized weight: " + quantized.length + " values for " + weight);
        int block = (int) Math.max(1, Math.min(out, BLOCK_FLOATS / in));
        Tensor t = backend.allocate(DType.F32, block, in);
        Tensor sums = backend.allocate(DType.F32, 1, 1);
        double error = 0, energy = 0;
        float[] one = new float[1];
        try {
            for (int r0 = 0; r0 < out; r0 += block) {
                int rows = Math.min(block, out - r0);
                float[] w = weight.rowSlice(r0, rows).toFloatArray();
                float[] d = new float[w.length];
                for (int k = 0; k < d.length; k++) d[k] = w[k] - quantized[r0 * in + k];
                energy += quadraticForm(backend, w, rows, in, gram, t, sums, one);
                error += quadraticForm(backend, d, rows, in, gram, t, sums, one);
            }
        } finally {
            backend.free(t);
            backend.free(sums);
        }
        return energy == 0 ? 0 : error / energy;
    }

    /** Σ_rows a H aᵀ for a block a [rows, in]. */
    private static double quadraticForm(Backend backend, float[] a, int rows, int in, Tensor gram, Tensor t, Tensor sums, float[] one) {
        Tensor dev = backend.upload(new Tensor(MemorySegment.ofArray(a), DType.F32, new long[] {rows, in}), DType.F32);
        try {
            Tensor ah = t.rowSlice(0, rows);
            backend.linear(ah, dev, gram, null);
            long n = (long) rows * in;
            backend.linear(sums, ah.reshape(1, n), dev.reshape(1, n), null);
            backend.copyToHost(sums, MemorySegment.ofArray(one));
            return one[0];
        } finally {
            backend.free(dev);
        }
    }
}
