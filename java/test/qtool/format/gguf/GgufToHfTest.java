package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Backends;
import qtool.backend.Tensor;
import qtool.evaluate.Sampler;
import qtool.format.gguf.GgufTestFiles.TensorSpec;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.load.Weights;
import qtool.model.Forward;
import qtool.model.LlamaModel;

class GgufToHfTest {
    @TempDir
    Path dir;

    @Test
    void mapsLlamaCppNamesToTransformers() {
        assertEquals("model.embed_tokens.weight", GgufToHf.hfName("token_embd.weight"));
        assertEquals("model.layers.12.self_attn.q_proj.weight", GgufToHf.hfName("blk.12.attn_q.weight"));
        assertEquals("model.layers.0.self_attn.k_proj.bias", GgufToHf.hfName("blk.0.attn_k.bias"));
        assertEquals("model.layers.3.post_attention_layernorm.weight", GgufToHf.hfName("blk.3.ffn_norm.weight"));
        assertEquals("model.layers.3.mlp.down_proj.weight", GgufToHf.hfName("blk.3.ffn_down.weight"));
        assertEquals("model.norm.weight", GgufToHf.hfName("output_norm.weight"));
        assertEquals("lm_head.weight", GgufToHf.hfName("output.weight"));
        assertNull(GgufToHf.hfName("rope_freqs.weight"));
        assertNull(GgufToHf.hfName("blk.0.ffn_gate_exps.weight"));
    }

    /** convert_hf_to_gguf.py's permute: reshape(n_head, 2, hd/2, in).swapaxes(1, 2); GGUF row = h*hd + 2b + a. */
    @Test
    void unpermuteInvertsTheConverter() {
        for (int heads : new int[] {1, 3, 9}) {
            for (int hd : new int[] {2, 8, 64}) {
                int rows = heads * hd, half = hd / 2;
                int[] hfRowAtGgufRow = new int[rows];
                for (int h = 0; h < heads; h++) {
                    for (int a = 0; a < 2; a++) {
                        for (int b = 0; b < half; b++) hfRowAtGgufRow[h * hd + 2 * b + a] = h * hd + a * half + b;
                    }
                }
                for (int r = 0; r < rows; r++) assertEquals(r, hfRowAtGgufRow[(int) GgufToHf.ggufRowOf(r, hd)]);
            }
        }
    }

