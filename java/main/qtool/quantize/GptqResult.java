package qtool.quantize;

/**
 * What GPTQ made of one linear layer. Matrices are row-major float/int arrays; columns are in the layer's ORIGINAL
 * input order whatever the act-order permutation was (as a GPTQ checkpoint stores them).
 *
 * @param out         output features (rows of W)
 * @param in          input features (columns of W)
 * @param params      the settings used
 * @param codes       [out, in] integer codes in [0, 2^bits − 1], one unsigned byte each ({@link #code} reads one)
 * @param scales      [numGroups, out] float32 scale of each group and output row
 * @param zeros       [numGroups, out] integer zero point of each group and output row
 * @param gIdx        [in] the group of each input column (GPTQ's {@code g_idx})
 * @param dequantized [out, in] the quantized weight as floats: scales[g][o] · (codes[o][i] − zeros[g][o]) with
 *                    g = gIdx[i], exactly; what the sequential pipeline feeds to the next layer
 * @param loss        gptq.py's error figure: Σ (w − q)² / Hinv_ii² / 2 over the whole layer
 * @param damp        the damping fraction actually used (larger than asked when Cholesky needed a retry)
 * @param dampRetries how many times the damping was raised before H + damp·mean(diag)·I factored (0: never)
 * @param perm        [in] the column order of processing: perm[k] is the original column quantized k-th
 *                    (identity without act-order)
 */
public record GptqResult(int out, int in, GptqParams params, byte[] codes, float[] scales, int[] zeros, int[] gIdx,
                         float[] dequantized, double loss, double damp, int dampRetries, int[] perm) {

    public int numGroups() {
        return scales.length / out;
    }

    /** The code of output row o, input column i. */
    public int code(int o, int i) {
        return codes[o * in + i] & 0xFF;
    }

    /** True when the damping had to be raised above {@code params.damp()} for the Cholesky factorisations to succeed. */
    public boolean dampRaised() {
        return dampRetries > 0;
    }

    /**
     * Rebuilds the float weight [out, in] from (codes, scales, zeros, gIdx) alone, the way a GPTQ kernel does; equals
     * {@link #dequantized} element for element.
     */
    public float[] dequantizeFromCodes() {
        float[] w = new float[out * in];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                int g = gIdx[i] * out + o;
                w[o * in + i] = Quantizer.dequantize(code(o, i), scales[g], zeros[g]);
            }
        }
        return w;
    }
}
