package qtool.model;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.function.UnaryOperator;
import qtool.QtoolException;
import qtool.backend.QMatrix;
import qtool.backend.Tensor;
import qtool.format.awq.AwqCheckpoint;
import qtool.format.exl2.Exl2Checkpoint;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.ModelConfig;
import qtool.load.Weights;

/**
 * A Llama-family decoder as it lies on disk: its config and its memory-mapped tensors, looked up by HF name and
 * checked against the config's shapes when opened. Running it is {@link Forward}'s job.
 */
public final class LlamaModel implements AutoCloseable {

    /** One decoder layer's tensors. Biases are null where the checkpoint has none. */
    public record Layer(Tensor inputNorm, Tensor q, Tensor k, Tensor v, Tensor o,
                        Tensor qBias, Tensor kBias, Tensor vBias, Tensor oBias,
                        Tensor postNorm, Tensor gate, Tensor up, Tensor down) {

        /** The same layer with every tensor passed through {@code f} (nulls stay null). */
        public Layer map(UnaryOperator<Tensor> f) {
            UnaryOperator<Tensor> g = t -> t == null ? null : f.apply(t);
            return new Layer(g.apply(inputNorm), g.apply(q), g.apply(k), g.apply(v), g.apply(o), g.apply(qBias), g.apply(kBias),
                    g.apply(vBias), g.apply(oBias), g.apply(postNorm), g.apply(gate), g.apply(up), g.apply(down));
        }

        /** The same layer with one linear ("self_attn.q_proj", …, "mlp.down_proj") replaced. */
        public Layer withLinear(String linear, Tensor t) {
            return switch (linear) {
                case "self_attn.q_proj" -> new Layer(inputNorm, t, k, v, o, qBias, kBias, vBias, oBias, postNorm, gate, up, down);
                case "self_attn.k_proj" -> new Layer(inputNorm, q, t, v, o, qBias, kBias, vBias, oBias, postNorm, gate, up, down);
                case "self_attn.v_proj" -> new Layer(inputNorm, q, k, t, o, qBias, kBias, vBias, oBias, postNorm, gate, up, down);
                case "self_attn.o_proj" -> new Layer(inputNorm, q, k, v, t, qBias, kBias, vBias, oBias, postNorm, gate, up, down);
                case "mlp.gate_proj" -> new Layer(inputNorm, q, k, v, o, qBias, kBias, vBias, oBias, postNorm, t, up, down);
                case "mlp.up_proj" -> new Layer(inputNorm, q, k, v, o, qBias, kBias, vBias, oBias, postNorm, gate, t, down);
                case "mlp.down_proj" -> new Layer(inputNorm, q, k, v, o, qBias, kBias, vBias, oBias, postNorm, gate, up, t);
                default -> throw new IllegalArgumentException("not a linear of a decoder layer: " + linear);
            };
        }

        /** The weight of one linear by its name within the layer. */
        public Tensor linear(String linear) {
            return switch (linear) {
                case "self_attn.q_proj" -> q;
                case "self_attn.k_proj" -> k;
                case "self_attn.v_proj" -> v;
                case "self_attn.o_proj" -> o;
                case "mlp.gate_proj" -> gate;
                case "mlp.up_proj" -> up;
                case "mlp.down_proj" -> down;
                default -> throw new IllegalArgumentException("not a linear of a decoder layer: " + linear);
            };
        }

        /** The bias of one linear, or null. */
        public Tensor bias(String linear) {
            return switch (linear) {
                case "self_attn.q_proj" -> qBias;
                case "self_attn.k_proj" -> kBias;
                case "self_attn.v_proj" -> vBias;
                case "self_attn.o_proj" -> oBias;
                default -> null;
            };
        }

        public static final java.util.List<String> LINEARS = java.util.List.of("self_attn.q_proj", "self_attn.k_proj",
                "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj");

        public Tensor[] all() {
            return new Tensor[] {inputNorm, q, k, v, o, qBias, kBias, vBias, oBias, postNorm, gate, up, down};
        }
    }

