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
import qtool.convert.exl2.SyntheticStrategy;
import qtool.format.exl2.RandomExl2Linear;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.RandomGptqLinear;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.quantize.Exl2Params;
import qtool.quantize.GptqParams;
import qtool.write.SafetensorsWriter;

/**
 * {@code qtool synth}: a random-weight model in HF layout, for tests and benchmarks of shapes nobody ships small
 * (a 7B shape is made on the GPU host rather than carried there). Linear weights are uniform with standard deviation
 * 0.02 (transformers' initializer range), norms are 1, biases small; every tensor is seeded from --seed and its
 * name, so the same flags give the same bytes, and tensors are filled in parallel chunks.
 *
 * <p>{@code --format exl2 --bpw B} and {@code --format gptq --bits N} write a random quantized checkpoint directly
 * (no fp16 model, no calibration), for speed tests: EXL2 with one option per block from ExLlamaV2's grids at about B
 * bits per weight ({@link SyntheticStrategy}) and lm_head at {@code --head-bits}, or GPTQ (symmetric, v1 zero points,
 * lm_head fp16) with random codes ({@link RandomExl2Linear}, {@link RandomGptqLinear}). Their weights have standard
 * deviation 0.5/√in, so each output of a normalized input has standard deviation 0.5 and fp16 activations stay
 * finite through many layers.
 */
