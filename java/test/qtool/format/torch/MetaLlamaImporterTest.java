package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.load.Weights;

class MetaLlamaImporterTest {
    static final Path FIXTURE = Path.of("java/test/resources/torch/meta-tiny");

    @TempDir
    Path dir;

    private static byte[] bytes(Tensor t) {
        return t.data().toArray(ValueLayout.JAVA_BYTE);
    }

    @Test
    void intermediateSizeAsTransformersComputesIt() {
        assertEquals(11008, MetaLlamaImporter.intermediateSize(4096, 1.0, 256)); // Llama 2 7B
        assertEquals(28672, MetaLlamaImporter.intermediateSize(8192, 1.3, 4096)); // Llama 2 70B
        assertEquals(14336, MetaLlamaImporter.intermediateSize(4096, 1.3, 1024)); // Llama 3 8B
        assertEquals(112, MetaLlamaImporter.intermediateSize(32, 1.3, 16));
    }

    /** The fixture was made with PyTorch (make_meta.py); reference.pth holds what convert_llama_weights_to_hf.py's logic gives. */
    @Test
    void realTorchShardsImportBitForBitAsTransformersConverts() {
        Path out = dir.resolve("hf");
        CliRun r = CliRun.of("import-meta", "-i", FIXTURE.toString(), "-o", out.toString(), "--json");
        assertEquals(0, r.exitCode(), r.err());
        try (Arena arena = Arena.ofConfined(); Weights w = Weights.open(out)) {
            Map<String, Tensor> ref = TorchZipFile.open(FIXTURE.resolve("reference.pth"), arena).tensors();
            assertEquals(ref.keySet(), w.all().keySet());
            for (var e : ref.entrySet()) {
                Tensor got = w.get(e.getKey());
                assertEquals(e.getValue().dtype(), got.dtype(), e.getKey());
                assertArrayEquals(e.getValue().shape(), got.shape(), e.getKey());
                assertArrayEquals(bytes(e.getValue()), bytes(got), e.getKey());
            }
        }
        ModelConfig c = ModelConfig.read(out);
        assertEquals(112, c.intermediateSize());
        assertEquals(2, c.numKvHeads());
        assertTrue(Files.exists(out.resolve("tokenizer.model")));
    }

    /** Hand-made shards (TorchSaveWriter) against an independent element-by-element implementation of the formulas. */
    @Test
    void handMadeShardsMatchIndependentFormulas() throws Exception {
        handMade(false);
    }

    /** Llama 3's checkpoints split tok_embeddings along the vocabulary (dim 0). */
    @Test
    void handMadeLlama3StyleEmbeddingSplit() throws Exception {
        handMade(true);
    }

