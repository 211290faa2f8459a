package qtool.cli;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import java.util.stream.IntStream;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.write.SafetensorsWriter;

/**
 * {@code qtool synth}: a random-weight model in HF layout, for tests and benchmarks of shapes nobody ships small
 * (a 7B shape is made on the GPU host rather than carried there). Linear weights are uniform with standard deviation
 * 0.02 (transformers' initializer range), norms are 1, biases small; every tensor is seeded from --seed and its
 * name, so the same flags give the same bytes, and tensors are filled in parallel chunks.
 */
@Command(name = "synth", mixinStandardHelpOptions = true, description = "Write a random-weight Llama-family model (config.json + safetensors).")
public final class SynthCommand implements Callable<Integer> {
    @Option(names = "--out", required = true, description = "Output directory.") Path out;
    @Option(names = "--arch", defaultValue = "llama", description = "llama, mistral or qwen2 (q/k/v biases). Default ${DEFAULT-VALUE}.") String arch;
    @Option(names = "--hidden", required = true) int hidden;
    @Option(names = "--layers", required = true) int layers;
    @Option(names = "--heads", required = true) int heads;
    @Option(names = "--kv-heads", description = "Default: --heads.") Integer kvHeads;
    @Option(names = "--head-dim", description = "Default: hidden / heads.") Integer headDim;
    @Option(names = "--intermediate", required = true) int intermediate;
    @Option(names = "--vocab", required = true) int vocab;
    @Option(names = "--dtype", defaultValue = "f16", description = "f16 or bf16. Default ${DEFAULT-VALUE}.") String dtype;
    @Option(names = "--seed", defaultValue = "0") long seed;
    @Option(names = "--tie", description = "Tie lm_head to the embedding.") boolean tie;
    @Option(names = "--rope-theta", defaultValue = "10000") double ropeTheta;
    @Option(names = "--tokenizer", description = "Copy tokenizer files (tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json) from this directory.") Path tokenizer;
    @Option(names = {"-ss", "--shard-size"}, defaultValue = "8192", description = "Shard size in MB (0 = one file). Default ${DEFAULT-VALUE}.") long shardMb;

    private static final List<String> TOKENIZER_FILES = List.of("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json");