    public final Path dir;
    public final ModelConfig config;
    public final Weights weights;
    /** Non-null for a GPTQ checkpoint, whose linears are dequantized to F32 when a layer is asked for. */
    public final GptqCheckpoint gptq;
    /** Non-null for an AWQ (GEMM) checkpoint, whose linears are dequantized to F32 when a layer is asked for. */
    public final AwqCheckpoint awq;
    /** Non-null for an EXL2 directory, whose quantized linears are dequantized to F32 when asked for. */
    public final Exl2Checkpoint exl2;
    /** Host QMATRIX tensors by linear prefix, made once ({@link #layer(int, boolean)}); null: dequantized instead. */
    private final Map<String, Tensor> packedLinears = new HashMap<>();
    /** Holds the packed linears' structs and arrays until {@link #close}. */
    private final Arena packedArena = Arena.ofShared();

    private LlamaModel(Path dir, ModelConfig config, Weights weights, GptqCheckpoint gptq, AwqCheckpoint awq, Exl2Checkpoint exl2) {
        this.dir = dir;
        this.config = config;
        this.weights = weights;
        this.gptq = gptq;
        this.awq = awq;
        this.exl2 = exl2;
    }

    /**
     * An HF model directory: plain fp16/bf16/fp32 weights, a GPTQ or AWQ checkpoint (quantization_config in
     * config.json), or an EXL2 directory.
     */
    public static LlamaModel open(Path dir) {
        ModelConfig config = ModelConfig.read(dir);
        Exl2Checkpoint exl2 = Exl2Checkpoint.isExl2(dir) ? Exl2Checkpoint.open(dir) : null;
        GptqCheckpoint gptq = exl2 == null && GptqCheckpoint.isGptq(dir) ? GptqCheckpoint.open(dir) : null;
        AwqCheckpoint awq = exl2 == null && gptq == null && AwqCheckpoint.isAwq(dir) ? AwqCheckpoint.open(dir) : null;
        Weights weights = gptq != null ? gptq.weights() : awq != null ? awq.weights() : exl2 != null ? exl2.weights() : Weights.open(dir);
        LlamaModel m = new LlamaModel(dir, config, weights, gptq, awq, exl2);
        try {
            m.validate();
        } catch (RuntimeException e) {
            m.close();
            throw e;
        }
        return m;
    }

    /** A linear layer's weight [out, in]: as stored, or dequantized from GPTQ, AWQ or EXL2 tensors (host F32, made per call). */
    private Tensor linear(String prefix) {
        if (awq != null && awq.isQuantized(prefix)) {
            int[] shape = awq.shape(prefix);
            return new Tensor(MemorySegment.ofArray(awq.dequantize(prefix)), DType.F32, new long[] {shape[0], shape[1]});
        }
        if (isExl2(prefix)) {
            int out = outFeatures(prefix);
            return new Tensor(MemorySegment.ofArray(exl2.dequantize(prefix, out)), DType.F32, new long[] {out, exl2.paddedShape(prefix)[1]});
        }
        if (gptq == null || !gptq.isQuantized(prefix)) return weights.get(prefix + ".weight");
        int[] shape = gptq.shape(prefix);
        return new Tensor(MemorySegment.ofArray(gptq.dequantize(prefix)), DType.F32, new long[] {shape[0], shape[1]});
    }

    private Tensor bias(String prefix) {
        if (isExl2(prefix)) {
            float[] b = exl2.bias(prefix, outFeatures(prefix));
            return b == null ? null : new Tensor(MemorySegment.ofArray(b), DType.F32, new long[] {b.length});
        }
        return weights.find(prefix + ".bias");
    }

    private boolean isExl2(String prefix) {
        return exl2 != null && exl2.isQuantized(prefix);
    }

    /** A linear's output features by its name, from the config (EXL2 stores them padded to a multiple of 32). */
    private int outFeatures(String prefix) {
        ModelConfig c = config;
        String name = prefix.substring(prefix.lastIndexOf('.') + 1);
        return switch (name) {
            case "q_proj" -> c.qDim();
            case "k_proj", "v_proj" -> c.kvDim();
            case "gate_proj", "up_proj" -> c.intermediateSize();
            case "lm_head" -> c.vocabSize();
            default -> c.hiddenSize(); // o_proj, down_proj
        };
    }