    private void handMade(boolean vocabSplitEmbedding) throws Exception {
        int dim = 16, heads = 4, kv = 2, hd = 4, inter = 48, vocab = 20, shards = 2; // intermediateSize(16, 1, 16) = 48
        Random rnd = new Random(7);
        Map<String, float[][]> full = new LinkedHashMap<>();
        full.put("tok_embeddings.weight", rand(rnd, vocab, dim));
        full.put("norm.weight", rand(rnd, 1, dim));
        full.put("output.weight", rand(rnd, vocab, dim));
        full.put("layers.0.attention.wq.weight", rand(rnd, dim, dim));
        full.put("layers.0.attention.wk.weight", rand(rnd, kv * hd, dim));
        full.put("layers.0.attention.wv.weight", rand(rnd, kv * hd, dim));
        full.put("layers.0.attention.wo.weight", rand(rnd, dim, dim));
        full.put("layers.0.feed_forward.w1.weight", rand(rnd, inter, dim));
        full.put("layers.0.feed_forward.w2.weight", rand(rnd, dim, inter));
        full.put("layers.0.feed_forward.w3.weight", rand(rnd, inter, dim));
        full.put("layers.0.attention_norm.weight", rand(rnd, 1, dim));
        full.put("layers.0.ffn_norm.weight", rand(rnd, 1, dim));
        Path in = dir.resolve("meta");
        Files.createDirectories(in);
        writeShards(in, full, shards, vocabSplitEmbedding);
        Files.writeString(in.resolve("params.json"), "{\"dim\": 16, \"n_layers\": 1, \"n_heads\": 4, \"n_kv_heads\": 2, \"vocab_size\": 20,"
                + " \"multiple_of\": 16, \"norm_eps\": 1e-5, \"rope_theta\": 500000.0}");
        Files.copy(FIXTURE.resolve("tokenizer.model"), in.resolve("tokenizer.model"));
        Path out = dir.resolve("hf");
        CliRun r = CliRun.of("import-meta", "-i", in.toString(), "-o", out.toString(), "-ss", "0");
        assertEquals(0, r.exitCode(), r.err());
        try (Weights w = Weights.open(out)) {
            check(w, "model.embed_tokens.weight", full.get("tok_embeddings.weight"));
            check(w, "lm_head.weight", full.get("output.weight"));
            check(w, "model.norm.weight", full.get("norm.weight"));
            check(w, "model.layers.0.self_attn.q_proj.weight", hfRotary(full.get("layers.0.attention.wq.weight"), heads));
            check(w, "model.layers.0.self_attn.k_proj.weight", hfRotary(full.get("layers.0.attention.wk.weight"), kv));
            check(w, "model.layers.0.self_attn.v_proj.weight", full.get("layers.0.attention.wv.weight"));
            check(w, "model.layers.0.self_attn.o_proj.weight", full.get("layers.0.attention.wo.weight"));
            check(w, "model.layers.0.mlp.gate_proj.weight", full.get("layers.0.feed_forward.w1.weight"));
            check(w, "model.layers.0.mlp.down_proj.weight", full.get("layers.0.feed_forward.w2.weight"));
            check(w, "model.layers.0.mlp.up_proj.weight", full.get("layers.0.feed_forward.w3.weight"));
            check(w, "model.layers.0.input_layernorm.weight", full.get("layers.0.attention_norm.weight"));
            check(w, "model.layers.0.post_attention_layernorm.weight", full.get("layers.0.ffn_norm.weight"));
        }
        Map<String, Object> config = Json.readObject(out.resolve("config.json"));
        assertEquals(48, ((Number) config.get("intermediate_size")).intValue());
        assertEquals(500000.0, ((Number) config.get("rope_theta")).doubleValue());
    }

