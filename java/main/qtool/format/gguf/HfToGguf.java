package qtool.format.gguf;

import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.IntStream;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.load.Weights;
import qtool.tokenize.HfTokenizerSpec;
import qtool.tokenize.TokenizerSpec;

/**
 * Writes an HF Llama model directory as the GGUF that llama.cpp's {@code convert_hf_to_gguf.py} followed by
 * {@code llama-quantize} makes of it:
 * <ul>
 * <li>metadata: {@code general.*}, the {@code llama.*} hyperparameters, {@code general.file_type},
 *     {@code general.quantization_version} 2, and the {@code tokenizer.ggml.*} vocabulary with the chat template
 *     ({@link HfTokenizerSpec});</li>
 * <li>tensors under llama.cpp's names, q_proj/k_proj rows (and biases) permuted into llama.cpp's RoPE order
 *     ({@code LlamaModel.permute}), in llama-quantize's order (by layer, then name); norms and other 1-D tensors
 *     F32; a Llama-3 {@code rope_scaling} as the {@code rope_freqs} tensor;</li>
 * <li>each quantizable tensor in the type {@link LlamaQuantTypes} picks for the file type, encoded by
 *     {@link GgmlCodec}: from the same floats, the same bytes as llama-quantize.</li>
 * </ul>
 * Importance ({@link Options#importance}) weights the quantizers' error as llama-quantize's {@code --imatrix} does:
 * one non-negative value per input column of a weight, keyed by the GGUF name ("blk.0.attn_q.weight") or the
 * transformers name ("model.layers.0.self_attn.q_proj.weight"). Rows are quantized in parallel; the result does not
 * depend on the thread count. The file appears only when complete ({@link GgufWriter}).
 */
public final class HfToGguf {
    private HfToGguf() {}

    /**
     * @param type          the llama.cpp file type (F16, Q8_0, Q4_K_M...)
     * @param pure          llama-quantize's --pure: the default type for every quantizable tensor, no mix
     * @param outputType    the output head's type (--output-tensor-type), or null
     * @param embeddingType the token embedding's type (--token-embedding-type), or null
     * @param importance    per-tensor importance (see the class comment), or null
     * @param name          general.name, or null for the directory's name
     * @param tokenizerPre  tokenizer.ggml.pre to use instead of the detected one, or null
     */
    public record Options(LlamaFileType type, boolean pure, GgmlType outputType, GgmlType embeddingType,
                          Map<String, float[]> importance, String name, String tokenizerPre) {
        public static Options of(LlamaFileType type) {
            return new Options(type, false, null, null, null, null, null);
        }

        public Options withImportance(Map<String, float[]> importance) {
            return new Options(type, pure, outputType, embeddingType, importance, name, tokenizerPre);
        }
    }

    /**
     * One tensor of the output: GGUF name, the transformers tensor its floats come from (null for the computed
     * rope_freqs), type, ggml dims, and the importance its quantizer weights errors with (or null).
     */
    public record Planned(String name, String hfName, GgmlType type, long[] dims, float[] importance) {}

    /** What was written: the tensors with their types, the fallbacks taken, the file size. */
    public record Result(List<Planned> tensors, List<LlamaQuantTypes.Fallback> fallbacks, long fileBytes, double seconds) {
        public Map<GgmlType, Integer> typeCounts() {
            Map<GgmlType, Integer> m = new TreeMap<>();
            for (Planned p : tensors) m.merge(p.type(), 1, Integer::sum);
            return m;
        }
    }

    private static final Pattern LAYER = Pattern.compile("model\\.layers\\.(\\d+)\\.(.+)\\.(weight|bias)");

    /** transformers name under model.layers.N → llama.cpp base name (the inverse of {@link GgufToHf#LAYER_NAMES}). */
    private static final Map<String, String> GGUF_LAYER_NAMES = new HashMap<>();

    static {
        GgufToHf.LAYER_NAMES.forEach((gguf, hf) -> GGUF_LAYER_NAMES.put(hf, gguf));
    }

