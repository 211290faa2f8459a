package qtool.load;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import qtool.QtoolException;

class ModelConfigTest {

    private static ModelConfig parse(String json) {
        return ModelConfig.parse(Json.object(Json.parse(json, "test"), "test"), "config.json");
    }

    /** Llama-2-7b-hf's config.json. */
    private static final String LLAMA2_7B = """
            {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
             "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
             "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
             "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
             "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000}
            """;

    /** Mistral-7B-v0.1's config.json. */
    private static final String MISTRAL_7B = """
            {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
             "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
             "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
             "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
             "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000}
            """;

    /** Qwen2-0.5B's config.json. */
    private static final String QWEN2_05B = """
            {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
             "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
             "max_position_embeddings": 131072, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
             "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
             "sliding_window": 131072, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
             "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}
            """;

    /** Llama-3.1-8B's config.json (eos is a list). */
    private static final String LLAMA31_8B = """
            {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000,
             "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
             "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
             "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
             "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0,
             "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0",
             "use_cache": true, "vocab_size": 128256}
            """;

    @Test
    void llama2() {
        ModelConfig c = parse(LLAMA2_7B);
        assertEquals("llama", c.modelType());
        assertEquals(4096, c.hiddenSize());
        assertEquals(11008, c.intermediateSize());
        assertEquals(32, c.numLayers());
        assertEquals(32, c.numHeads());
        assertEquals(32, c.numKvHeads());
        assertEquals(128, c.headDim());
        assertEquals(4096, c.qDim());
        assertEquals(4096, c.kvDim());
        assertEquals(32000, c.vocabSize());
        assertEquals(1e-5f, c.rmsNormEps());
        assertEquals(10000.0, c.ropeTheta(), "rope_theta defaults to 10000");
        assertEquals("default", c.ropeScaling().type(), "rope_scaling null is no scaling");
        assertEquals(4096, c.maxPositionEmbeddings());
        assertFalse(c.tieWordEmbeddings());
        assertEquals(1, c.bosTokenId());
        assertEquals(2, c.eosTokenId());
        assertEquals("float16", c.torchDtype());
    }

    @Test
    void kvHeadsDefaultToHeads() {
        ModelConfig c = parse(LLAMA2_7B.replace("\"num_key_value_heads\": 32,", ""));
        assertEquals(32, c.numKvHeads());
        assertEquals(32, parse(LLAMA2_7B.replace("\"num_key_value_heads\": 32", "\"num_key_value_heads\": null")).numKvHeads());
    }

    @Test
    void mistralGroupedQueryAttention() {
        ModelConfig c = parse(MISTRAL_7B);
        assertEquals("mistral", c.modelType());
        assertEquals(8, c.numKvHeads());
        assertEquals(128, c.headDim());
        assertEquals(1024, c.kvDim());
        assertEquals(14336, c.intermediateSize());
        assertEquals("bfloat16", c.torchDtype());
        assertEquals(128, parse(MISTRAL_7B.replace("\"hidden_act\"", "\"head_dim\": null, \"hidden_act\"")).headDim(), "head_dim null");
    }

    /** Mistral-Nemo: head_dim 128 although hidden / heads = 160. */
    @Test
    void explicitHeadDimWins() {
        ModelConfig c = parse(MISTRAL_7B.replace("\"hidden_size\": 4096", "\"hidden_size\": 5120, \"head_dim\": 128"));
        assertEquals(128, c.headDim());
        assertEquals(4096, c.qDim());
        assertEquals(1024, c.kvDim());
    }

    @Test
    void qwen2TiedEmbeddings() {
        ModelConfig c = parse(QWEN2_05B);
        assertEquals("qwen2", c.modelType());
        assertEquals(896, c.hiddenSize());
        assertEquals(14, c.numHeads());
        assertEquals(2, c.numKvHeads());
        assertEquals(64, c.headDim());
        assertEquals(151936, c.vocabSize());
        assertEquals(1e-6f, c.rmsNormEps());
        assertEquals(1_000_000.0, c.ropeTheta());
        assertTrue(c.tieWordEmbeddings());
        assertEquals(151643, c.eosTokenId());
    }