    /** The sharded import runs (ppl, generate) and gives the same perplexity as the same model saved in one shard. */
    @Test
    void importedModelRunsAndMatchesUnshardedOriginal() throws Exception {
        Path sharded = dir.resolve("hf2");
        assertEquals(0, CliRun.of("import-meta", "-i", FIXTURE.toString(), "-o", sharded.toString()).exitCode());
        // the unsharded original: one consolidated.00.pth with the full (unpermuted) tensors
        Path one = dir.resolve("meta1");
        Files.createDirectories(one);
        try (Arena arena = Arena.ofConfined()) {
            Map<String, Tensor> a = TorchZipFile.open(FIXTURE.resolve("consolidated.00.pth"), arena).tensors();
            Map<String, Tensor> b = TorchZipFile.open(FIXTURE.resolve("consolidated.01.pth"), arena).tensors();
            Map<String, TorchSaveWriter.RawTensor> merged = new LinkedHashMap<>();
            for (String k : a.keySet()) {
                Tensor x = a.get(k), y = b.get(k);
                boolean dim1 = k.contains("attention.wo") || k.contains("feed_forward.w2") || k.contains("tok_embeddings");
                byte[] m;
                long[] shape = x.shape().clone();
                if (shape.length == 1) m = bytes(x);
                else if (!dim1) { m = concat(bytes(x), bytes(y)); shape[0] *= 2; }
                else {
                    int rows = (int) shape[0], rb = (int) shape[1] * 2;
                    m = new byte[rows * rb * 2];
                    for (int i = 0; i < rows; i++) {
                        System.arraycopy(bytes(x), i * rb, m, i * 2 * rb, rb);
                        System.arraycopy(bytes(y), i * rb, m, i * 2 * rb + rb, rb);
                    }
                    shape[1] *= 2;
                }
                merged.put(k, new TorchSaveWriter.RawTensor(x.dtype(), shape, m));
            }
            TorchSaveWriter.save(one.resolve("consolidated.00.pth"), merged, false);
        }
        Files.copy(FIXTURE.resolve("params.json"), one.resolve("params.json"));
        Files.copy(FIXTURE.resolve("tokenizer.model"), one.resolve("tokenizer.model"));
        Path unsharded = dir.resolve("hf1");
        assertEquals(0, CliRun.of("import-meta", "-i", one.toString(), "-o", unsharded.toString()).exitCode());

        Path data = dir.resolve("text.txt");
        Files.writeString(data, "The quick brown fox jumps over the lazy dog. ".repeat(20));
        CliRun p2 = CliRun.of("ppl", "-m", sharded.toString(), "-d", data.toString(), "--ctx", "32", "--windows", "2", "--json", "--device", "cpu");
        CliRun p1 = CliRun.of("ppl", "-m", unsharded.toString(), "-d", data.toString(), "--ctx", "32", "--windows", "2", "--json", "--device", "cpu");
        assertEquals(0, p2.exitCode(), p2.err());
        assertEquals(0, p1.exitCode(), p1.err());
        double ppl2 = ((Number) Json.object(Json.parse(p2.out(), "ppl"), "ppl").get("ppl")).doubleValue();
        double ppl1 = ((Number) Json.object(Json.parse(p1.out(), "ppl"), "ppl").get("ppl")).doubleValue();
        assertTrue(ppl2 > 1 && Double.isFinite(ppl2), p2.out());
        assertEquals(ppl1, ppl2, 0.0);
        CliRun g = CliRun.of("generate", "-m", sharded.toString(), "-p", "Hello", "-n", "5", "--greedy", "--device", "cpu");
        assertEquals(0, g.exitCode(), g.err());
    }

    @Test
    void badInputExitsWithCode2() throws Exception {
        // missing shard: only consolidated.01.pth
        Path gap = copyFixture("gap");
        Files.delete(gap.resolve("consolidated.00.pth"));
        assertBad(gap, "consolidated.00.pth is missing");
        // one of two shards: shapes disagree with params.json
        Path half = copyFixture("half");
        Files.delete(half.resolve("consolidated.01.pth"));
        assertBad(half, "params.json implies");
        // params.json of another model
        Path other = copyFixture("other");
        Files.writeString(other.resolve("params.json"), Files.readString(other.resolve("params.json")).replace("\"multiple_of\": 16", "\"multiple_of\": 64"));
        assertBad(other, "params.json implies");
        // shards of different models
        Path mixed = copyFixture("mixed");
        Map<String, TorchSaveWriter.RawTensor> alien = new LinkedHashMap<>();
        alien.put("tok_embeddings.weight", new TorchSaveWriter.RawTensor(DType.BF16, new long[] {290, 16}, new byte[290 * 16 * 2]));
        TorchSaveWriter.save(mixed.resolve("consolidated.01.pth"), alien, false);
        assertBad(mixed, "not a shard of the same model");
        // a truncated shard
        Path cut = copyFixture("cut");
        byte[] all = Files.readAllBytes(cut.resolve("consolidated.01.pth"));
        Files.write(cut.resolve("consolidated.01.pth"), java.util.Arrays.copyOf(all, all.length - 100));
        assertBad(cut, "consolidated.01.pth");
        // an output directory that already holds weights
        Path used = dir.resolve("used");
        Files.createDirectories(used);
        Files.writeString(used.resolve("model-00001-of-00002.safetensors"), "old");
        CliRun r = CliRun.of("import-meta", "-i", FIXTURE.toString(), "-o", used.toString());
        assertEquals(2, r.exitCode());
        assertTrue(r.err().contains("already holds weights"), r.err());
        // no tokenizer
        Path noTok = copyFixture("notok");
        Files.delete(noTok.resolve("tokenizer.model"));
        assertBad(noTok, "tokenizer.model is missing");
    }

