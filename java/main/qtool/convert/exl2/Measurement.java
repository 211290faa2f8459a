package qtool.convert.exl2;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Params;

/**
 * What quantization does to each block of a model: per decoder layer, the attention block ({@code q/k/v/o_proj})
 * and the MLP block ({@code gate/up/down_proj}), and for each row of ExLlamaV2's option grid the accuracy of the
 * block quantized that way and its total bits. {@code measurement.json} in ExLlamaV2 0.3.2's schema (measure.py),
 * so that either tool reads the other's:
 *
 * <pre>
 * {
 *     "measurement": {
 *         "model.layers.0.self_attn": [
 *             {"accuracy": 0.98, "total_bits": 1234567,
 *              "q_proj": {"group_size": {"3": 64, "2": 64}, "bits": [3, 2], "bits_prop": [0.05, 0.95], "scale_bits": 4},
 *              "k_proj": {...}, "v_proj": {...}, "o_proj": {...}},
 *             ...                                  (one entry per row of qparams_attn, in its order)
 *         ],
 *         "model.layers.0.mlp": [ {"accuracy", "total_bits", "gate_proj", "up_proj", "down_proj"}, ... ],
 *         ...
 *         "model.norm.norm": null,
 *         "lm_head.linear": null
 *     },
 *     "last_module_idx": 2·layers + 2
 * }
 * </pre>
 *
 * Keys are ExLlamaV2 module key + "." + mode; its modules are [embedding, (attention, MLP) per layer, final norm,
 * lm_head], and {@code last_module_idx} is the index of the last module measured (the embedding, 0, is never
 * measured). accuracy = max(1e-6, 1 − mean over calibration rows of ‖y_q − y‖_F / ‖y‖_F); total_bits counts every
 * linear of the block at its padded width ({@link Exl2Params#paddedColumns}).
 */
public record Measurement(List<Block> blocks, int layers) {

    public static final List<String> ATTENTION = List.of("q_proj", "k_proj", "v_proj", "o_proj");
    public static final List<String> MLP = List.of("gate_proj", "up_proj", "down_proj");

    /** One measured option of a block: the option per linear (by ExLlamaV2's short name), accuracy, bits. */
    public record Entry(double accuracy, long totalBits, Map<String, Exl2Params> options) {
        public double error() {
            return 1 - accuracy;
        }
    }

    /** A block: "model.layers.i.self_attn" or "model.layers.i.mlp", and its measured entries (grid order). */
    public record Block(String key, List<Entry> entries) {
        public boolean attention() {
            return key.endsWith(".self_attn");
        }

        public List<String> linears() {
            return attention() ? ATTENTION : MLP;
        }
    }

    public static String attentionKey(int layer) {
        return "model.layers." + layer + ".self_attn";
    }

    public static String mlpKey(int layer) {
        return "model.layers." + layer + ".mlp";
    }

    /** Block k (0-based) of a model: 2i = layer i's attention, 2i+1 its MLP. */
    public static String blockKey(int k) {
        return k % 2 == 0 ? attentionKey(k / 2) : mlpKey(k / 2);
    }

    /** HF name of a linear within its decoder layer ("self_attn.q_proj", "mlp.down_proj"). */
    public static String hfLinear(String shortName) {
        return (ATTENTION.contains(shortName) ? "self_attn." : "mlp.") + shortName;
    }

    /** True once every block of the model is measured. */
    public boolean complete() {
        return blocks.size() == 2 * layers;
    }

    // ---- measurement.json ------------------------------------------------------------------------------------------

