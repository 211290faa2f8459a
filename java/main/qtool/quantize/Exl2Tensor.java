package qtool.quantize;

/**
 * One linear quantized by {@link Exl2Gptq}: everything ExLlamaV2's {@code AdaptiveGPTQ} holds after
 * {@code quantize(keep_qweight = True)}, in ExLlamaV2's orientation where it says so.
 *
 * <p>Rows are input features in processing (act-order) order: processing row k is input {@code perm[k]}. Columns
 * are output features. So, with qtool's weight W [out, in]:
 * <ul>
 *   <li>{@code codes[k * out + o]} (unsigned byte, 0..2^bits − 1) is the code of W[o, perm[k]], the bits being those
 *       of the group holding row k;</li>
 *   <li>{@code qscale[g * out + o]} (1..16) is the 4-bit sub-scale of group g, column o (stored minus one);</li>
 *   <li>{@code qscaleMax[g]} is group g's super-scale, a float holding its fp16 value;</li>
 *   <li>{@code dequantized[o * in + i]} is the weight the model uses from now on, [out, in] in ORIGINAL input
 *       order: fp16 values, equal to what ExLlamaV2's kernels rebuild from the packed tensors.</li>
 * </ul>
 * Dequantization, as ExLlamaV2's kernels (and its quantizer's "sanity test" rounding) do it in fp16:
 * {@code scale = fp16(fp16(qscale²) · fp16(qscaleMax / 256))}, {@code w = fp16((code − 2^(bits−1)) · scale)}.
 *
 * @param perm     processing order: perm[k] = input feature of row k (q_invperm is its inverse)
 * @param damp     the absolute damping added to diag(H) (after retries)
 * @param attempts factorisations tried (1 = the first damping worked)
 */
public record Exl2Tensor(int out, int in, Exl2Params params, Exl2Params.GroupLayout layout, int[] perm, byte[] codes,
                         byte[] qscale, float[] qscaleMax, float[] dequantized, double damp, int attempts) {

    public Exl2Tensor {
        int groups = layout.count();
        if (perm.length != in || codes.length != (long) in * out || qscale.length != (long) groups * out
                || qscaleMax.length != groups || dequantized.length != (long) out * in) {
            throw new IllegalArgumentException("EXL2 tensor arrays do not match " + out + "×" + in + " with " + groups + " groups");
        }
    }

    /** q_invperm: invperm[i] = processing row of input feature i. */
    public int[] invperm() {
        int[] inv = new int[in];
        for (int k = 0; k < in; k++) inv[perm[k]] = k;
        return inv;
    }

    /** Code of processing row k, output o. */
    public int code(int k, int o) {
        return codes[k * out + o] & 0xFF;
    }

    /** The fp16 scale of group g, output o, as the kernels compute it. */
    public float scale(int g, int o) {
        return subScale(qscale[g * out + o], qscaleMax[g]);
    }

    /** fp16(fp16(qscale²) · fp16(qscaleMax / 256)): ExLlamaV2's dq_scale after make_q_matrix's ·1/256. */
    public static float subScale(int qscale, float qscaleMax) {
        return fp16(fp16(qscale * qscale) * fp16(qscaleMax / 256f));
    }

    /** fp16((code − 2^(bits−1)) · scale): one weight as the kernels dequantize it. */
    public static float dequantize(int code, int bits, float scale) {
        return fp16((code - (1 << (bits - 1))) * scale);
    }

    /** Rounds to the nearest fp16 value (ties to even), as a float. The products above are exact in float. */
    public static float fp16(float v) {
        return Float.float16ToFloat(Float.floatToFloat16(v));
    }
}
