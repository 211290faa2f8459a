package qtool.model;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.function.UnaryOperator;
import qtool.QtoolException;
import qtool.backend.Tensor;
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

        public Tensor[] all() {
            return new Tensor[] {inputNorm, q, k, v, o, qBias, kBias, vBias, oBias, postNorm, gate, up, down};
        }
    }

    public final Path dir;
    public final ModelConfig config;
    public final Weights weights;

    private LlamaModel(Path dir, ModelConfig config, Weights weights) {
        this.dir = dir;
        this.config = config;
        this.weights = weights;
    }

    public static LlamaModel open(Path dir) {
        ModelConfig config = ModelConfig.read(dir);
        Weights weights = Weights.open(dir);
        LlamaModel m = new LlamaModel(dir, config, weights);
        try {
            m.validate();
        } catch (RuntimeException e) {
            weights.close();
            throw e;
        }
        return m;
    }

    public static String prefix(int layer) {
        return "model.layers." + layer + ".";
    }

    public Layer layer(int i) {
        String p = prefix(i);
        return new Layer(weights.get(p + "input_layernorm.weight"),
                weights.get(p + "self_attn.q_proj.weight"), weights.get(p + "self_attn.k_proj.weight"),
                weights.get(p + "self_attn.v_proj.weight"), weights.get(p + "self_attn.o_proj.weight"),
                weights.find(p + "self_attn.q_proj.bias"), weights.find(p + "self_attn.k_proj.bias"),
                weights.find(p + "self_attn.v_proj.bias"), weights.find(p + "self_attn.o_proj.bias"),
                weights.get(p + "post_attention_layernorm.weight"),
                weights.get(p + "mlp.gate_proj.weight"), weights.get(p + "mlp.up_proj.weight"), weights.get(p + "mlp.down_proj.weight"));
    }

    public Tensor embedTokens() {
        return weights.get("model.embed_tokens.weight");
    }

    public Tensor finalNorm() {
        return weights.get("model.norm.weight");
    }

    /** lm_head, or the embedding table when the head is tied to it. */
    public Tensor lmHead() {
        Tensor head = weights.find("lm_head.weight");
        return head != null ? head : embedTokens();
    }

    public boolean headTied() {
        return weights.find("lm_head.weight") == null;
    }

    private void validate() {
        ModelConfig c = config;
        int h = c.hiddenSize();
        expect(embedTokens(), "model.embed_tokens.weight", c.vocabSize(), h);
        expect(finalNorm(), "model.norm.weight", h);
        if (!headTied()) expect(lmHead(), "lm_head.weight", c.vocabSize(), h);
        for (int i = 0; i < c.numLayers(); i++) {
            Layer l = layer(i);
            String p = prefix(i);
            expect(l.inputNorm(), p + "input_layernorm.weight", h);
            expect(l.q(), p + "self_attn.q_proj.weight", c.qDim(), h);
            expect(l.k(), p + "self_attn.k_proj.weight", c.kvDim(), h);
            expect(l.v(), p + "self_attn.v_proj.weight", c.kvDim(), h);
            expect(l.o(), p + "self_attn.o_proj.weight", h, c.qDim());
            if (l.qBias() != null) expect(l.qBias(), p + "self_attn.q_proj.bias", c.qDim());
            if (l.kBias() != null) expect(l.kBias(), p + "self_attn.k_proj.bias", c.kvDim());
            if (l.vBias() != null) expect(l.vBias(), p + "self_attn.v_proj.bias", c.kvDim());
            if (l.oBias() != null) expect(l.oBias(), p + "self_attn.o_proj.bias", h);
            expect(l.postNorm(), p + "post_attention_layernorm.weight", h);
            expect(l.gate(), p + "mlp.gate_proj.weight", c.intermediateSize(), h);
            expect(l.up(), p + "mlp.up_proj.weight", c.intermediateSize(), h);
            expect(l.down(), p + "mlp.down_proj.weight", h, c.intermediateSize());
        }
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
        weights.close();
    }
}