    /** The JSON object ExLlamaV2 writes; a partial measurement's last_module_idx says how far it got. */
    public Map<String, Object> toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        for (Block b : blocks) {
            List<Object> entries = new ArrayList<>();
            for (Entry e : b.entries) {
                Map<String, Object> r = new LinkedHashMap<>();
                r.put("accuracy", e.accuracy);
                r.put("total_bits", e.totalBits);
                e.options.forEach((k, p) -> r.put(k, p.toJson()));
                entries.add(r);
            }
            m.put(b.key, entries);
        }
        if (complete()) {
            m.put("model.norm.norm", null);
            m.put("lm_head.linear", null);
        }
        Map<String, Object> root = new LinkedHashMap<>();
        root.put("measurement", m);
        root.put("last_module_idx", complete() ? 2 * layers + 2 : blocks.size());
        return root;
    }

    public void write(Path file) {
        Json.writeFile(file, toJson());
    }

    /**
     * Reads measurement.json (ExLlamaV2's or ours) and checks it against the model: every block present, each entry
     * naming the block's linears, and total_bits equal to what its options cost on this model's shapes: a
     * measurement of another model fails with the first block name or shape that differs.
     *
     * @param partial accept a measurement that stops before the last block (a job's own, being resumed)
     */
    public static Measurement read(Path file, LlamaModel model, boolean partial) {
        ModelConfig cfg = model.config;
        Map<String, Object> root = Json.readObject(file);
        Map<String, Object> m = Json.object(root.get("measurement"), file + ": \"measurement\"");
        if (!(root.get("last_module_idx") instanceof Number)) throw new QtoolException(file + ": no \"last_module_idx\" (not a measurement.json)");
        int layers = cfg.numLayers();
        for (String k : m.keySet()) {
            if (!k.equals("model.norm.norm") && !k.equals("lm_head.linear") && blockIndex(k, layers) < 0) {
                throw new QtoolException(file + ": measures \"" + k + "\", which this model (" + layers + " layers, Llama names) does not have");
            }
        }
        List<Block> blocks = new ArrayList<>();
        for (int k = 0; k < 2 * layers; k++) {
            String key = blockKey(k);
            if (!m.containsKey(key)) {
                if (partial && blocks.size() == k) break;
                throw new QtoolException(file + ": no measurement of " + key + " (measured on a model with fewer layers?)");
            }
            if (blocks.size() < k) throw new QtoolException(file + ": " + key + " measured, but " + blockKey(blocks.size()) + " is missing");
            List<Object> list = Json.array(m.get(key), file + ": " + key);
            if (list.isEmpty()) throw new QtoolException(file + ": " + key + " has no measured options");
            List<Entry> entries = new ArrayList<>();
            for (int j = 0; j < list.size(); j++) entries.add(entry(file, key, j, Json.object(list.get(j), file + ": " + key), model));
            blocks.add(new Block(key, List.copyOf(entries)));
        }
        return new Measurement(List.copyOf(blocks), layers);
    }

    private static int blockIndex(String key, int layers) {
        for (int i = 0; i < layers; i++) {
            if (key.equals(attentionKey(i))) return 2 * i;
            if (key.equals(mlpKey(i))) return 2 * i + 1;
        }
        return -1;
    }

    private static Entry entry(Path file, String key, int j, Map<String, Object> e, LlamaModel model) {
        ModelConfig cfg = model.config;
        String where = file + ": " + key + "[" + j + "]";
        if (!(e.get("accuracy") instanceof Number acc) || !(e.get("total_bits") instanceof Number bits)) {
            throw new QtoolException(where + ": needs numbers \"accuracy\" and \"total_bits\"");
        }
        boolean attention = key.endsWith(".self_attn");
        Map<String, Exl2Params> options = new LinkedHashMap<>();
        long expected = 0;
        StringBuilder shapes = new StringBuilder();
        for (String l : attention ? ATTENTION : MLP) {
            if (!(e.get(l) instanceof Map<?, ?>)) {
                throw new QtoolException(where + ": no option for " + l + (l.equals("gate_proj") ? " (a model without gate_proj?)" : ""));
            }
            Exl2Params p = Exl2Params.fromJson(Json.object(e.get(l), where), where + ": " + l);
            options.put(l, p);
            int[] shape = linearShape(cfg, l);
            expected += p.totalBits(shape[1], Exl2Params.paddedColumns(shape[0]), hasBias(model, l));
            shapes.append(shapes.isEmpty() ? "" : ", ").append(l).append(' ').append(shape[0]).append('×').append(shape[1]);
        }
        if (bits.longValue() != expected) {
            throw new QtoolException(where + ": total_bits " + bits.longValue() + " does not match its options on this model's shapes ("
                    + shapes + ": " + expected + " bits); measured on another model");
        }
        double a = acc.doubleValue();
        if (!(a > 0 && a <= 1)) throw new QtoolException(where + ": accuracy " + a + " outside (0, 1]");
        return new Entry(a, expected, options);
    }

    /** Whether the model's linears of this name carry a bias (Qwen2's q/k/v do); ExLlamaV2 counts 16 bits per value. */
    static boolean hasBias(LlamaModel model, String shortName) {
        return model.weights.find(LlamaModel.prefix(0) + hfLinear(shortName) + ".bias") != null;
    }

    /** [out, in] of a linear by short name. */
    static int[] linearShape(ModelConfig cfg, String l) {
        int h = cfg.hiddenSize();
        return switch (l) {
            case "q_proj" -> new int[] {cfg.qDim(), h};
            case "k_proj", "v_proj" -> new int[] {cfg.kvDim(), h};
            case "o_proj" -> new int[] {h, cfg.qDim()};
            case "gate_proj", "up_proj" -> new int[] {cfg.intermediateSize(), h};
            case "down_proj" -> new int[] {h, cfg.intermediateSize()};
            default -> throw new IllegalArgumentException(l);
        };
    }
}