@Command(name = "synth", mixinStandardHelpOptions = true, description = "Write a random-weight Llama-family model (config.json + safetensors), plain or quantized (random EXL2 / GPTQ codes).")
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
    @Option(names = "--format", defaultValue = "hf", description = "hf (float weights), exl2 or gptq (random codes). Default ${DEFAULT-VALUE}.") String format;
    @Option(names = "--bpw", description = "exl2: target bits per weight of the decoder layers (as qtool convert -b).") Double bpw;
    @Option(names = "--head-bits", defaultValue = "6", description = "exl2: lm_head bits (as qtool convert -hb). Default ${DEFAULT-VALUE}.") int headBits;
    @Option(names = "--bits", description = "gptq: 2, 3, 4 or 8.") Integer bits;
    @Option(names = "--group-size", description = "gptq: inputs per group, or -1. Default 128.") Integer groupSize;
    @Option(names = "--act-order", description = "gptq: g_idx in a random processing order (desc_act).") boolean actOrder;

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
        if (!List.of("hf", "exl2", "gptq").contains(format)) throw new QtoolException("--format must be hf, exl2 or gptq, not '" + format + "'");
        if (bpw != null && !format.equals("exl2")) throw new QtoolException("--bpw needs --format exl2");
        if ((bits != null || groupSize != null || actOrder) && !format.equals("gptq")) {
            throw new QtoolException("--bits, --group-size and --act-order need --format gptq");
        }
        if (!format.equals("hf") && dt != DType.F16) throw new QtoolException("--format " + format + " writes fp16 tensors; --dtype must be f16");
        if (format.equals("exl2") && bpw == null) throw new QtoolException("--format exl2 needs --bpw");
        if (format.equals("gptq") && bits == null) throw new QtoolException("--format gptq needs --bits");
        if (format.equals("exl2") && !Exl2Params.HEAD_OPTIONS.containsKey(headBits)) {
            throw new QtoolException("--head-bits must be one of " + Exl2Params.HEAD_OPTIONS.keySet() + ", not " + headBits);
        }

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
        ModelConfig config = ModelConfig.parse(cfg, "synth");
        boolean qkvBias = arch.equals("qwen2");
        SyntheticStrategy exl2 = null;
        GptqParams gptq = null;
        if (format.equals("exl2")) {
            exl2 = SyntheticStrategy.choose(config, qkvBias, bpw);
            Exl2Params.HEAD_OPTIONS.get(headBits).requireStorable(hidden, vocab, "lm_head (" + vocab + "×" + hidden + ")");
            cfg.put("quantization_config", SyntheticStrategy.quantizationConfig(bpw, headBits));
        } else if (format.equals("gptq")) {
            gptq = new GptqParams(bits, groupSize == null ? 128 : groupSize, true, actOrder, GptqParams.DEFAULT_DAMP, GptqParams.DEFAULT_BLOCK_SIZE, false, false, false);
        }
        Linears linears = new Linears(exl2, gptq);

        long t0 = System.nanoTime();
        Files.createDirectories(out);
        long params = 0;
        SafetensorsWriter w = new SafetensorsWriter(out, shardMb * 1_000_000L);
        try {
            params += write(w, "model.embed_tokens.weight", dt, 0.02f, vocab, hidden);
            for (int i = 0; i < layers; i++) {
                String p = "model.layers." + i + ".";
                params += write(w, p + "input_layernorm.weight", dt, -1f, hidden);
                params += linears.write(w, p + "self_attn.q_proj", dt, heads * hd, hidden, qkvBias);
                params += linears.write(w, p + "self_attn.k_proj", dt, kv * hd, hidden, qkvBias);
                params += linears.write(w, p + "self_attn.v_proj", dt, kv * hd, hidden, qkvBias);
                params += linears.write(w, p + "self_attn.o_proj", dt, hidden, heads * hd, false);
                params += write(w, p + "post_attention_layernorm.weight", dt, -1f, hidden);
                params += linears.write(w, p + "mlp.gate_proj", dt, intermediate, hidden, false);
                params += linears.write(w, p + "mlp.up_proj", dt, intermediate, hidden, false);
                params += linears.write(w, p + "mlp.down_proj", dt, hidden, intermediate, false);
                System.err.printf("\rsynth: layer %d/%d", i + 1, layers);
            }
            params += write(w, "model.norm.weight", dt, -1f, hidden);
            if (!tie && exl2 != null) {
                params += linears.writeExl2(w, "lm_head", Exl2Params.HEAD_OPTIONS.get(headBits), vocab, hidden, null);
            } else if (!tie) {
                params += write(w, "lm_head.weight", dt, 0.02f, vocab, hidden);
            }
        } catch (RuntimeException | Error e) {
            w.abandon(); // closing would finish a partial model.safetensors that looks complete
            throw e;
        }
        w.close();
        if (gptq != null) {
            GptqCheckpoint.writeConfigs(out, cfg, GptqCheckpoint.quantizationConfig(gptq, Map.of(), List.of(), CheckpointFormat.GPTQ, false));
        } else {
            Json.writeFile(out.resolve("config.json"), cfg);
        }
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
        String what = exl2 != null ? String.format("EXL2 %.3f bpw (target %.2f), head %d-bit", exl2.bitsPerWeight(), bpw, headBits)
                : gptq != null ? "GPTQ " + bits + "-bit, group " + gptq.groupSize() + (actOrder ? ", act-order" : "") : dt.toString();
        System.err.printf("\rsynth: %s: %,d parameters, %s, %.1f s%s%n", out, params, what, (System.nanoTime() - t0) / 1e9,
                copied.isEmpty() ? " (no tokenizer: pass --tokenizer DIR to copy one)" : ", tokenizer " + String.join(", ", copied));
        return 0;
    }

    /** Writes each linear as the format asks: float weights, or random EXL2 / GPTQ tensors. */
    private final class Linears {
        private final SyntheticStrategy exl2;
        private final GptqParams gptq;

        Linears(SyntheticStrategy exl2, GptqParams gptq) {
            this.exl2 = exl2;
            this.gptq = gptq;
        }

        /** Linear {@code key} [out, in] (and its bias when {@code biased}); returns its parameter count. */
        long write(SafetensorsWriter w, String key, DType dt, int out, int in, boolean biased) {
            if (exl2 == null && gptq == null) {
                long n = SynthCommand.this.write(w, key + ".weight", dt, 0.02f, out, in);
                return biased ? n + SynthCommand.this.write(w, key + ".bias", dt, 0.1f, out) : n;
            }
            float[] bias = biased ? randomBias(key, out) : null;
            if (exl2 != null) return writeExl2(w, key, exl2.options().get(key), out, in, bias);
            GptqCheckpoint.write(w, RandomGptqLinear.of(key, out, in, gptq, CheckpointFormat.GPTQ, quantizedStd(in), seedOf(key)), bias);
            return (long) out * in + (bias == null ? 0 : out);
        }

        long writeExl2(SafetensorsWriter w, String key, Exl2Params option, int out, int in, float[] bias) {
            RandomExl2Linear.of(key, out, in, option, quantizedStd(in), bias, seedOf(key), permSeed(key)).write(w);
            return (long) out * in + (bias == null ? 0 : out);
        }

        /** Linears reading one input (q/k/v, gate/up) share their act-order permutation, as a real conversion's do. */
        private long permSeed(String key) {
            int block = Math.max(key.indexOf(".self_attn."), key.indexOf(".mlp."));
            return block < 0 ? seedOf(key + ".perm") : seedOf(key.substring(0, block) + "." + qtool.model.Forward.Site.of(key) + ".perm");
        }

        private float[] randomBias(String key, int out) {
            SplittableRandom rnd = new SplittableRandom(seedOf(key + ".bias"));
            float[] b = new float[out];
            for (int k = 0; k < out; k++) b[k] = (float) ((rnd.nextDouble() * 2 - 1) * 0.1 * Math.sqrt(3));
            return b;
        }
    }

    /** Standard deviation of a random quantized linear's weights: outputs of a unit-RMS input get 0.5. */
    private static double quantizedStd(int in) {
        return 0.5 / Math.sqrt(in);
    }

    private long seedOf(String name) {
        return seed * 0x9E3779B97F4A7C15L ^ name.hashCode();
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
        long tensorSeed = seedOf(name);
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
