package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.format.gguf.GgufTestFiles.TensorSpec;
import qtool.load.DType;
import qtool.load.Json;
import qtool.tokenize.TokenizerJsonWriter;
import qtool.tokenize.TokenizerSpec;

/**
 * {@link HfToGguf} against llama-quantize on the tiny llama of {@link GgufTestFiles} (rows of 256 and 512 columns,
 * so every K-quant applies): the F32 GGUF is imported to an HF directory (q/k rows un-permuted) and exported again;
 * llama-quantize quantizes the F32 GGUF itself. Every file type, mixed and pure, with and without an importance
 * matrix, must give the same tensor types and bytes.
 */
class HfToGgufTest {
    static final long SEED = 77;

    @TempDir
    static Path dir;
    static Path f32Gguf;
    static Path hf;

    /** A 64-token byte-level vocabulary (the tiny model's vocab size): "<|endoftext|>" and 63 ASCII letters. */
    static TokenizerSpec tinyVocabulary() {
        String[] tokens = new String[GgufTestFiles.VOCAB];
        int[] types = new int[tokens.length];
        tokens[0] = "<|endoftext|>";
        types[0] = TokenizerSpec.TYPE_CONTROL;
        for (int i = 1; i < tokens.length; i++) {
            tokens[i] = String.valueOf((char) ('?' + i));
            types[i] = TokenizerSpec.TYPE_NORMAL;
        }
        return new TokenizerSpec("gpt2", "gpt-2", tokens, null, types, new String[] {"@ A"}, 0, 0, -1, -1, false, false, false);
    }

    @BeforeAll
    static void tinyModel() {
        f32Gguf = dir.resolve("tiny-f32.gguf");
        GgufTestFiles.writeTinyLlama(f32Gguf, GgmlType.F32, SEED);
        hf = dir.resolve("tiny-hf");
        GgufToHf.convert(f32Gguf, hf, DType.F32, 0, null);
        TokenizerJsonWriter.write(tinyVocabulary(), hf);
    }

    /** Tensors of two GGUF files: same names, types and bytes; returns the type of each. */
    static Map<String, GgmlType> assertSameTensors(Path expected, Path actual) {
        Map<String, GgmlType> types = new LinkedHashMap<>();
        List<String> problems = new ArrayList<>();
        try (GgufFile e = GgufFile.open(expected); GgufFile a = GgufFile.open(actual)) {
            assertEquals(e.tensors().stream().map(GgufTensor::name).toList(), a.tensors().stream().map(GgufTensor::name).toList(),
                    "tensor names and order");
            for (GgufTensor te : e.tensors()) {
                GgufTensor ta = a.requireTensor(te.name());
                types.put(te.name(), te.type());
                if (te.type() != ta.type()) problems.add(te.name() + ": " + ta.type() + ", llama-quantize " + te.type());
                else if (!java.util.Arrays.equals(te.dims(), ta.dims())) problems.add(te.name() + ": dims differ");
                else if (te.data().mismatch(ta.data()) != -1) problems.add(te.name() + " (" + te.type() + "): bytes differ at " + te.data().mismatch(ta.data()));
            }
        }
        if (!problems.isEmpty()) fail(String.join("\n", problems));
        return types;
    }

    @Test
    void everyFileTypeEqualsLlamaQuantize() {
        for (LlamaFileType t : LlamaFileType.values()) {
            if (t == LlamaFileType.Q2_K_S) continue; // needs an importance matrix; below
            for (boolean pure : new boolean[] {false, true}) {
                if (pure && !t.defaultType.isQuantized()) continue;
                Path theirs = dir.resolve("lq-" + t + (pure ? "-pure" : "") + ".gguf");
                if (pure) LlamaCppTools.run("llama-quantize", "--pure", f32Gguf.toString(), theirs.toString(), t.name());
                else LlamaCppTools.run("llama-quantize", f32Gguf.toString(), theirs.toString(), t.name());
                Path mine = dir.resolve("qt-" + t + (pure ? "-pure" : "") + ".gguf");
                HfToGguf.Options o = new HfToGguf.Options(t, pure, null, null, null, null, null);
                HfToGguf.convert(hf, mine, o, null);
                Map<String, GgmlType> types = assertSameTensors(theirs, mine);
                try (GgufFile g = GgufFile.open(mine)) {
                    assertEquals(t.id, g.getInt("general.file_type"), t.toString());
                }
                if (t == LlamaFileType.Q4_K_M && !pure) {
                    // one layer: use_more_bits(0, 1) holds, so attn_v and ffn_down get Q6_K; the untied output Q6_K
                    assertEquals(GgmlType.Q6_K, types.get("blk.0.attn_v.weight"));
                    assertEquals(GgmlType.Q6_K, types.get("blk.0.ffn_down.weight"));
                    assertEquals(GgmlType.Q6_K, types.get("output.weight"));
                    assertEquals(GgmlType.Q4_K, types.get("token_embd.weight"));
                    assertEquals(GgmlType.F32, types.get("blk.0.attn_norm.weight"));
                }
            }
        }
    }

