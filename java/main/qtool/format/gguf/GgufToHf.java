package qtool.format.gguf;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import qtool.Progress;
import qtool.QtoolException;
import qtool.load.DType;
import qtool.load.Json;
import qtool.tokenize.TokenizerJsonWriter;
import qtool.tokenize.TokenizerSpec;
import qtool.write.SafetensorsWriter;

/**
 * Converts a llama-architecture GGUF into an HF model directory (LlamaForCausalLM): every tensor dequantized to
 * fp16 (or bf16/fp32), renamed to transformers' names, q/k rows moved back from llama.cpp's RoPE order; config.json,
 * generation_config.json, tokenizer.json and tokenizer_config.json from the metadata.
 *
 * <p>The directory appears complete or not at all: everything is written into a temporary sibling that is renamed
 * into place at the end and deleted on any error. tokenizer.json comes from the {@code tokenizer.ggml.*} metadata
 * ({@link TokenizerJsonWriter}): HF's tokenizers library and qtool then tokenize as llama.cpp does with the GGUF.
 */
public final class GgufToHf {
    private GgufToHf() {}

    private static final Pattern BLOCK = Pattern.compile("blk\\.(\\d+)\\.([a-z_]+)\\.(weight|bias)");

    /** GGUF per-layer tensor base names (llama.cpp's LLM_TENSOR names) → transformers' names under model.layers.N. */
    static final Map<String, String> LAYER_NAMES = Map.of(
            "attn_norm", "input_layernorm",
            "attn_q", "self_attn.q_proj",
            "attn_k", "self_attn.k_proj",
            "attn_v", "self_attn.v_proj",
            "attn_output", "self_attn.o_proj",
            "ffn_norm", "post_attention_layernorm",
            "ffn_gate", "mlp.gate_proj",
            "ffn_up", "mlp.up_proj",
            "ffn_down", "mlp.down_proj");

    /** The transformers name of a llama GGUF tensor, or null when it has none. */
    public static String hfName(String ggufName) {
        switch (ggufName) {
            case "token_embd.weight" -> { return "model.embed_tokens.weight"; }
            case "output_norm.weight" -> { return "model.norm.weight"; }
            case "output.weight" -> { return "lm_head.weight"; }
            default -> {
                Matcher m = BLOCK.matcher(ggufName);
                if (!m.matches() || !LAYER_NAMES.containsKey(m.group(2))) return null;
                return "model.layers." + m.group(1) + "." + LAYER_NAMES.get(m.group(2)) + "." + m.group(3);
            }
        }
    }

    /** The hyperparameters of a llama GGUF, as HF names them. */
    public record Hparams(int hiddenSize, int intermediateSize, int numLayers, int numHeads, int numKvHeads,
                          int headDim, int vocabSize, float rmsNormEps, float ropeTheta, int maxPositionEmbeddings,
                          boolean tiedEmbeddings, boolean attentionBias, String ropeScalingType, float ropeScalingFactor) {}