    /** The llama.cpp name of a transformers tensor of a Llama model, or null when it has none. */
    public static String ggufName(String hfName) {
        switch (hfName) {
            case "model.embed_tokens.weight" -> { return "token_embd.weight"; }
            case "model.norm.weight" -> { return "output_norm.weight"; }
            case "lm_head.weight" -> { return "output.weight"; }
            default -> {
                Matcher m = LAYER.matcher(hfName);
                if (!m.matches() || !GGUF_LAYER_NAMES.containsKey(m.group(2))) return null;
                return "blk." + m.group(1) + "." + GGUF_LAYER_NAMES.get(m.group(2)) + "." + m.group(3);
            }
        }
    }

    /** The HF row that GGUF row {@code g} of a permuted q/k projection holds (the converter's permute). */
    static long hfRowOf(long g, int headDim) {
        long head = g / headDim;
        int within = (int) (g % headDim), halfDim = headDim / 2;
        int b = within / 2, a = within % 2;
        return head * headDim + (long) a * halfDim + b;
    }

    /** Checks the directory and decides every tensor's type, without writing anything. */
    public static List<Planned> plan(Path dir, Options o) {
        Map<String, Object> raw = configJson(dir);
        ModelConfig c = ModelConfig.parse(raw, dir.resolve("config.json").toString());
        try (Weights w = Weights.open(dir)) {
            return plan(dir, c, w, o, new ArrayList<>());
        }
    }

    static Map<String, Object> configJson(Path dir) {
        Path file = dir.resolve("config.json");
        if (!Files.isDirectory(dir)) throw new QtoolException(dir + ": not a directory (gguf export reads an HF model directory)");
        if (!Files.isRegularFile(file)) throw new QtoolException(file + ": no such file (an HF model directory needs config.json)");
        Map<String, Object> raw = Json.readObject(file);
        Object type = raw.get("model_type");
        Object arch = raw.get("architectures");
        boolean llama = "llama".equals(type) || "mistral".equals(type);
        if (arch instanceof List<?> l && !l.isEmpty()) {
            llama &= l.stream().allMatch(a -> "LlamaForCausalLM".equals(a) || "MistralForCausalLM".equals(a));
        }
        if (!llama) {
            throw new QtoolException(file + ": model_type " + (type == null ? "(none)" : "'" + type + "'")
                    + (arch != null ? ", architectures " + arch : "") + " is not supported by gguf export (llama: LlamaForCausalLM, MistralForCausalLM)");
        }
        return raw;
    }

