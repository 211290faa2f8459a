package qtool.format.gguf;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Which ggml type each tensor of a llama model gets for a {@link LlamaFileType}, as llama.cpp's
 * {@code src/llama-quant.cpp} decides ({@code tensor_allows_quantization}, {@code llama_tensor_get_type_impl},
 * {@code tensor_type_fallback}), for the dense llama architecture:
 * <ul>
 * <li>Only 2-D tensors whose name ends in "weight" and is not a norm are quantized; the rest keep their type (F32).</li>
 * <li>The output head, and the token embedding when it is tied to it (no output.weight), get Q6_K unless the file
 *     type is Q8_0, or Q8_0 when its rows are not a multiple of the default type's block.</li>
 * <li>The mixes: attn_v gets Q3_K/Q4_K (Q2_K, by GQA ratio), Q5_K for the first two layers then Q4_K (Q3_K_M), Q5_K
 *     (Q3_K_L), Q6_K in the {@link #useMoreBits} layers (Q4_K_M, Q5_K_M), Q5_K in the first four (Q4_K_S); ffn_down
 *     likewise by layer; attn_output more bits for Q2_K and Q3_K_M/L. 80-layer GQA models (70B) lift attn_v to Q5_K.
 *     With an importance matrix the first eighth of the ffn_down layers of Q4_0/Q5_0 files take Q4_1/Q5_1.</li>
 * <li>A row length that is not a multiple of the chosen type's block falls back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0,
 *     Q5_K → Q5_1, Q6_K → Q8_0, and to F16 when even that (or a 32-block type) does not fit. llama.cpp refuses a
 *     32-block type on such rows for some versions; this always falls back to F16.</li>
 * </ul>
 * The counters of the per-layer rules advance in the order tensors are asked about, which must be llama-quantize's
 * order ({@link #llamaQuantizeOrder}): by layer, then by name.
 */
public final class LlamaQuantTypes {
    private final LlamaFileType ftype;
    private final boolean pure;
    private final boolean hasImatrix;
    private final GgmlType outputType;
    private final GgmlType embeddingType;
    private final int nGqa;
    private final boolean is70B;
    private final boolean tiedEmbeddings;
    private final int nAttentionWv;
    private final int nLayers;
    private int iAttentionWv;
    private int iFfnDown;
    private final List<Fallback> fallbacks = new ArrayList<>();

    /** A tensor whose row length the chosen type's block does not divide, and the type it got instead. */
    public record Fallback(String tensor, long columns, GgmlType wanted, GgmlType used) {}

    /**
     * @param tensorNames   every tensor of the file (to count attn_v tensors and see whether output.weight exists)
     * @param outputType    llama-quantize's --output-tensor-type, or null
     * @param embeddingType llama-quantize's --token-embedding-type, or null
     */
    public LlamaQuantTypes(LlamaFileType ftype, int nLayers, int nHead, int nHeadKv, Collection<String> tensorNames,
                           boolean hasImatrix, boolean pure, GgmlType outputType, GgmlType embeddingType) {
        this.ftype = ftype;
        this.pure = pure;
        this.hasImatrix = hasImatrix;
        this.outputType = outputType;
        this.embeddingType = embeddingType;
        this.nLayers = nLayers;
        this.nGqa = nHeadKv > 0 ? nHead / nHeadKv : 1;
        this.is70B = nLayers == 80 && nHead != nHeadKv;
        this.tiedEmbeddings = !tensorNames.contains("output.weight");
        int wv = 0;
        for (String n : tensorNames) if (n.contains("attn_v.weight") || n.contains("attn_qkv.weight")) wv++;
        this.nAttentionWv = wv;
    }

    /** llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between. */
    static boolean useMoreBits(int iLayer, int nLayers) {
        return iLayer < nLayers / 8 || iLayer >= 7 * nLayers / 8 || (iLayer - nLayers / 8) % 3 == 2;
    }

    /** Whether llama.cpp quantizes this tensor at all. */
    public static boolean allowsQuantization(String name, int nDims) {
        return nDims >= 2 && name.endsWith("weight") && !name.contains("_norm.weight");
    }

    /**
     * The type of the next tensor, in llama-quantize's order. {@code sourceType}: the type it has unquantized (F32 for
     * norms; what convert_hf_to_gguf.py writes).
     */
    public GgmlType typeOf(String name, long[] dims, GgmlType sourceType) {
        if (!allowsQuantization(name, dims.length)) return sourceType;
        boolean embd = name.equals("token_embd.weight");
        boolean output = name.equals("output.weight");
        if (embeddingType != null && embd) return fallback(name, dims[0], embeddingType);
        if (outputType != null && output) return fallback(name, dims[0], outputType);
        GgmlType t = ftype.defaultType;
        if (!t.isQuantized()) return t;
        if (!pure) t = mix(name, dims[0], t, embd, output);
        return fallback(name, dims[0], t);
    }

    /** The fallbacks taken so far. */
    public List<Fallback> fallbacks() {
        return List.copyOf(fallbacks);
    }

    private GgmlType mix(String name, long nx, GgmlType t, boolean embd, boolean output) {
        LlamaFileType f = ftype;
        if (output || (tiedEmbeddings && embd)) {
            if (outputType != null) return outputType;
            if (nx % t.blockSize != 0) return GgmlType.Q8_0;
            return t != GgmlType.Q8_0 ? GgmlType.Q6_K : t;
        }
        if (embd) return t;
        if (name.contains("attn_v.weight") || name.contains("attn_qkv.weight")) {
            if (f == LlamaFileType.Q2_K) t = nGqa >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K;
            else if (f == LlamaFileType.Q2_K_S && nGqa >= 4) t = GgmlType.Q4_K;
            else if (f == LlamaFileType.Q3_K_M) t = iAttentionWv < 2 ? GgmlType.Q5_K : GgmlType.Q4_K;
            else if (f == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
            else if ((f == LlamaFileType.Q4_K_M || f == LlamaFileType.Q5_K_M) && useMoreBits(iAttentionWv, nAttentionWv)) t = GgmlType.Q6_K;
            else if (f == LlamaFileType.Q4_K_S && iAttentionWv < 4) t = GgmlType.Q5_K;
            if (is70B && (t == GgmlType.Q3_K || t == GgmlType.Q4_K)) t = GgmlType.Q5_K;
            iAttentionWv++;
            return t;
        }
        if (name.contains("ffn_down")) {
            int i = iFfnDown++, n = nLayers;
            if (f == LlamaFileType.Q2_K) t = GgmlType.Q3_K;
            else if (f == LlamaFileType.Q2_K_S) { if (i < n / 8) t = GgmlType.Q4_K; }
            else if (f == LlamaFileType.Q3_K_M) t = i < n / 16 ? GgmlType.Q5_K : GgmlType.Q4_K;
            else if (f == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
            else if (f == LlamaFileType.Q4_K_M) { if (useMoreBits(i, n)) t = GgmlType.Q6_K; }
            else if (f == LlamaFileType.Q5_K_M && useMoreBits(i, n)) t = GgmlType.Q6_K;
            else if (f == LlamaFileType.Q4_K_S && i < n / 8) t = GgmlType.Q5_K;
            else if ((f == LlamaFileType.Q4_0 || f == LlamaFileType.Q5_0) && hasImatrix && i < n / 8) {
                // llama.cpp guards the first ffn_down layers of imatrix Q4_0/Q5_0 files
                t = f == LlamaFileType.Q4_0 ? GgmlType.Q4_1 : GgmlType.Q5_1;
            }
            return t;
        }
        if (name.contains("attn_output.weight")) {
            if (f == LlamaFileType.Q2_K) t = GgmlType.Q3_K;
            else if (f == LlamaFileType.Q3_K_M) t = GgmlType.Q4_K;
            else if (f == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
        }
        return t;
    }

    private GgmlType fallback(String name, long nx, GgmlType t) {
        if (nx % t.blockSize == 0) return t;
        GgmlType r = switch (t) {
            case Q2_K, Q3_K -> GgmlType.Q4_0;
            case Q4_K -> GgmlType.Q5_0;
            case Q5_K -> GgmlType.Q5_1;
            case Q6_K -> GgmlType.Q8_0;
            default -> GgmlType.F16;
        };
        if (nx % r.blockSize != 0) r = GgmlType.F16;
        fallbacks.add(new Fallback(name, nx, t, r));
        return r;
    }

    /** Whether the file type (with this mix) quantizes some tensor to Q2_K that llama.cpp wants an imatrix for. */
    public boolean requiresImatrix(String name, GgmlType type) {
        return type == GgmlType.Q2_K && ftype == LlamaFileType.Q2_K_S
                && !name.equals("token_embd.weight") && !name.equals("output.weight");
    }

    private static final Pattern LAYER = Pattern.compile("^blk\\.(\\d+)\\.");

    /** llama-quantize's tensor order (llama_model_loader's weight_name_comparer): layer number (none first), then name. */
    public static Comparator<String> llamaQuantizeOrder() {
        return Comparator.comparingInt(LlamaQuantTypes::layerOf).thenComparing(Comparator.naturalOrder());
    }

    static int layerOf(String name) {
        Matcher m = LAYER.matcher(name);
        return m.find() ? Integer.parseInt(m.group(1)) : -1;
    }
}