    /** Shape of a linear without dequantizing it. */
    private long[] linearShape(String prefix) {
        if (awq != null && awq.isQuantized(prefix)) return new long[] {awq.shape(prefix)[0], awq.shape(prefix)[1]};
        if (isExl2(prefix)) {
            long[] padded = exl2.paddedShape(prefix);
            int out = outFeatures(prefix);
            return padded[0] == qtool.quantize.Exl2Params.paddedColumns(out) ? new long[] {out, padded[1]} : padded;
        }
        if (gptq == null || !gptq.isQuantized(prefix)) return weights.get(prefix + ".weight").shape();
        int[] shape = gptq.shape(prefix);
        return new long[] {shape[0], shape[1]};
    }

    public static String prefix(int layer) {
        return "model.layers." + layer + ".";
    }

    /** Layer i with every quantized linear dequantized to F32 (host memory made per call). */
    public Layer layer(int i) {
        return layer(i, false);
    }

    /**
     * Layer i. With {@code packed}, GPTQ and EXL2 linears that fit the kernels' layout are host
     * {@link qtool.load.DType#QMATRIX} tensors ({@link QMatrix}, made once and kept by the model until it closes)
     * for a backend to multiply from their codes; the rest are dequantized to F32 as without, and each such linear is
     * named once on stderr with the reason. AWQ linears are always dequantized.
     *
     * <p>When gate, up and down are all packed and down has an input order (act-order GPTQ, EXL2), the MLP's
     * intermediate features come in down's processing order: gate's and up's outputs are reordered by down's perm and
     * down drops it. The MLP computes the same function, and down reads silu(gate)·up without a gather first (one
     * kernel less per layer when decoding); gate_proj and up_proj alone then yield their outputs in that order.
     */
    public Layer layer(int i, boolean packed) {
        String p = prefix(i);
        if (packed) packMlp(p);
        return new Layer(weights.get(p + "input_layernorm.weight"),
                linear(p + "self_attn.q_proj", packed), linear(p + "self_attn.k_proj", packed), linear(p + "self_attn.v_proj", packed),
                linear(p + "self_attn.o_proj", packed),
                bias(p + "self_attn.q_proj"), bias(p + "self_attn.k_proj"), bias(p + "self_attn.v_proj"), bias(p + "self_attn.o_proj"),
                weights.get(p + "post_attention_layernorm.weight"),
                linear(p + "mlp.gate_proj", packed), linear(p + "mlp.up_proj", packed), linear(p + "mlp.down_proj", packed));
    }

    private Tensor linear(String prefix, boolean packed) {
        Tensor q = packed ? packedLinear(prefix) : null;
        return q != null ? q : linear(prefix);
    }

    /** The QMATRIX tensor of a GPTQ or EXL2 linear that fits the kernels' layout; null for any other linear. */
    private synchronized Tensor packedLinear(String prefix) {
        if (!packedLinears.containsKey(prefix)) packedLinears.put(prefix, tensor(packedMatrix(prefix)));
        return packedLinears.get(prefix);
    }

    /** Packs the MLP of layer prefix p once, down's input order moved into gate's and up's outputs (see {@link #layer(int, boolean)}). */
    private synchronized void packMlp(String p) {
        String gate = p + "mlp.gate_proj", up = p + "mlp.up_proj", down = p + "mlp.down_proj";
        if (packedLinears.containsKey(down)) return;
        QMatrix g = packedMatrix(gate), u = packedMatrix(up), d = packedMatrix(down);
        if (g != null && u != null && d != null && d.perm() != null) {
            g = g.withOutputOrder(d.perm());
            u = u.withOutputOrder(d.perm());
            d = d.withoutPerm();
        }
        packedLinears.put(gate, tensor(g));
        packedLinears.put(up, tensor(u));
        packedLinears.put(down, tensor(d));
    }

    private QMatrix packedMatrix(String prefix) {
        try {
            if (isExl2(prefix)) return QMatrix.fromExl2(exl2.read(prefix), outFeatures(prefix));
            if (gptq != null && gptq.isQuantized(prefix)) return QMatrix.fromGptq(gptq.read(prefix));
        } catch (IllegalArgumentException e) {
            System.err.println("qtool: " + prefix + " is dequantized to F32 instead of multiplied packed: " + e.getMessage());
        }
        return null;
    }