    private static List<Planned> plan(Path dir, ModelConfig c, Weights w, Options o, List<LlamaQuantTypes.Fallback> fallbacks) {
        Map<String, String> hfByGguf = new HashMap<>();
        for (var e : w.all().entrySet()) {
            String hf = e.getKey();
            if (hf.endsWith("rotary_emb.inv_freq")) continue; // recomputed by llama.cpp, as the converter skips it
            if (hf.equals("lm_head.weight") && c.tieWordEmbeddings()) continue;
            if (hf.endsWith(".qweight") || hf.endsWith(".qzeros") || hf.endsWith(".q_weight")) {
                throw new QtoolException(dir + ": tensor '" + hf + "' is quantized (GPTQ/EXL2); gguf export needs float weights");
            }
            String g = ggufName(hf);
            if (g == null) throw new QtoolException(dir + ": tensor '" + hf + "' has no llama.cpp counterpart in a llama model");
            Matcher m = LAYER.matcher(hf);
            if (m.matches() && Integer.parseInt(m.group(1)) >= c.numLayers()) {
                throw new QtoolException(dir + ": tensor '" + hf + "' is beyond num_hidden_layers " + c.numLayers());
            }
            if (!e.getValue().dtype().isFloat()) {
                throw new QtoolException(dir + ": tensor '" + hf + "' is " + e.getValue().dtype() + ", not a float type");
            }
            hfByGguf.put(g, hf);
        }
        List<String> required = new ArrayList<>(List.of("token_embd.weight", "output_norm.weight"));
        if (!c.tieWordEmbeddings()) required.add("output.weight");
        for (int l = 0; l < c.numLayers(); l++) {
            for (String t : List.of("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")) {
                required.add("blk." + l + "." + t + ".weight");
            }
        }
        for (String r : required) {
            if (!hfByGguf.containsKey(r)) {
                String hf = r.equals("output.weight") ? "lm_head.weight (config.json says tie_word_embeddings false)"
                        : GgufToHf.hfName(r);
                throw new QtoolException(dir + ": tensor '" + hf + "' is missing");
            }
        }
        List<String> names = new ArrayList<>(hfByGguf.keySet());
        boolean ropeFreqs = c.ropeScaling().type().equals("llama3");
        if (ropeFreqs) names.add("rope_freqs.weight");
        names.sort(LlamaQuantTypes.llamaQuantizeOrder());

        boolean hasImatrix = o.importance() != null && !o.importance().isEmpty();
        LlamaQuantTypes types = new LlamaQuantTypes(o.type(), c.numLayers(), c.numHeads(), c.numKvHeads(), names, hasImatrix,
                o.pure(), o.outputType(), o.embeddingType());
        List<Planned> out = new ArrayList<>();
        for (String g : names) {
            String hf = hfByGguf.get(g);
            long[] dims;
            if (hf == null) {
                dims = new long[] {c.headDim() / 2}; // rope_freqs
            } else {
                long[] shape = w.get(hf).shape();
                dims = new long[shape.length];
                for (int i = 0; i < shape.length; i++) dims[i] = shape[shape.length - 1 - i];
                checkShape(dir, c, g, hf, shape);
            }
            GgmlType t = types.typeOf(g, dims, dims.length >= 2 ? GgmlType.F16 : GgmlType.F32);
            if (dims.length < 2) t = GgmlType.F32;
            float[] imp = null;
            if (hasImatrix && t.isQuantized()) {
                imp = o.importance().get(g);
                if (imp == null && hf != null) imp = o.importance().get(hf);
                if (imp != null) {
                    if (imp.length != dims[0]) {
                        throw new QtoolException("importance for '" + g + "' has " + imp.length + " values, the tensor's rows have " + dims[0]);
                    }
                    for (float v : imp) {
                        if (!Float.isFinite(v) || v < 0) throw new QtoolException("importance for '" + g + "' holds " + v + " (must be finite and >= 0)");
                    }
                }
            }
            if (imp == null && types.requiresImatrix(g, t)) {
                throw new QtoolException(o.type() + " quantizes '" + g + "' to Q2_K, which needs importance (--imatrix), as llama.cpp requires");
            }
            out.add(new Planned(g, hf, t, dims, imp));
        }
        fallbacks.addAll(types.fallbacks());
        return out;
    }

    static void checkShape(Path dir, ModelConfig c, String g, String hf, long[] shape) {
        long rows = shape[0];
        long cols = shape.length > 1 ? shape[1] : 1;
        String expected = null;
        if (g.endsWith("attn_q.weight") && (rows != c.qDim() || cols != c.hiddenSize())) expected = c.qDim() + " x " + c.hiddenSize();
        if (g.endsWith("attn_k.weight") && (rows != c.kvDim() || cols != c.hiddenSize())) expected = c.kvDim() + " x " + c.hiddenSize();
        if (g.endsWith("attn_v.weight") && (rows != c.kvDim() || cols != c.hiddenSize())) expected = c.kvDim() + " x " + c.hiddenSize();
        if (g.endsWith("attn_q.bias") && rows != c.qDim()) expected = String.valueOf(c.qDim());
        if (g.endsWith("attn_k.bias") && rows != c.kvDim()) expected = String.valueOf(c.kvDim());
        if (g.equals("token_embd.weight") && (rows != c.vocabSize() || cols != c.hiddenSize())) expected = c.vocabSize() + " x " + c.hiddenSize();
        if (g.equals("output.weight") && (rows != c.vocabSize() || cols != c.hiddenSize())) expected = c.vocabSize() + " x " + c.hiddenSize();
        if (g.endsWith("ffn_down.weight") && (rows != c.hiddenSize() || cols != c.intermediateSize())) expected = c.hiddenSize() + " x " + c.intermediateSize();
        if ((g.endsWith("ffn_gate.weight") || g.endsWith("ffn_up.weight")) && (rows != c.intermediateSize() || cols != c.hiddenSize())) {
            expected = c.intermediateSize() + " x " + c.hiddenSize();
        }
        if (g.endsWith("norm.weight") && (shape.length != 1 || rows != c.hiddenSize())) expected = String.valueOf(c.hiddenSize());
        if (expected != null) {
            throw new QtoolException(dir + ": tensor '" + hf + "' has shape " + java.util.Arrays.toString(shape) + ", config.json implies " + expected);
        }
    }

