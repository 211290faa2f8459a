package qtool.format.awq;

import qtool.QtoolException;

/**
 * The AWQ checkpoint layout of AutoAWQ's {@code WQLinear_GEMM} ({@code version: "gemm"}), which transformers and
 * vLLM load as AWQ, written down in one place. Each quantized linear {@code prefix} (W of HF shape [out, in],
 * group width g = group_size, or in when group_size is -1) is stored as:
 *
 * <table>
 *   <caption>Tensors of one AWQ GEMM linear</caption>
 *   <tr><th>tensor</th><th>dtype</th><th>shape</th><th>content</th></tr>
 *   <tr><td>{@code prefix.qweight}</td><td>I32</td><td>[in, out/8]</td>
 *       <td>4-bit codes q[o, i] packed along the OUTPUT dim: word (i, j) holds outputs 8j … 8j+7, the code of output
 *       8j + ORDER[k] in bits [4k, 4k+4), ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (AutoAWQ's {@code order_map}; its
 *       readers undo it with {@code AWQ_REVERSE_ORDER} = [0, 4, 1, 5, 2, 6, 3, 7]).</td></tr>
 *   <tr><td>{@code prefix.qzeros}</td><td>I32</td><td>[in/g, out/8]</td>
 *       <td>zero points z[grp, o], packed as qweight (no offset: the stored value is the zero).</td></tr>
 *   <tr><td>{@code prefix.scales}</td><td>F16</td><td>[in/g, out]</td><td>scale of each group and output</td></tr>
 *   <tr><td>{@code prefix.bias}</td><td>F16</td><td>[out]</td><td>when the linear has one</td></tr>
 * </table>
 *
 * <p>w[o, i] = scales[i / g, o] · (q[o, i] − z[i / g, o]). Without {@code zero_point} AutoAWQ's grid is symmetric
 * (q' ∈ [−8, 7]); it is stored as q = q' + 8 with every zero 8, which is what the GEMM kernels compute with.
 *
 * <p>Config: {@code config.json}'s {@code quantization_config} = {@code {quant_method: "awq", zero_point,
 * group_size, bits, version: "gemm", modules_to_not_convert}} (AutoAWQ's {@code to_transformers_dict}); and
 * {@code quant_config.json} = {@code {zero_point, q_group_size, w_bit, version: "GEMM", modules_to_not_convert}},
 * the file AutoAWQ before 0.2 wrote and read.
 *
 * <p>What the layout cannot hold: 4-bit only (AutoAWQ's GEMM packs nothing else); out must be a multiple of 8 and
 * in a multiple of g (no ragged groups: readers repeat each scale row g times). A linear of another shape is
 * quantized all the same (ragged last group) but stored as {@code prefix.weight} in fp16, on its grid, and its
 * name within the decoder layer (e.g. {@code mlp.down_proj}) listed in {@code modules_to_not_convert}: AutoAWQ,
 * transformers and vLLM all skip modules whose name contains an entry. Shapes are the same in every layer, so the
 * layer-relative name covers all of them.
 */
public final class AwqLayout {
    public static final String QWEIGHT = "qweight", QZEROS = "qzeros", SCALES = "scales", BIAS = "bias";
    public static final String QUANT_CONFIG = "quant_config.json";
    public static final int BITS = 4;
    public static final int PACK = 32 / BITS;
    /** Position k of a word holds output 8j + ORDER[k]. */
    public static final int[] ORDER = {0, 2, 4, 6, 1, 3, 5, 7};

    private AwqLayout() {}

    /** Why the GEMM layout cannot hold a linear of this shape, or null when it can. */
    public static String unpackableReason(int out, int in, int bits, int groupSize) {
        int g = groupSize == -1 ? in : groupSize;
        if (bits != BITS) return "the AWQ GEMM layout packs 4-bit codes only, not " + bits;
        if (out % PACK != 0) return out + " outputs are not a multiple of " + PACK + " (the AWQ GEMM layout packs 8 outputs a word)";
        if (in % g != 0) return in + " inputs are not a multiple of the group size " + g + " (the AWQ GEMM layout has no ragged groups)";
        return null;
    }

    /** Field k (0…7) of a packed word. */
    static int field(int word, int k) {
        return word >>> (BITS * k) & 0xF;
    }

    static void checkShape(String what, long[] shape, long rows, long cols) {
        if (shape.length != 2 || shape[0] != rows || shape[1] != cols) {
            throw new QtoolException(what + " has shape " + java.util.Arrays.toString(shape) + ", expected [" + rows + ", " + cols + "]");
        }
    }
}
