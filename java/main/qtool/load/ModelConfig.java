package qtool.load;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * The HF {@code config.json} of a Llama-family decoder (llama, mistral, qwen2), typed. Qwen2 differs from Llama by
 * q/k/v biases; Llama's {@code attention_bias} puts biases on all four attention projections. Which biases exist is
 * read from the checkpoint itself, so this record only keeps what shapes and arithmetic need.
 */
public record ModelConfig(
        String modelType,
        int hiddenSize,
        int intermediateSize,
        int numLayers,
        int numHeads,
        int numKvHeads,
        int headDim,
        int vocabSize,
        float rmsNormEps,
        double ropeTheta,
        RopeScaling ropeScaling,
        int maxPositionEmbeddings,
        boolean tieWordEmbeddings,
        int bosTokenId,
        int eosTokenId,
        String torchDtype) {

    public static final List<String> SUPPORTED = List.of("llama", "mistral", "qwen2");

    /** rope_scaling of config.json; type "default" when absent. */
    public record RopeScaling(String type, double factor, double lowFreqFactor, double highFreqFactor, int originalMaxPositionEmbeddings) {
        public static final RopeScaling NONE = new RopeScaling("default", 1, 1, 4, 8192);
    }

    public int kvDim() {
        return numKvHeads * headDim;
    }

    public int qDim() {
        return numHeads * headDim;
    }

    public static ModelConfig read(Path dir) {
        Path file = Files.isDirectory(dir) ? dir.resolve("config.json") : dir;
        if (!Files.isRegularFile(file)) throw new QtoolException(file + ": no such file (a model directory needs config.json)");
        return parse(Json.readObject(file), file.toString());
    }

    public static ModelConfig parse(Map<String, Object> c, String where) {
        String type = str(c, "model_type", null);
        if (type == null) {
            Object arch = c.get("architectures");
            throw new QtoolException(where + ": no model_type" + (arch != null ? " (architectures: " + arch + ")" : ""));
        }
        if (!SUPPORTED.contains(type)) {
            throw new QtoolException(where + ": unsupported architecture '" + type + "' (supported: " + String.join(", ", SUPPORTED) + ")");
        }
        int hidden = num(c, "hidden_size", where);
        int heads = num(c, "num_attention_heads", where);
        int kvHeads = c.containsKey("num_key_value_heads") && c.get("num_key_value_heads") != null ? num(c, "num_key_value_heads", where) : heads;
        int headDim = c.get("head_dim") instanceof Number n ? n.intValue() : hidden / heads;
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0) {
            throw new QtoolException(where + ": num_attention_heads " + heads + " is not a multiple of num_key_value_heads " + kvHeads);
        }
        if (headDim <= 0 || headDim % 2 != 0) throw new QtoolException(where + ": head dimension " + headDim + " must be even and positive");
        RopeScaling scaling = RopeScaling.NONE;
        if (c.get("rope_scaling") instanceof Map<?, ?> rs) {
            @SuppressWarnings("unchecked") Map<String, Object> r = (Map<String, Object>) rs;
            String rt = str(r, "rope_type", str(r, "type", "default"));
            scaling = new RopeScaling(rt, dbl(r, "factor", 1), dbl(r, "low_freq_factor", 1), dbl(r, "high_freq_factor", 4),
                    (int) dbl(r, "original_max_position_embeddings", 8192));
            if (!List.of("default", "linear", "llama3", "dynamic").contains(rt)) {
                throw new QtoolException(where + ": unsupported rope_scaling type '" + rt + "' (supported: linear, dynamic, llama3)");
            }
            // A zero or negative factor, or llama3's band with low >= high, would give infinite or NaN frequencies.
            if (!rt.equals("default") && !(scaling.factor() > 0)) {
                throw new QtoolException(where + ": rope_scaling factor must be positive, not " + scaling.factor());
            }
            if (rt.equals("llama3") && !(scaling.lowFreqFactor() > 0 && scaling.lowFreqFactor() < scaling.highFreqFactor()
                    && scaling.originalMaxPositionEmbeddings() > 0)) {
                throw new QtoolException(where + ": rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor and a positive "
                        + "original_max_position_embeddings, not " + scaling.lowFreqFactor() + ", " + scaling.highFreqFactor() + ", "
                        + scaling.originalMaxPositionEmbeddings());
            }
        }
        return new ModelConfig(type, hidden, num(c, "intermediate_size", where), num(c, "num_hidden_layers", where), heads, kvHeads,
                headDim, num(c, "vocab_size", where), (float) dbl(c, "rms_norm_eps", 1e-6), dbl(c, "rope_theta", 10000.0), scaling,
                (int) dbl(c, "max_position_embeddings", 2048), c.get("tie_word_embeddings") instanceof Boolean b ? b : false,
                (int) dbl(c, "bos_token_id", -1), firstInt(c.get("eos_token_id")), str(c, "torch_dtype", str(c, "dtype", "float16")));
    }

    /**
     * RoPE inverse frequencies, as transformers computes them in fp32, with every supported scaling folded in:
     * NTK alpha (ExLlamaV2's -ra: base × alpha^(d/(d−2))), linear scaling (positions / factor) and llama3's
     * frequency-dependent scaling.
     */
    public float[] ropeInvFreq(double ntkAlpha, double linearScale) {
        int half = headDim / 2;
        double base = ropeTheta;
        if (ntkAlpha != 1.0) base *= Math.pow(ntkAlpha, (double) headDim / (headDim - 2));
        float[] inv = new float[half];
        for (int j = 0; j < half; j++) {
            float exponent = (float) (2 * j) / (float) headDim;
            inv[j] = 1.0f / (float) Math.pow(base, exponent);
        }
        double linear = linearScale;
        if (ropeScaling.type().equals("linear")) linear *= ropeScaling.factor();
        if (ropeScaling.type().equals("llama3")) {
            double factor = ropeScaling.factor(), low = ropeScaling.lowFreqFactor(), high = ropeScaling.highFreqFactor();
            double oldLen = ropeScaling.originalMaxPositionEmbeddings();
            double lowWavelen = oldLen / low, highWavelen = oldLen / high;
            for (int j = 0; j < half; j++) {
                double wavelen = 2 * Math.PI / inv[j];
                if (wavelen > lowWavelen) {
                    inv[j] = (float) (inv[j] / factor);
                } else if (wavelen >= highWavelen) {
                    double smooth = (oldLen / wavelen - low) / (high - low);
                    inv[j] = (float) ((1 - smooth) * inv[j] / factor + smooth * inv[j]);
                }
            }
        }
        if (linear != 1.0) for (int j = 0; j < half; j++) inv[j] = (float) (inv[j] / linear);
        return inv;
    }

    private static int num(Map<String, Object> c, String key, String where) {
        if (!(c.get(key) instanceof Number n)) throw new QtoolException(where + ": missing or non-numeric '" + key + "'");
        if (n.longValue() <= 0 || n.longValue() > Integer.MAX_VALUE) throw new QtoolException(where + ": '" + key + "' out of range: " + n);
        return n.intValue();
    }

    private static double dbl(Map<String, Object> c, String key, double dflt) {
        return c.get(key) instanceof Number n ? n.doubleValue() : dflt;
    }

    private static String str(Map<String, Object> c, String key, String dflt) {
        return c.get(key) instanceof String s ? s : dflt;
    }

    private static int firstInt(Object v) {
        if (v instanceof Number n) return n.intValue();
        if (v instanceof List<?> l && !l.isEmpty() && l.get(0) instanceof Number n) return n.intValue();
        return -1;
    }
}