    /**
     * Exports {@code dir} to {@code out}.
     *
     * @param log progress and warnings (stderr in the CLI), or null
     */
    public static Result convert(Path dir, Path out, Options o, PrintStream log) {
        PrintStream err = log != null ? log : new PrintStream(OutputStream.nullOutputStream());
        long t0 = System.nanoTime();
        Map<String, Object> raw = configJson(dir);
        ModelConfig c = ModelConfig.parse(raw, dir.resolve("config.json").toString());
        TokenizerSpec tok = HfTokenizerSpec.read(dir, c.vocabSize(), o.tokenizerPre());
        String chatTemplate = HfTokenizerSpec.chatTemplate(dir);
        try (Weights w = Weights.open(dir)) {
            List<LlamaQuantTypes.Fallback> fallbacks = new ArrayList<>();
            List<Planned> plan = plan(dir, c, w, o, fallbacks);
            for (String line : describeFallbacks(fallbacks)) err.println("gguf export: " + line);
            if (o.importance() != null && !o.importance().isEmpty()) {
                // llama-quantize quantizes a tensor the imatrix lacks without it, and says so; so does this
                List<String> without = new ArrayList<>();
                int quantized = 0;
                for (Planned p : plan) {
                    if (!p.type().isQuantized() || p.type() == GgmlType.Q8_0) continue;
                    quantized++;
                    if (p.importance() == null) without.add(p.name());
                }
                if (!without.isEmpty()) {
                    err.println("gguf export: no importance for " + without.size() + " of " + quantized + " tensors that use it ("
                            + String.join(", ", without.subList(0, Math.min(4, without.size()))) + (without.size() > 4 ? ", ..." : "") + ")");
                }
            }
            long total = 0;
            for (Planned p : plan) total += elements(p.dims());
            GgufWriter writer = new GgufWriter(out);
            try (Progress progress = new Progress("export " + o.type().name(), total, "weights", err)) {
                putMetadata(writer, c, dir, o, tok, chatTemplate);
                for (Planned p : plan) writer.addTensor(p.name(), p.type(), p.dims());
                for (Planned p : plan) {
                    writeTensor(writer, c, w, p);
                    progress.step(elements(p.dims()));
                }
                writer.close();
            } catch (RuntimeException | Error e) {
                writer.abort();
                throw e;
            }
            long bytes = sizeOrUnknown(out);
            return new Result(plan, fallbacks, bytes, (System.nanoTime() - t0) / 1e9);
        }
    }

    /** One line per kind of fallback: "166 tensors of 576 columns (not a multiple of 256): Q5_0 for Q4_K, e.g. ...". */
    static List<String> describeFallbacks(List<LlamaQuantTypes.Fallback> fallbacks) {
        Map<String, List<String>> groups = new LinkedHashMap<>();
        for (LlamaQuantTypes.Fallback f : fallbacks) {
            String key = f.columns() + " columns (not a multiple of " + f.wanted().blockSize + "): " + f.used() + " for " + f.wanted();
            groups.computeIfAbsent(key, k -> new ArrayList<>()).add(f.tensor());
        }
        List<String> out = new ArrayList<>();
        groups.forEach((k, names) -> out.add((names.size() == 1 ? names.getFirst() + ": " : names.size() + " tensors of ") + k
                + (names.size() > 1 ? ", e.g. " + names.getFirst() : "")));
        return out;
    }