    @Override
    public Integer call() throws IOException {
        if (!ModelConfig.SUPPORTED.contains(arch)) throw new QtoolException("--arch must be one of " + ModelConfig.SUPPORTED + ", not '" + arch + "'");
        DType dt = switch (dtype) {
            case "f16", "float16" -> DType.F16;
            case "bf16", "bfloat16" -> DType.BF16;
            default -> throw new QtoolException("--dtype must be f16 or bf16, not '" + dtype + "'");
        };
        positive("--hidden", hidden);
        positive("--layers", layers);
        positive("--heads", heads);
        positive("--intermediate", intermediate);
        positive("--vocab", vocab);
        int kv = kvHeads == null ? heads : kvHeads;
        positive("--kv-heads", kv);
        int hd = headDim == null ? hidden / heads : headDim;
        if (hd <= 0 || hd % 2 != 0) throw new QtoolException("head dimension " + hd + " (--head-dim, or --hidden / --heads) must be even and positive");
        if (heads % kv != 0) throw new QtoolException("--heads " + heads + " is not a multiple of --kv-heads " + kv);
        if (shardMb < 0) throw new QtoolException("--shard-size must be 0 or more, not " + shardMb);
        if (tokenizer != null && TOKENIZER_FILES.stream().noneMatch(f -> Files.isRegularFile(tokenizer.resolve(f)))) {
            throw new QtoolException(tokenizer + ": no tokenizer files (" + String.join(", ", TOKENIZER_FILES) + ")");
        }
        if (Files.exists(out) && Files.list(out).findAny().isPresent()) throw new QtoolException(out + ": output directory is not empty");

        Map<String, Object> cfg = new LinkedHashMap<>();
        cfg.put("architectures", List.of(switch (arch) {
            case "qwen2" -> "Qwen2ForCausalLM";
            case "mistral" -> "MistralForCausalLM";
            default -> "LlamaForCausalLM";
        }));
        cfg.put("model_type", arch);
        cfg.put("hidden_size", hidden);
        cfg.put("intermediate_size", intermediate);
        cfg.put("num_hidden_layers", layers);
        cfg.put("num_attention_heads", heads);
        cfg.put("num_key_value_heads", kv);
        cfg.put("head_dim", hd);
        cfg.put("vocab_size", vocab);
        cfg.put("max_position_embeddings", 4096);
        cfg.put("rms_norm_eps", 1e-5);
        cfg.put("rope_theta", ropeTheta);
        cfg.put("hidden_act", "silu");
        cfg.put("tie_word_embeddings", tie);
        cfg.put("bos_token_id", 1);
        cfg.put("eos_token_id", 2);
        if (arch.equals("llama")) {
            cfg.put("attention_bias", false);
            cfg.put("mlp_bias", false);
        }
        cfg.put("torch_dtype", dt == DType.F16 ? "float16" : "bfloat16");

        long t0 = System.nanoTime();
        Files.createDirectories(out);
        long params = 0;
        SafetensorsWriter w = new SafetensorsWriter(out, shardMb * 1_000_000L);
        try {
            params += write(w, "model.embed_tokens.weight", dt, 0.02f, vocab, hidden);
            for (int i = 0; i < layers; i++) {
                String p = "model.layers." + i + ".";
                params += write(w, p + "input_layernorm.weight", dt, -1f, hidden);
                params += write(w, p + "self_attn.q_proj.weight", dt, 0.02f, (long) heads * hd, hidden);
                params += write(w, p + "self_attn.k_proj.weight", dt, 0.02f, (long) kv * hd, hidden);
                params += write(w, p + "self_attn.v_proj.weight", dt, 0.02f, (long) kv * hd, hidden);
                if (arch.equals("qwen2")) {
                    params += write(w, p + "self_attn.q_proj.bias", dt, 0.1f, (long) heads * hd);
                    params += write(w, p + "self_attn.k_proj.bias", dt, 0.1f, (long) kv * hd);
                    params += write(w, p + "self_attn.v_proj.bias", dt, 0.1f, (long) kv * hd);
                }
                params += write(w, p + "self_attn.o_proj.weight", dt, 0.02f, hidden, (long) heads * hd);
                params += write(w, p + "post_attention_layernorm.weight", dt, -1f, hidden);
                params += write(w, p + "mlp.gate_proj.weight", dt, 0.02f, intermediate, hidden);
                params += write(w, p + "mlp.up_proj.weight", dt, 0.02f, intermediate, hidden);
                params += write(w, p + "mlp.down_proj.weight", dt, 0.02f, hidden, intermediate);
                System.err.printf("\rsynth: layer %d/%d", i + 1, layers);
            }
            params += write(w, "model.norm.weight", dt, -1f, hidden);
            if (!tie) params += write(w, "lm_head.weight", dt, 0.02f, vocab, hidden);
        } catch (RuntimeException | Error e) {
            w.abandon(); // closing would finish a partial model.safetensors that looks complete
            throw e;
        }
        w.close();
        Json.writeFile(out.resolve("config.json"), cfg);
        List<String> copied = new ArrayList<>();
        if (tokenizer != null) {
            for (String f : TOKENIZER_FILES) {
                Path src = tokenizer.resolve(f);
                if (Files.isRegularFile(src)) {
                    Files.copy(src, out.resolve(f), StandardCopyOption.REPLACE_EXISTING);
                    copied.add(f);
                }
            }
            if (copied.isEmpty()) throw new QtoolException(tokenizer + ": no tokenizer files (" + String.join(", ", TOKENIZER_FILES) + ")");
        }
        System.err.printf("\rsynth: %s: %,d parameters, %s, %.1f s%s%n", out, params, dt, (System.nanoTime() - t0) / 1e9,
                copied.isEmpty() ? " (no tokenizer: pass --tokenizer DIR to copy one)" : ", tokenizer " + String.join(", ", copied));
        return 0;
    }

    private static void positive(String flag, int value) {
        if (value <= 0) throw new QtoolException(flag + " must be positive, not " + value);
    }

    /** Writes one tensor; std < 0 means "all ones" (norm weights). Returns its element count. */
    private long write(SafetensorsWriter w, String name, DType dt, float std, long... shape) {
        long n = 1;
        for (long d : shape) n *= d;
        long count = n;
        float half = std * (float) Math.sqrt(3); // uniform on [-half, half] has this standard deviation
        long tensorSeed = seed * 0x9E3779B97F4A7C15L ^ name.hashCode();
        int chunk = 1 << 20;
        try (Arena arena = Arena.ofShared()) { // shared: the parallel stream's threads fill it
            MemorySegment seg = arena.allocate(n * dt.bytes, 64);
            IntStream.range(0, (int) ((n + chunk - 1) / chunk)).parallel().forEach(c -> {
                SplittableRandom rnd = new SplittableRandom(tensorSeed + 0x632BE59BD9B4E019L * c);
                long from = (long) c * chunk, to = Math.min(count, from + chunk);
                for (long i = from; i < to; i++) {
                    float v = std < 0 ? 1f : (float) ((rnd.nextDouble() * 2 - 1) * half);
                    short bits = dt == DType.F16 ? Float.floatToFloat16(v) : (short) (Float.floatToRawIntBits(v) >>> 16);
                    seg.setAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, i, bits);
                }
            });
            w.add(name, dt, shape, seg);
        }
        return n;
    }
}