    @Test
    void importsSmolLm2AsTransformersHasIt() throws IOException {
        Path gguf = GgufTestFiles.requireShared("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        Path hf = dir.resolve("smol");
        GgufToHf.convert(gguf, hf, DType.F16, 0, null);

        Map<String, Object> expected = Json.readObject(gguf.resolveSibling("config.json"));
        Map<String, Object> config = Json.readObject(hf.resolve("config.json"));
        for (var e : expected.entrySet()) assertJsonEquals(e.getValue(), config.get(e.getKey()), e.getKey());
        assertEquals(64L, config.get("head_dim"));
        Map<String, Object> expectedTok = Json.readObject(gguf.resolveSibling("tokenizer_config.json"));
        Map<String, Object> tok = Json.readObject(hf.resolve("tokenizer_config.json"));
        for (var e : expectedTok.entrySet()) assertJsonEquals(e.getValue(), tok.get(e.getKey()), e.getKey());
        ModelConfig mc = ModelConfig.read(hf);
        assertTrue(mc.tieWordEmbeddings());
        try (Weights w = Weights.open(hf)) {
            assertEquals(272, w.all().size());
            Tensor emb = w.get("model.embed_tokens.weight");
            assertEquals(DType.F16, emb.dtype());
            assertArrayEquals(new long[] {49152, 576}, emb.shape());
            assertArrayEquals(new long[] {192, 576}, w.get("model.layers.29.self_attn.k_proj.weight").shape());
            assertArrayEquals(new long[] {576, 1536}, w.get("model.layers.0.mlp.down_proj.weight").shape());
            assertFalse(w.has("lm_head.weight"));
        }

        // reference.json: greedy ids of transformers (fp32) on this GGUF dequantized to fp16 with q/k un-permuted
        Map<String, Object> ref = Json.object(Json.readObject(gguf.resolveSibling("reference.json")).get("greedy"), "greedy");
        try (LlamaModel m = LlamaModel.open(hf); Backend b = Backends.open("cpu", new java.io.PrintStream(java.io.OutputStream.nullOutputStream()))) {
            for (var e : ref.entrySet()) {
                Map<String, Object> g = Json.object(e.getValue(), e.getKey());
                int[] prompt = Json.array(g.get("prompt_ids"), "prompt_ids").stream().mapToInt(o -> ((Number) o).intValue()).toArray();
                List<Object> ids = Json.array(g.get("ids"), "ids");
                int n = Math.min(12, ids.size());
                List<Integer> expectedIds = new ArrayList<>(), got = new ArrayList<>();
                for (int i = 0; i < n; i++) expectedIds.add(((Number) ids.get(i)).intValue());
                try (Forward f = new Forward(m, b, DType.F32, 1, prompt.length + n, false, true, 1.0, 1.0)) {
                    f.forward(prompt, 1, prompt.length, 0);
                    int next = Sampler.argmax(f.logits(prompt.length - 1));
                    for (int pos = prompt.length; got.size() < n; pos++) {
                        got.add(next);
                        f.forward(new int[] {next}, 1, 1, pos);
                        next = Sampler.argmax(f.logits(0));
                    }
                }
                assertEquals(expectedIds, got, "greedy continuation of " + e.getKey());
            }
        }
    }

    private static void assertJsonEquals(Object expected, Object actual, String key) {
        if (expected instanceof Number a && actual instanceof Number b) {
            assertEquals(a.doubleValue(), b.doubleValue(), key);
        } else {
            assertEquals(expected, actual, key);
        }
    }

    @Test
    void tinyLlamaRoundTripsWeightsExactly() throws IOException {
        Path gguf = dir.resolve("tiny.gguf");
        GgufTestFiles.writeTinyLlama(gguf, GgmlType.F32, 11);
        Path hf = dir.resolve("tiny-hf");
        GgufToHf.convert(gguf, hf, DType.F32, 0, null);
        Map<String, Object> config = Json.readObject(hf.resolve("config.json"));
        assertEquals(false, config.get("tie_word_embeddings"));
        assertEquals("float32", config.get("torch_dtype"));
        try (Weights w = Weights.open(hf)) {
            for (TensorSpec t : GgufTestFiles.TINY_LLAMA) {
                float[] x = GgufTestFiles.weights(t, 11);
                Tensor hfT = w.get(GgufToHf.hfName(t.name()));
                float[] y = hfT.toFloatArray();
                int rl = (int) t.dims()[0];
                boolean permuted = t.name().contains("attn_q") || t.name().contains("attn_k");
                for (int r = 0; r < y.length / rl; r++) {
                    int src = permuted ? (int) GgufToHf.ggufRowOf(r, 64) : r;
                    for (int c = 0; c < rl; c++) {
                        if (x[src * rl + c] != y[r * rl + c]) throw new AssertionError(t.name() + " row " + r + " col " + c);
                    }
                }
            }
        }
    }

    @Test
    void failedImportsLeaveNothingBehind() throws IOException {
        Path gguf = dir.resolve("big.gguf");
        try (GgufWriter w = new GgufWriter(gguf)) {
            w.putAll(GgufTestFiles.tinyLlamaMetadata());
            for (TensorSpec t : GgufTestFiles.TINY_LLAMA) w.addTensor(t.name(), GgmlType.F32, t.dims());
            for (TensorSpec t : GgufTestFiles.TINY_LLAMA) {
                float[] x = GgufTestFiles.weights(t, 1);
                if (t.name().equals("output.weight")) x[77] = 1e6f; // the last tensor does not fit fp16
                w.writeTensor(t.name(), GgufTestFiles.floatsLE(x));
            }
        }
        Path out = dir.resolve("out");
        QtoolException e = assertThrows(QtoolException.class, () -> GgufToHf.convert(gguf, out, DType.F16, 0, null));
        assertTrue(e.getMessage().contains("'output.weight' holds 1000000.0, beyond fp16's range"), e.getMessage());
        assertFalse(Files.exists(out));
        try (var files = Files.list(dir)) {
            assertEquals(List.of("big.gguf"), files.map(p -> p.getFileName().toString()).toList());
        }
        GgufToHf.convert(gguf, out, DType.BF16, 0, null); // bf16 holds it
        assertEquals("bfloat16", Json.readObject(out.resolve("config.json")).get("torch_dtype"));

        e = assertThrows(QtoolException.class, () -> GgufToHf.convert(gguf, out, DType.F16, 0, null));
        assertTrue(e.getMessage().contains("exists and is not empty"), e.getMessage());
    }

    @Test
    void refusesWhatItCannotConvert() throws IOException {
        Path gguf = dir.resolve("odd.gguf");
        try (GgufWriter w = new GgufWriter(gguf)) {
            w.putAll(GgufTestFiles.tinyLlamaMetadata());
            w.putString("general.architecture", "llama");
            w.addTensor("token_embd.weight", GgmlType.F32, 256, 4);
            w.addTensor("blk.0.mystery.weight", GgmlType.F32, 4);
            w.write(MemorySegment.ofArray(new byte[(256 * 4 + 4) * 4]));
        }
        QtoolException e = assertThrows(QtoolException.class, () -> GgufToHf.convert(gguf, dir.resolve("o"), DType.F16, 0, null));
        assertTrue(e.getMessage().contains("'blk.0.mystery.weight' has no transformers counterpart"), e.getMessage());

        Path qwen = dir.resolve("qwen.gguf");
        try (GgufWriter w = new GgufWriter(qwen)) {
            w.putString("general.architecture", "qwen2");
        }
        e = assertThrows(QtoolException.class, () -> GgufToHf.convert(qwen, dir.resolve("o"), DType.F16, 0, null));
        assertTrue(e.getMessage().contains("architecture 'qwen2' is not supported"), e.getMessage());
        assertFalse(Files.exists(dir.resolve("o")));
    }
}