    static long elements(long[] dims) {
        long n = 1;
        for (long d : dims) n *= d;
        return n;
    }

    /** The metadata convert_hf_to_gguf.py writes for a Llama model, in its order. */
    static void putMetadata(GgufWriter w, ModelConfig c, Path dir, Options o, TokenizerSpec tok, String chatTemplate) {
        w.putString("general.architecture", "llama");
        w.putString("general.type", "model");
        String name = o.name();
        if (name == null) {
            Path fileName = dir.toAbsolutePath().normalize().getFileName();
            name = fileName == null ? "model" : fileName.toString();
        }
        w.putString("general.name", name);
        w.putUint32("llama.block_count", c.numLayers());
        w.putUint32("llama.context_length", c.maxPositionEmbeddings());
        w.putUint32("llama.embedding_length", c.hiddenSize());
        w.putUint32("llama.feed_forward_length", c.intermediateSize());
        w.putUint32("llama.attention.head_count", c.numHeads());
        w.putUint32("llama.attention.head_count_kv", c.numKvHeads());
        w.putFloat32("llama.rope.freq_base", (float) c.ropeTheta());
        w.putFloat32("llama.attention.layer_norm_rms_epsilon", c.rmsNormEps());
        if (c.headDim() != c.hiddenSize() / c.numHeads()) {
            w.putUint32("llama.attention.key_length", c.headDim());
            w.putUint32("llama.attention.value_length", c.headDim());
        }
        w.putUint32("general.file_type", o.type().id);
        w.putUint32("llama.vocab_size", c.vocabSize());
        w.putUint32("llama.rope.dimension_count", c.headDim());
        if (c.ropeScaling().type().equals("linear")) {
            w.putString("llama.rope.scaling.type", "linear");
            w.putFloat32("llama.rope.scaling.factor", (float) c.ropeScaling().factor());
        }
        w.putUint32("general.quantization_version", 2);
        GgufTokenizer.put(w, tok);
        if (chatTemplate != null) w.putString(GgufTokenizer.CHAT_TEMPLATE, chatTemplate);
    }

    /** Rows per parallel task: enough work to amortize scheduling, few enough to spread over the cores. */
    private static final int ROWS_PER_TASK = 16;
    /** Bytes of output buffered before they go to the writer. */
    private static final long CHUNK_BYTES = 16L << 20;