    @Test
    void defaultsWhenOptionalKeysAreAbsent() {
        ModelConfig c = parse("""
                {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
                 "num_attention_heads": 8, "vocab_size": 512, "dtype": "float32"}
                """);
        assertFalse(c.tieWordEmbeddings(), "LlamaConfig's tie_word_embeddings default is false");
        assertEquals(1e-6f, c.rmsNormEps());
        assertEquals(10000.0, c.ropeTheta());
        assertEquals(8, c.numKvHeads());
        assertEquals(8, c.headDim());
        assertEquals(-1, c.bosTokenId());
        assertEquals(-1, c.eosTokenId());
        assertEquals("float32", c.torchDtype(), "newer transformers writes 'dtype'");
    }

    /** transformers' default RoPE: inv_freq[j] = 1 / theta^(2j / d). */
    private static double[] defaultInvFreq(double theta, int headDim) {
        double[] inv = new double[headDim / 2];
        for (int j = 0; j < inv.length; j++) inv[j] = 1.0 / Math.pow(theta, 2.0 * j / headDim);
        return inv;
    }

    private static void assertClose(double[] expected, float[] actual) {
        assertClose(expected, actual, "");
    }

    private static void assertClose(double[] expected, float[] actual, String why) {
        assertEquals(expected.length, actual.length);
        for (int j = 0; j < expected.length; j++) {
            assertEquals(expected[j], actual[j], Math.abs(expected[j]) * 2e-6, why + " inv_freq[" + j + "]");
        }
    }

    @Test
    void ropeWithoutScaling() {
        ModelConfig c = parse(QWEN2_05B);
        assertClose(defaultInvFreq(1_000_000.0, 64), c.ropeInvFreq(1, 1));
    }

    /**
     * Llama 3.1's frequency-dependent scaling, written out here from transformers' _compute_llama3_parameters: wavelengths
     * above original_max / low_freq_factor are divided by factor, those below original_max / high_freq_factor kept, and
     * the band between interpolated by smooth = (original_max / wavelen - low) / (high - low).
     */
    @Test
    void ropeLlama3ScalingMatchesTransformers() {
        double factor = 8, low = 1, high = 4, oldLen = 8192;
        double[] inv = defaultInvFreq(500000.0, 128);
        double[] expected = new double[inv.length];
        int kept = 0, divided = 0, smoothed = 0;
        for (int j = 0; j < inv.length; j++) {
            double wavelen = 2 * Math.PI / inv[j];
            if (wavelen < oldLen / high) {
                expected[j] = inv[j];
                kept++;
            } else if (wavelen > oldLen / low) {
                expected[j] = inv[j] / factor;
                divided++;
            } else {
                double smooth = (oldLen / wavelen - low) / (high - low);
                expected[j] = (1 - smooth) * inv[j] / factor + smooth * inv[j];
                smoothed++;
            }
        }
        assertTrue(kept > 0 && divided > 0 && smoothed > 0, "all three bands occur: " + kept + " " + divided + " " + smoothed);
        ModelConfig c = parse(LLAMA31_8B);
        assertEquals(new ModelConfig.RopeScaling("llama3", 8, 1, 4, 8192), c.ropeScaling());
        assertEquals(128001, c.eosTokenId(), "first of the eos list");
        assertClose(expected, c.ropeInvFreq(1, 1));
    }

    @ParameterizedTest
    @CsvSource({"rope_type, linear", "type, linear"})
    void ropeLinearScalingDividesByFactor(String key, String type) {
        ModelConfig c = parse(LLAMA2_7B.replace("\"rope_scaling\": null", "\"rope_scaling\": {\"" + key + "\": \"" + type + "\", \"factor\": 4.0}"));
        assertEquals("linear", c.ropeScaling().type());
        double[] expected = defaultInvFreq(10000, 128);
        for (int j = 0; j < expected.length; j++) expected[j] /= 4;
        assertClose(expected, c.ropeInvFreq(1, 1));
        for (int j = 0; j < expected.length; j++) expected[j] /= 2;
        assertClose(expected, c.ropeInvFreq(1, 2), "a requested linear scale compounds with the config's");
    }