    public static Hparams hparams(GgufFile g) {
        String arch = g.getString("general.architecture");
        if (!arch.equals("llama")) {
            throw new QtoolException(g.path() + ": architecture '" + arch + "' is not supported for import (supported: llama)");
        }
        String p = arch + ".";
        int hidden = g.getInt(p + "embedding_length");
        int heads = g.getInt(p + "attention.head_count");
        int kvHeads = g.getInt(p + "attention.head_count_kv", heads);
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0) {
            throw new QtoolException(g.path() + ": attention.head_count " + heads + " is not a multiple of head_count_kv " + kvHeads);
        }
        int headDim = g.getInt(p + "attention.key_length", hidden / heads);
        int ropeDims = g.getInt(p + "rope.dimension_count", headDim);
        if (ropeDims != headDim) {
            throw new QtoolException(g.path() + ": rope.dimension_count " + ropeDims + " differs from the head size "
                    + headDim + " (partial rotary embeddings are not supported)");
        }
        if (g.tensor("rope_freqs.weight") != null) {
            throw new QtoolException(g.path() + ": has rope_freqs.weight (Llama 3.1-style RoPE scaling), which import does not support yet");
        }
        GgufTensor embd = g.requireTensor("token_embd.weight");
        if (embd.nDims() != 2 || embd.dims()[0] != hidden) {
            throw new QtoolException(g.path() + ": token_embd.weight has dims " + java.util.Arrays.toString(embd.dims())
                    + ", expected [" + hidden + ", vocab]");
        }
        String scalingType = g.getString(p + "rope.scaling.type", "none");
        float scalingFactor = (float) g.getDouble(p + "rope.scaling.factor", 1.0);
        if (!scalingType.equals("none") && !scalingType.equals("linear")) {
            throw new QtoolException(g.path() + ": rope.scaling.type '" + scalingType + "' is not supported (none, linear)");
        }
        return new Hparams(hidden, g.getInt(p + "feed_forward_length"), g.getInt(p + "block_count"), heads, kvHeads,
                headDim, Math.toIntExact(embd.dims()[1]), (float) g.getDouble(p + "attention.layer_norm_rms_epsilon", 1e-5),
                (float) g.getDouble(p + "rope.freq_base", 10000.0), g.getInt(p + "context_length", 2048),
                g.tensor("output.weight") == null, g.tensor("blk.0.attn_q.bias") != null, scalingType, scalingFactor);
    }

    /** config.json of the imported model. */
    public static Map<String, Object> configJson(GgufFile g, Hparams h, String torchDtype) {
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("architectures", List.of("LlamaForCausalLM"));
        c.put("model_type", "llama");
        c.put("hidden_size", h.hiddenSize());
        c.put("intermediate_size", h.intermediateSize());
        c.put("num_hidden_layers", h.numLayers());
        c.put("num_attention_heads", h.numHeads());
        c.put("num_key_value_heads", h.numKvHeads());
        c.put("head_dim", h.headDim());
        c.put("vocab_size", h.vocabSize());
        c.put("max_position_embeddings", h.maxPositionEmbeddings());
        c.put("rms_norm_eps", (double) h.rmsNormEps()); // the float32 value, exactly, as transformers writes it
        c.put("rope_theta", (double) h.ropeTheta());
        if (h.ropeScalingType().equals("linear")) {
            c.put("rope_scaling", Map.of("rope_type", "linear", "factor", (double) h.ropeScalingFactor()));
        }
        c.put("hidden_act", "silu");
        c.put("attention_bias", h.attentionBias());
        c.put("mlp_bias", false);
        c.put("tie_word_embeddings", h.tiedEmbeddings());
        if (g.has(GgufTokenizer.BOS)) c.put("bos_token_id", g.getInt(GgufTokenizer.BOS));
        if (g.has(GgufTokenizer.EOS)) c.put("eos_token_id", g.getInt(GgufTokenizer.EOS));
        c.put("torch_dtype", torchDtype);
        return c;
    }

    /** tokenizer_config.json: the special tokens by their strings, BOS/EOS behaviour and the chat template. */
    public static Map<String, Object> tokenizerConfigJson(GgufFile g, TokenizerSpec s, int contextLength) {
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("tokenizer_class", "PreTrainedTokenizerFast");
        if (s.bos() >= 0) c.put("bos_token", s.tokens()[s.bos()]);
        if (s.eos() >= 0) c.put("eos_token", s.tokens()[s.eos()]);
        if (s.unk() >= 0) c.put("unk_token", s.tokens()[s.unk()]);
        if (s.pad() >= 0) c.put("pad_token", s.tokens()[s.pad()]);
        c.put("add_bos_token", s.addBos());
        c.put("add_eos_token", s.addEos());
        c.put("model_max_length", contextLength);
        c.put("clean_up_tokenization_spaces", false);
        if (g.has(GgufTokenizer.CHAT_TEMPLATE)) c.put("chat_template", g.getString(GgufTokenizer.CHAT_TEMPLATE));
        return c;
    }

    /** Element types an import can write, with their torch_dtype names. */
    public static String torchDtype(DType d) {
        return switch (d) {
            case F16 -> "float16";
            case BF16 -> "bfloat16";
            case F32 -> "float32";
            default -> throw new IllegalArgumentException("import writes F16, BF16 or F32, not " + d);
        };
    }

    /**
     * Converts {@code gguf} into the new directory {@code out} (which must not exist, or be empty).
     *
     * @param shardBytes safetensors shard size (0: one file)
     * @param log        progress output (stderr in the CLI), or null
     */
    public static void convert(Path gguf, Path out, DType dtype, long shardBytes, PrintStream log) {
        String torchDtype = torchDtype(dtype);
        checkTarget(out);
        Path tmp = out.toAbsolutePath().resolveSibling("." + out.getFileName() + ".tmp-" + ProcessHandle.current().pid());
        deleteRecursively(tmp);
        try (GgufFile g = GgufFile.open(gguf)) {
            Hparams h = hparams(g);
            List<GgufTensor> tensors = new ArrayList<>();
            for (GgufTensor t : g.tensors()) {
                if (hfName(t.name()) == null) {
                    throw new QtoolException(gguf + ": tensor '" + t.name() + "' has no transformers counterpart in a llama model");
                }
                checkShape(g, h, t);
                tensors.add(t);
            }
            TokenizerSpec tok = g.has(GgufTokenizer.MODEL) ? GgufTokenizer.spec(g) : null;
            if (tok != null && tok.tokens().length != h.vocabSize()) { // llama.cpp refuses such a file too
                throw new QtoolException(gguf + ": " + GgufTokenizer.TOKENS + " has " + tok.tokens().length
                        + " tokens, but token_embd.weight has " + h.vocabSize() + " rows (one per token)");
            }
            Files.createDirectories(tmp);
            long total = 0;
            for (GgufTensor t : tensors) total += t.elementCount();
            SafetensorsWriter w = new SafetensorsWriter(tmp, shardBytes, Map.of("source", "qtool gguf import"));
            try (Progress progress = new Progress("import", total, "weights", log == null ? nullStream() : log)) {
                for (GgufTensor t : tensors) {
                    try (Arena arena = Arena.ofShared()) {
                        MemorySegment data = arena.allocate(t.elementCount() * dtype.bytes, 64);
                        convertTensor(g, h, t, dtype, data);
                        w.add(hfName(t.name()), dtype, t.shape(), data);
                    }
                    progress.step(t.elementCount());
                }
                w.close();
            } catch (RuntimeException e) {
                w.abandon();
                throw e;
            }
            Json.writeFile(tmp.resolve("config.json"), configJson(g, h, torchDtype));
            Map<String, Object> gen = new LinkedHashMap<>();
            if (g.has(GgufTokenizer.BOS)) gen.put("bos_token_id", g.getInt(GgufTokenizer.BOS));
            if (g.has(GgufTokenizer.EOS)) gen.put("eos_token_id", g.getInt(GgufTokenizer.EOS));
            Json.writeFile(tmp.resolve("generation_config.json"), gen);
            if (tok != null) {
                try {
                    TokenizerJsonWriter.write(tok, tmp); // tokenizer.json (and a plain tokenizer_config.json, replaced below)
                } catch (QtoolException e) {
                    if (log != null) log.println("gguf import: no tokenizer.json: " + e.getMessage());
                }
                Json.writeFile(tmp.resolve("tokenizer_config.json"), tokenizerConfigJson(g, tok, h.maxPositionEmbeddings()));
            }
            if (Files.isDirectory(out)) Files.delete(out); // empty, checked above
            Files.move(tmp, out, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            deleteRecursively(tmp);
            throw new QtoolException(out + ": cannot write: " + e.getMessage());
        } catch (RuntimeException | Error e) {
            deleteRecursively(tmp);
            throw e;
        }
    }

    /**
     * Imports {@code gguf} into a new temporary directory that is deleted when the JVM exits, for commands that are
     * given a .gguf where they read an HF directory. Returns the model directory.
     */
    public static Path convertToTemporary(Path gguf, DType dtype, PrintStream log) {
        Path base;
        try {
            base = Files.createTempDirectory("qtool-gguf-");
        } catch (IOException e) {
            throw new QtoolException("cannot create a temporary directory to import " + gguf + ": " + e.getMessage());
        }
        Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteRecursively(base)));
        Path dir = base.resolve("model");
        try {
            convert(gguf, dir, dtype, 0, log);
        } catch (RuntimeException | Error e) {
            deleteRecursively(base);
            throw e;
        }
        return dir;
    }

    private static void checkTarget(Path out) {
        if (Files.exists(out)) {
            if (!Files.isDirectory(out)) throw new QtoolException(out + ": exists and is not a directory");
            try (DirectoryStream<Path> s = Files.newDirectoryStream(out)) {
                if (s.iterator().hasNext()) throw new QtoolException(out + ": exists and is not empty");
            } catch (IOException e) {
                throw new QtoolException(out + ": cannot read: " + e.getMessage());
            }
        }
    }

    private static void checkShape(GgufFile g, Hparams h, GgufTensor t) {
        Matcher m = BLOCK.matcher(t.name());
        if (m.matches() && Integer.parseInt(m.group(1)) >= h.numLayers()) {
            throw new QtoolException(g.path() + ": tensor '" + t.name() + "' is beyond block_count " + h.numLayers());
        }
        long rows = t.rowCount();
        if (t.name().matches("blk\\.\\d+\\.attn_q\\.(weight|bias)") && rows != (long) h.numHeads() * h.headDim()) {
            throw new QtoolException(g.path() + ": " + t.name() + " has " + rows + " rows, expected heads x head size = "
                    + h.numHeads() * h.headDim());
        }
        if (t.name().matches("blk\\.\\d+\\.attn_k\\.(weight|bias)") && rows != (long) h.numKvHeads() * h.headDim()) {
            throw new QtoolException(g.path() + ": " + t.name() + " has " + rows + " rows, expected kv heads x head size = "
                    + h.numKvHeads() * h.headDim());
        }
    }

    /**
     * Number of heads whose rows llama.cpp's converter permuted ({@code convert_hf_to_gguf.py}'s {@code permute}:
     * each head's rows reordered from [first half; second half] to interleaved pairs, the GPT-J RoPE layout), or 0.
     * For a bias (one "row" per output) the same permutation applies to its elements.
     */
    static int permutedHeads(String ggufName, Hparams h) {
        if (ggufName.endsWith(".attn_q.weight") || ggufName.endsWith(".attn_q.bias")) return h.numHeads();
        if (ggufName.endsWith(".attn_k.weight") || ggufName.endsWith(".attn_k.bias")) return h.numKvHeads();
        return 0;
    }

    /**
     * The GGUF row holding HF row {@code r} of a permuted q/k projection of {@code heads} heads of {@code headDim}
     * rows. The converter maps HF row (head, half a, index b) to GGUF row head*headDim + 2b + a.
     */
    static long ggufRowOf(long r, int headDim) {
        long head = r / headDim;
        int within = (int) (r % headDim), halfDim = headDim / 2;
        int a = within / halfDim, b = within % halfDim;
        return head * headDim + 2L * b + a;
    }

    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfFloat LE32F = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** Dequantizes {@code t} into {@code out} as HF stores it (rows in HF order, {@code dtype} elements). */
    static void convertTensor(GgufFile g, Hparams h, GgufTensor t, DType dtype, MemorySegment out) {
        int heads = permutedHeads(t.name(), h);
        boolean bias = t.name().endsWith(".bias");
        int rl = Math.toIntExact(t.rowLength());
        long rows = t.rowCount();
        AtomicReference<String> overflow = new AtomicReference<>();
        if (bias && heads > 0) { // a 1-D bias: permute its elements like rows of length 1
            float[] x = GgmlCodec.dequantize(t);
            float[] y = new float[x.length];
            for (int r = 0; r < x.length; r++) y[r] = x[(int) ggufRowOf(r, h.headDim())];
            store(y, 0, y.length, dtype, out, 0, t.name(), overflow);
        } else {
            final int rowsPerTask = Math.max(1, 65536 / Math.max(1, rl));
            long tasks = (rows + rowsPerTask - 1) / rowsPerTask;
            IntStream.range(0, Math.toIntExact(tasks)).parallel().forEach(task -> {
                float[] row = new float[rl];
                long end = Math.min(rows, (long) (task + 1) * rowsPerTask);
                for (long r = (long) task * rowsPerTask; r < end; r++) {
                    long src = heads > 0 ? ggufRowOf(r, h.headDim()) : r;
                    GgmlCodec.dequantizeRow(t.type(), t.data(), src * t.rowBytes(), row, 0, rl);
                    store(row, 0, rl, dtype, out, r * rl * dtype.bytes, t.name(), overflow);
                }
            });
        }
        if (overflow.get() != null) {
            throw new QtoolException(g.path() + ": tensor '" + t.name() + "' holds " + overflow.get()
                    + ", beyond fp16's range; import with --dtype bfloat16 or float32");
        }
    }

    private static void store(float[] x, int from, int n, DType dtype, MemorySegment out, long off, String name,
                              AtomicReference<String> overflow) {
        switch (dtype) {
            case F32 -> MemorySegment.copy(x, from, out, LE32F, off, n);
            case BF16 -> {
                for (int i = 0; i < n; i++) out.set(LE16, off + 2L * i, GgmlCodec.floatToBf16(x[from + i]));
            }
            case F16 -> {
                for (int i = 0; i < n; i++) {
                    short hbits = Float.floatToFloat16(x[from + i]);
                    if ((hbits & 0x7c00) == 0x7c00 && Float.isFinite(x[from + i])) overflow.compareAndSet(null, Float.toString(x[from + i]));
                    out.set(LE16, off + 2L * i, hbits);
                }
            }
            default -> throw new IllegalArgumentException(dtype.toString());
        }
    }

    private static PrintStream nullStream() {
        return new PrintStream(java.io.OutputStream.nullOutputStream());
    }

    static void deleteRecursively(Path p) {
        if (!Files.exists(p)) return;
        try (Stream<Path> s = Files.walk(p)) {
            for (Path q : s.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(q);
        } catch (IOException ignored) {
            // best effort: the caller reports the original error
        }
    }
}