    static void writeTensor(GgufWriter writer, ModelConfig c, Weights w, Planned p) {
        if (p.hfName() == null) { // rope_freqs
            float[] f = ropeFreqFactors(c);
            byte[] b = new byte[f.length * 4];
            GgmlCodec.quantizeRow(GgmlType.F32, f, 0, f.length, null, MemorySegment.ofArray(b), 0);
            writer.writeTensor(p.name(), MemorySegment.ofArray(b));
            return;
        }
        Tensor src = w.get(p.hfName());
        int rl = Math.toIntExact(p.dims()[0]);
        long rows = p.dims().length == 1 ? 1 : elements(p.dims()) / rl;
        boolean permuteQ = p.name().startsWith("blk.") && p.name().contains(".attn_q.");
        boolean permuteK = p.name().startsWith("blk.") && p.name().contains(".attn_k.");
        int heads = permuteQ ? c.numHeads() : permuteK ? c.numKvHeads() : 0;
        GgmlType type = p.type();
        long rowBytes = type.byteSize(rl);
        if (heads > 0 && p.dims().length == 1) { // a q/k bias: permute its elements like rows of length 1
            float[] x = src.toFloatArray();
            float[] y = new float[x.length];
            for (int i = 0; i < y.length; i++) y[i] = x[(int) hfRowOf(i, c.headDim())];
            byte[] b = new byte[Math.toIntExact(type.byteSize(y.length))];
            GgmlCodec.quantizeRow(type, y, 0, y.length, null, MemorySegment.ofArray(b), 0);
            writer.writeTensor(p.name(), MemorySegment.ofArray(b));
            return;
        }
        long rowsPerChunk = Math.max(1, Math.min(rows, CHUNK_BYTES / Math.max(1, rowBytes)));
        byte[] chunk = new byte[Math.toIntExact(rowsPerChunk * rowBytes)];
        MemorySegment chunkSeg = MemorySegment.ofArray(chunk);
        for (long r0 = 0; r0 < rows; r0 += rowsPerChunk) {
            long start = r0;
            int n = (int) Math.min(rowsPerChunk, rows - r0);
            int tasks = (n + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
            IntStream.range(0, tasks).parallel().forEach(task -> {
                float[] x = new float[rl];
                int end = Math.min(n, (task + 1) * ROWS_PER_TASK);
                for (int i = task * ROWS_PER_TASK; i < end; i++) {
                    long g = start + i;
                    long hfRow = heads > 0 ? hfRowOf(g, c.headDim()) : g;
                    readRow(src, hfRow * rl, x, rl);
                    GgmlCodec.quantizeRow(type, x, 0, rl, p.importance(), chunkSeg, (long) i * rowBytes);
                }
            });
            writer.write(chunkSeg.asSlice(0, n * rowBytes));
        }
    }

    private static void readRow(Tensor t, long from, float[] dst, int n) {
        MemorySegment d = t.data();
        switch (t.dtype()) {
            case F32 -> MemorySegment.copy(d, Tensor.F32, from * 4, dst, 0, n);
            case F16 -> {
                for (int i = 0; i < n; i++) dst[i] = Float.float16ToFloat(d.getAtIndex(Tensor.F16, from + i));
            }
            case BF16 -> {
                for (int i = 0; i < n; i++) dst[i] = Float.intBitsToFloat(d.getAtIndex(Tensor.F16, from + i) << 16);
            }
            default -> {
                for (int i = 0; i < n; i++) dst[i] = t.getFloat(from + i);
            }
        }
    }

    /** convert_hf_to_gguf.py's rope_freqs for Llama 3 rope_scaling: a factor per frequency (1 high, factor low). */
    static float[] ropeFreqFactors(ModelConfig c) {
        ModelConfig.RopeScaling s = c.ropeScaling();
        int dim = c.headDim();
        float[] out = new float[dim / 2];
        double lowWavelen = s.originalMaxPositionEmbeddings() / s.lowFreqFactor();
        double highWavelen = s.originalMaxPositionEmbeddings() / s.highFreqFactor();
        for (int j = 0; j < out.length; j++) {
            float freq = (float) (1.0 / Math.pow(c.ropeTheta(), (float) (2 * j) / dim));
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen) out[j] = 1f;
            else if (wavelen > lowWavelen) out[j] = (float) s.factor();
            else {
                double smooth = (s.originalMaxPositionEmbeddings() / wavelen - s.lowFreqFactor()) / (s.highFreqFactor() - s.lowFreqFactor());
                out[j] = (float) (1 / ((1 - smooth) / s.factor() + smooth));
            }
        }
        return out;
    }

    /** Per GGUF type, how many tensors and parameters a plan holds (for the CLI summary). */
    public static Map<GgmlType, long[]> summary(List<Planned> plan) {
        Map<GgmlType, long[]> m = new TreeMap<>();
        for (Planned p : plan) {
            long[] v = m.computeIfAbsent(p.type(), k -> new long[2]);
            v[0]++;
            v[1] += elements(p.dims());
        }
        return m;
    }

    /** The written file's size for the report, −1 if it cannot be read. */
    static long sizeOrUnknown(java.nio.file.Path file) {
        try {
            return Files.size(file);
        } catch (java.io.IOException e) {
            return -1;
        }
    }
}