    /** llama.cpp's legacy imatrix file (as {@link LlamaQuantizeBitExactTest} writes it) for the tiny model's weights. */
    static Path writeLegacyImatrix(Path p) throws IOException {
        List<TensorSpec> tensors = java.util.Arrays.stream(GgufTestFiles.TINY_LLAMA).filter(t -> t.dims().length == 2
                && !t.name().equals("token_embd.weight")).toList();
        ByteBuffer b = ByteBuffer.allocate(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(tensors.size());
        for (TensorSpec t : tensors) {
            byte[] name = t.name().getBytes(StandardCharsets.UTF_8);
            b.putInt(name.length).put(name).putInt(4).putInt((int) t.dims()[0]); // ncall 4: values are divided by it
            for (float f : LlamaQuantizeBitExactTest.importance(t.name(), (int) t.dims()[0])) b.putFloat(f * 4);
        }
        byte[] dataset = "qtool-test".getBytes(StandardCharsets.UTF_8);
        b.putInt(1).putInt(dataset.length).put(dataset);
        Files.write(p, java.util.Arrays.copyOf(b.array(), b.position()));
        return p;
    }

    /** The same importance in llama.cpp's GGUF imatrix format: NAME.in_sum2 [n, 1] and NAME.counts [1, 1]. */
    static Path writeGgufImatrix(Path p) {
        List<TensorSpec> tensors = java.util.Arrays.stream(GgufTestFiles.TINY_LLAMA).filter(t -> t.dims().length == 2
                && !t.name().equals("token_embd.weight")).toList();
        try (GgufWriter w = new GgufWriter(p)) {
            w.putString("general.type", "imatrix");
            for (TensorSpec t : tensors) {
                w.addTensor(t.name() + ".in_sum2", GgmlType.F32, t.dims()[0], 1);
                w.addTensor(t.name() + ".counts", GgmlType.F32, 1, 1);
            }
            for (TensorSpec t : tensors) {
                float[] imp = LlamaQuantizeBitExactTest.importance(t.name(), (int) t.dims()[0]);
                float[] sums = new float[imp.length];
                for (int i = 0; i < imp.length; i++) sums[i] = imp[i] * 8;
                w.writeTensor(t.name() + ".in_sum2", GgufTestFiles.floatsLE(sums));
                w.writeTensor(t.name() + ".counts", GgufTestFiles.floatsLE(new float[] {8}));
            }
        }
        return p;
    }

    @Test
    void importanceMatrixEqualsLlamaQuantizes() throws IOException {
        Path dat = writeLegacyImatrix(dir.resolve("imatrix.dat"));
        Map<String, float[]> legacy = Imatrix.read(dat);
        Map<String, float[]> gguf = Imatrix.read(writeGgufImatrix(dir.resolve("imatrix.gguf")));
        assertEquals(legacy.keySet(), gguf.keySet());
        for (String k : legacy.keySet()) assertArrayEquals(legacy.get(k), gguf.get(k), k);
        assertArrayEquals(LlamaQuantizeBitExactTest.importance("blk.0.attn_q.weight", 256), legacy.get("blk.0.attn_q.weight"));

        for (LlamaFileType t : List.of(LlamaFileType.Q4_0, LlamaFileType.Q4_K_M, LlamaFileType.Q3_K_S, LlamaFileType.Q2_K_S)) {
            Path theirs = dir.resolve("lq-imat-" + t + ".gguf");
            LlamaCppTools.run("llama-quantize", "--imatrix", dat.toString(), f32Gguf.toString(), theirs.toString(), t.name());
            Path mine = dir.resolve("qt-imat-" + t + ".gguf");
            HfToGguf.convert(hf, mine, HfToGguf.Options.of(t).withImportance(legacy), null);
            assertSameTensors(theirs, mine);
        }
        // importance under transformers' names works the same
        Map<String, float[]> byHfName = new LinkedHashMap<>();
        legacy.forEach((k, v) -> byHfName.put(GgufToHf.hfName(k), v));
        Path mine = dir.resolve("qt-imat-hf-names.gguf");
        HfToGguf.convert(hf, mine, HfToGguf.Options.of(LlamaFileType.Q4_K_M).withImportance(byHfName), null);
        assertSameTensors(dir.resolve("lq-imat-Q4_K_M.gguf"), mine);
    }

    @Test
    void q2KSNeedsImportanceAsInLlamaCpp() {
        QtoolException e = assertThrows(QtoolException.class,
                () -> HfToGguf.convert(hf, dir.resolve("q2ks.gguf"), HfToGguf.Options.of(LlamaFileType.Q2_K_S), null));
        assertTrue(e.getMessage().contains("needs importance (--imatrix)"), e.getMessage());
        assertFalse(Files.exists(dir.resolve("q2ks.gguf")));
    }

    @Test
    void permutationInvertsImport() {
        for (int hd : new int[] {2, 8, 64}) {
            for (long r = 0; r < 3L * hd; r++) assertEquals(r, HfToGguf.hfRowOf(GgufToHf.ggufRowOf(r, hd), hd));
        }
        assertEquals("blk.3.ffn_down.weight", HfToGguf.ggufName("model.layers.3.mlp.down_proj.weight"));
        assertEquals("blk.0.attn_k.bias", HfToGguf.ggufName("model.layers.0.self_attn.k_proj.bias"));
        assertEquals("output.weight", HfToGguf.ggufName("lm_head.weight"));
        assertNull(HfToGguf.ggufName("model.layers.0.self_attn.rotary_emb.inv_freq"));
        for (TensorSpec t : GgufTestFiles.TINY_LLAMA) assertEquals(t.name(), HfToGguf.ggufName(GgufToHf.hfName(t.name())));
    }

    @Test
    void metadataIsWhatLlamaCppsConverterWrites() {
        Path out = dir.resolve("meta.gguf");
        HfToGguf.convert(hf, out, new HfToGguf.Options(LlamaFileType.F16, false, null, null, null, "tiny", null), null);
        try (GgufFile g = GgufFile.open(out)) {
            assertEquals("llama", g.getString("general.architecture"));
            assertEquals("tiny", g.getString("general.name"));
            assertEquals(1, g.getInt("llama.block_count"));
            assertEquals(256, g.getInt("llama.embedding_length"));
            assertEquals(512, g.getInt("llama.feed_forward_length"));
            assertEquals(4, g.getInt("llama.attention.head_count"));
            assertEquals(4, g.getInt("llama.attention.head_count_kv"));
            assertEquals(64, g.getInt("llama.rope.dimension_count"));
            assertEquals(64, g.getInt("llama.vocab_size"));
            assertEquals(1e-5f, (float) g.getDouble("llama.attention.layer_norm_rms_epsilon"));
            assertEquals(GgufValueType.FLOAT32, g.entry("llama.rope.freq_base").type());
            assertEquals(1, g.getInt("general.file_type"));
            assertEquals(2, g.getInt("general.quantization_version"));
            assertFalse(g.has("general.alignment"));
            assertEquals("gpt2", g.getString("tokenizer.ggml.model"));
            assertEquals("gpt-2", g.getString("tokenizer.ggml.pre"));
            assertArrayEquals(tinyVocabulary().tokens(), g.getStrings("tokenizer.ggml.tokens"));
            assertArrayEquals(new String[] {"@ A"}, g.getStrings("tokenizer.ggml.merges"));
            assertEquals(0, g.getInt("tokenizer.ggml.bos_token_id"));
            assertEquals(GgmlType.F16, g.requireTensor("token_embd.weight").type());
            assertEquals(GgmlType.F32, g.requireTensor("output_norm.weight").type());
        }
    }

    @Test
    void biasesArePermutedAndLlama3RopeScalingBecomesRopeFreqs() throws IOException {
        Path biased = dir.resolve("biased");
        Files.createDirectories(biased);
        for (String f : List.of("tokenizer.json", "tokenizer_config.json")) Files.copy(hf.resolve(f), biased.resolve(f));
        Map<String, Object> config = Json.readObject(hf.resolve("config.json"));
        config.put("attention_bias", true);
        config.put("rope_theta", 500000.0);
        config.put("rope_scaling", Map.of("rope_type", "llama3", "factor", 8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                "original_max_position_embeddings", 64));
        Json.writeFile(biased.resolve("config.json"), config);
        Map<String, float[]> biases = new LinkedHashMap<>();
        try (qtool.load.Weights w = qtool.load.Weights.open(hf)) {
            qtool.write.SafetensorsWriter sw = new qtool.write.SafetensorsWriter(biased, 0, Map.of());
            for (var e : w.all().entrySet()) sw.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
            for (String p : List.of("q_proj", "k_proj", "v_proj", "o_proj")) {
                float[] b = new float[GgufTestFiles.HIDDEN];
                for (int i = 0; i < b.length; i++) b[i] = i + (p.charAt(0) - 'a') * 1000;
                biases.put(p, b);
                sw.add("model.layers.0.self_attn." + p + ".bias", DType.F32, new long[] {b.length}, GgufTestFiles.floatsLE(b));
            }
            sw.close();
        }
        Path out = dir.resolve("biased.gguf");
        HfToGguf.convert(biased, out, HfToGguf.Options.of(LlamaFileType.Q8_0), null);
        try (GgufFile g = GgufFile.open(out)) {
            float[] q = GgmlCodec.dequantize(g.requireTensor("blk.0.attn_q.bias"));
            float[] v = GgmlCodec.dequantize(g.requireTensor("blk.0.attn_v.bias"));
            for (int r = 0; r < q.length; r++) {
                assertEquals(biases.get("q_proj")[(int) HfToGguf.hfRowOf(r, 64)], q[r], "q bias " + r); // permuted like the rows
                assertEquals(biases.get("v_proj")[r], v[r], "v bias " + r);
            }
            assertArrayEquals(biases.get("o_proj"), GgmlCodec.dequantize(g.requireTensor("blk.0.attn_output.bias")));
            assertEquals(GgmlType.F32, g.requireTensor("blk.0.attn_k.bias").type());
            float[] freqs = GgmlCodec.dequantize(g.requireTensor("rope_freqs.weight"));
            assertEquals(32, freqs.length);
            assertEquals(1f, freqs[0]);   // high frequencies unscaled
            assertEquals(8f, freqs[31]);  // low frequencies divided by the factor
        }
    }

    @Test
    void badInputFailsNamingTheFile() throws IOException {
        // not a llama
        Path qwen = copyOf(hf, "qwen");
        Map<String, Object> config = Json.readObject(qwen.resolve("config.json"));
        config.put("model_type", "qwen2");
        config.put("architectures", List.of("Qwen2ForCausalLM"));
        Json.writeFile(qwen.resolve("config.json"), config);
        assertFails(qwen, "config.json: model_type 'qwen2', architectures [Qwen2ForCausalLM] is not supported by gguf export");

        // no tokenizer
        Path noTok = copyOf(hf, "no-tokenizer");
        Files.delete(noTok.resolve("tokenizer.json"));
        assertFails(noTok, "no-tokenizer: no tokenizer.json or tokenizer.model");

        // a tokenizer bigger than the embedding
        Path bigTok = copyOf(hf, "big-tokenizer");
        config = Json.readObject(bigTok.resolve("config.json"));
        config.put("vocab_size", 32);
        Json.writeFile(bigTok.resolve("config.json"), config);
        assertFails(bigTok, "big-tokenizer/tokenizer.json: token id 63 is outside the model's vocabulary of 32");

        // no config
        Path noConfig = copyOf(hf, "no-config");
        Files.delete(noConfig.resolve("config.json"));
        assertFails(noConfig, "no-config/config.json: no such file");

        // a pre-tokenizer llama.cpp has no name for
        Path oddPre = copyOf(hf, "odd-pre");
        Map<String, Object> tok = Json.readObject(oddPre.resolve("tokenizer.json"));
        tok.put("pre_tokenizer", Map.of("type", "Split", "pattern", Map.of("Regex", "[a-z]+"), "behavior", "Isolated", "invert", false));
        Json.writeFile(oddPre.resolve("tokenizer.json"), tok);
        assertFails(oddPre, "no llama.cpp pre-tokenizer splits as this one does");
        HfToGguf.convert(oddPre, dir.resolve("odd-pre.gguf"), new HfToGguf.Options(LlamaFileType.F16, false, null, null, null, null, "gpt-2"), null);

        // a missing tensor
        Path missing = dir.resolve("missing");
        Files.createDirectories(missing);
        for (String f : List.of("config.json", "tokenizer.json", "tokenizer_config.json")) Files.copy(hf.resolve(f), missing.resolve(f));
        try (qtool.load.Weights w = qtool.load.Weights.open(hf)) {
            qtool.write.SafetensorsWriter sw = new qtool.write.SafetensorsWriter(missing, 0, Map.of());
            for (var e : w.all().entrySet()) {
                if (e.getKey().contains("up_proj")) continue;
                sw.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
            }
            sw.close();
        }
        assertFails(missing, "tensor 'model.layers.0.mlp.up_proj.weight' is missing");
    }

    private static void assertFails(Path in, String message) {
        Path out = dir.resolve(in.getFileName() + ".gguf");
        QtoolException e = assertThrows(QtoolException.class,
                () -> HfToGguf.convert(in, out, HfToGguf.Options.of(LlamaFileType.Q8_0), null));
        assertTrue(e.getMessage().contains(message), e.getMessage());
        assertFalse(Files.exists(out), "no output left behind");
        assertFalse(Files.exists(out.resolveSibling(out.getFileName() + ".tmp")), "no temporary file left behind");
    }

    private static Path copyOf(Path src, String name) throws IOException {
        Path d = dir.resolve(name);
        Files.createDirectories(d);
        try (var files = Files.list(src)) {
            for (Path f : files.toList()) Files.copy(f, d.resolve(f.getFileName()));
        }
        return d;
    }
}