    private Tensor tensor(QMatrix m) {
        return m == null ? null : m.toTensor(packedArena);
    }

    /**
     * Hints the OS to drop a layer's mapped pages from memory once they are on the device, so that streaming a
     * model through the GPU does not leave all of it resident in host memory.
     */
    public static void release(Layer host) {
        for (Tensor t : host.all()) if (t != null && t.data().isMapped()) t.data().unload();
    }

    public Tensor embedTokens() {
        return weights.get("model.embed_tokens.weight");
    }

    public Tensor finalNorm() {
        return weights.get("model.norm.weight");
    }

    /** lm_head, or the embedding table when the head is tied to it. */
    public Tensor lmHead() {
        if (isExl2("lm_head")) return linear("lm_head");
        Tensor head = weights.find("lm_head.weight");
        return head != null ? head : embedTokens();
    }

    /** {@link #lmHead()}, or with {@code packed} an EXL2 quantized head as a QMATRIX tensor where it fits (as {@link #layer(int, boolean)}). */
    public Tensor lmHead(boolean packed) {
        Tensor q = packed && isExl2("lm_head") ? packedLinear("lm_head") : null;
        return q != null ? q : lmHead();
    }

    public boolean headTied() {
        return weights.find("lm_head.weight") == null && !isExl2("lm_head");
    }

    private void validate() {
        ModelConfig c = config;
        int h = c.hiddenSize();
        expect(embedTokens(), "model.embed_tokens.weight", c.vocabSize(), h);
        expect(finalNorm(), "model.norm.weight", h);
        if (isExl2("lm_head")) expectLinear("lm_head", c.vocabSize(), h);
        else if (!headTied()) expect(lmHead(), "lm_head.weight", c.vocabSize(), h);
        for (int i = 0; i < c.numLayers(); i++) {
            String p = prefix(i);
            expect(weights.get(p + "input_layernorm.weight"), p + "input_layernorm.weight", h);
            expect(weights.get(p + "post_attention_layernorm.weight"), p + "post_attention_layernorm.weight", h);
            expectLinear(p + "self_attn.q_proj", c.qDim(), h);
            expectLinear(p + "self_attn.k_proj", c.kvDim(), h);
            expectLinear(p + "self_attn.v_proj", c.kvDim(), h);
            expectLinear(p + "self_attn.o_proj", h, c.qDim());
            expectLinear(p + "mlp.gate_proj", c.intermediateSize(), h);
            expectLinear(p + "mlp.up_proj", c.intermediateSize(), h);
            expectLinear(p + "mlp.down_proj", h, c.intermediateSize());
        }
    }

    private void expectLinear(String prefix, long out, long in) {
        boolean quantized = gptq != null && gptq.isQuantized(prefix) || awq != null && awq.isQuantized(prefix) || isExl2(prefix);
        if (!quantized) expect(weights.get(prefix + ".weight"), prefix + ".weight", out, in);
        long[] shape = linearShape(prefix);
        if (!Arrays.equals(shape, new long[] {out, in})) {
            throw new QtoolException(dir + ": linear '" + prefix + "' has shape " + Arrays.toString(shape) + ", config.json implies "
                    + Arrays.toString(new long[] {out, in}));
        }
        Tensor b = bias(prefix);
        if (b != null) expect(b, prefix + ".bias", out);
    }

    private void expect(Tensor t, String name, long... shape) {
        if (!t.dtype().isFloat()) throw new QtoolException(dir + ": tensor '" + name + "' is " + t.dtype() + ", expected a float type");
        if (!Arrays.equals(t.shape(), shape)) {
            throw new QtoolException(dir + ": tensor '" + name + "' has shape " + Arrays.toString(t.shape()) + ", config.json implies "
                    + Arrays.toString(shape));
        }
    }

    @Override
    public void close() {
        packedArena.close();
        if (gptq != null) gptq.close();
        else if (awq != null) awq.close();
        else if (exl2 != null) exl2.close();
        else weights.close();
    }
}