    private void assertBad(Path in, String message) {
        CliRun r = CliRun.of("import-meta", "-i", in.toString(), "-o", dir.resolve("out-" + in.getFileName()).toString());
        assertEquals(2, r.exitCode(), r.out() + r.err());
        assertTrue(r.err().contains(message), r.err());
    }

    private Path copyFixture(String name) throws Exception {
        Path d = dir.resolve(name);
        Files.createDirectories(d);
        for (String f : new String[] {"params.json", "tokenizer.model", "consolidated.00.pth", "consolidated.01.pth"}) {
            Files.copy(FIXTURE.resolve(f), d.resolve(f));
        }
        return d;
    }

    // ---- the independent implementation: float arrays, index formulas ----

    private static float[][] rand(Random rnd, int rows, int cols) {
        float[][] m = new float[rows][cols];
        for (float[] row : m) for (int j = 0; j < cols; j++) row[j] = (float) rnd.nextGaussian();
        return m;
    }

    /** HF row h·hd + j·hd/2 + i holds Meta row h·hd + 2i + j. */
    private static float[][] hfRotary(float[][] w, int heads) {
        int hd = w.length / heads;
        float[][] out = new float[w.length][];
        for (int h = 0; h < heads; h++) for (int i = 0; i < hd / 2; i++) for (int j = 0; j < 2; j++) out[h * hd + j * hd / 2 + i] = w[h * hd + 2 * i + j];
        return out;
    }

    private static void check(Weights w, String name, float[][] expected) {
        Tensor t = w.get(name);
        int cols = expected[0].length;
        assertEquals(expected.length == 1 ? cols : (long) expected.length * cols, t.numel(), name);
        for (int r = 0; r < expected.length; r++) for (int c = 0; c < cols; c++) {
            assertEquals(Float.floatToFloat16(expected[r][c]), Float.floatToFloat16(t.getFloat((long) r * cols + c)), name + "[" + r + "," + c + "]");
        }
    }

    /** Cuts each tensor as model-parallel ranks hold it: dim 1 for wo, w2, tok_embeddings; dim 0 for the rest; norms whole. */
    private static void writeShards(Path in, Map<String, float[][]> full, int shards, boolean vocabSplitEmbedding) throws Exception {
        for (int s = 0; s < shards; s++) {
            Map<String, TorchSaveWriter.RawTensor> part = new LinkedHashMap<>();
            for (var e : full.entrySet()) {
                float[][] m = e.getValue();
                String k = e.getKey();
                boolean norm = k.contains("norm");
                boolean dim1 = k.contains("attention.wo") || k.contains("feed_forward.w2") || (k.contains("tok_embeddings") && !vocabSplitEmbedding);
                int rows = m.length, cols = m[0].length;
                int r0 = 0, r1 = rows, c0 = 0, c1 = cols;
                if (!norm && dim1) { c0 = s * cols / shards; c1 = (s + 1) * cols / shards; }
                else if (!norm) { r0 = s * rows / shards; r1 = (s + 1) * rows / shards; }
                ByteBuffer b = ByteBuffer.allocate((r1 - r0) * (c1 - c0) * 2).order(ByteOrder.LITTLE_ENDIAN);
                for (int r = r0; r < r1; r++) for (int c = c0; c < c1; c++) b.putShort(Float.floatToFloat16(m[r][c]));
                long[] shape = norm ? new long[] {cols} : new long[] {r1 - r0, c1 - c0};
                part.put(k, new TorchSaveWriter.RawTensor(DType.F16, shape, b.array()));
            }
            TorchSaveWriter.save(in.resolve(String.format("consolidated.%02d.pth", s)), part, s == 1);
        }
    }

    private static byte[] concat(byte[] a, byte[] b) {
        byte[] m = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, m, a.length, b.length);
        return m;
    }
}