    /** NTK alpha (ExLlamaV2's -ra): base × alpha^(d / (d − 2)). */
    @Test
    void ropeNtkAlphaRaisesTheBase() {
        ModelConfig c = parse(LLAMA2_7B);
        assertClose(defaultInvFreq(10000 * Math.pow(2.5, 128.0 / 126.0), 128), c.ropeInvFreq(2.5, 1));
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource(delimiter = '|', quoteCharacter = '`', textBlock = """
            no model_type                | "model_type": "llama",                   | ``                                   | no model_type (architectures: [LlamaForCausalLM])
            unsupported model_type       | "model_type": "llama",                   | "model_type": "gemma",               | unsupported architecture 'gemma' (supported: llama, mistral, qwen2)
            missing hidden_size          | "hidden_size": 4096,                     | ``                                   | missing or non-numeric 'hidden_size'
            string hidden_size           | "hidden_size": 4096,                     | "hidden_size": "4096",               | missing or non-numeric 'hidden_size'
            zero layers                  | "num_hidden_layers": 32,                 | "num_hidden_layers": 0,              | 'num_hidden_layers' out of range: 0
            negative vocab               | "vocab_size": 32000                      | "vocab_size": -5                     | 'vocab_size' out of range: -5
            too large intermediate       | "intermediate_size": 11008,              | "intermediate_size": 4294967296,     | 'intermediate_size' out of range: 4294967296
            heads not multiple of kv     | "num_key_value_heads": 32,               | "num_key_value_heads": 12,           | num_attention_heads 32 is not a multiple of num_key_value_heads 12
            zero kv heads                | "num_key_value_heads": 32,               | "num_key_value_heads": 0,            | 'num_key_value_heads' out of range: 0
            odd head_dim                 | "hidden_size": 4096,                     | "hidden_size": 4096, "head_dim": 65, | head dimension 65 must be even and positive
            zero head_dim                | "hidden_size": 4096,                     | "hidden_size": 4096, "head_dim": 0,  | head dimension 0 must be even and positive
            unsupported rope type        | "rope_scaling": null                     | "rope_scaling": {"rope_type": "yarn", "factor": 4.0} | unsupported rope_scaling type 'yarn' (supported: linear, dynamic, llama3)
            zero rope factor             | "rope_scaling": null                     | "rope_scaling": {"type": "linear", "factor": 0}      | rope_scaling factor must be positive, not 0.0
            llama3 low above high        | "rope_scaling": null                     | "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 8192} | rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor
            """)
    void badValuesAreRefused(String what, String replace, String with, String problem) {
        String json = LLAMA2_7B.replace(replace, with);
        assertFalse(json.equals(LLAMA2_7B), "the edit applies: " + what);
        QtoolException e = assertThrows(QtoolException.class, () -> parse(json), what);
        assertTrue(e.getMessage().startsWith("config.json: "), e.getMessage());
        assertTrue(e.getMessage().contains(problem), e.getMessage());
    }

    @Test
    void readNamesTheFile(@TempDir Path dir) throws Exception {
        QtoolException none = assertThrows(QtoolException.class, () -> ModelConfig.read(dir));
        assertEquals(dir.resolve("config.json") + ": no such file (a model directory needs config.json)", none.getMessage());
        Files.writeString(dir.resolve("config.json"), "{\"model_type\": \"llama\",");
        QtoolException bad = assertThrows(QtoolException.class, () -> ModelConfig.read(dir));
        assertTrue(bad.getMessage().startsWith(dir.resolve("config.json") + ": invalid JSON"), bad.getMessage());
        Files.writeString(dir.resolve("config.json"), LLAMA2_7B);
        assertEquals(32, ModelConfig.read(dir).numLayers());
        assertEquals(32, ModelConfig.read(dir.resolve("config.json")).numLayers(), "a file path works too");
    }
}
