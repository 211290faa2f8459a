package qtool.format.torch;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.load.Json;
import qtool.write.SafetensorsWriter;

/**
 * Meta's original Llama download (params.json, tokenizer.model, consolidated.NN.pth: one shard per model-parallel
 * rank) into the HF layout, with the same tensors as transformers' convert_llama_weights_to_hf.py: column-parallel
 * weights (wq, wk, wv, w1, w3, output) concatenated along dim 0, row-parallel ones (wo, w2, tok_embeddings) along
 * dim 1 (Llama 3's tok_embeddings: dim 0, told apart by its shape), norms from shard 0, and q/k rows permuted from Meta's interleaved rotary pairs to HF's half-split layout.
 * Tensors keep their dtype (Meta ships bf16); every byte is copied, none is converted.
 */
public final class MetaLlamaImporter {
    private static final Pattern SHARD = Pattern.compile("consolidated\\.(\\d+)\\.pth");

    /** What params.json says, with derived sizes. */
    public record Params(int dim, int layers, int heads, int kvHeads, int vocab, int intermediate, double normEps, double ropeTheta,
            int maxPositions) {
        int headDim() {
            return dim / heads;
        }
    }

    /** Summary of an import, for the CLI. */
    public record Result(Params params, int shards, int tensors, long bytes) {}

    /** transformers' compute_intermediate_size: multiple_of × ceil(int(multiplier × int(8·dim/3)) / multiple_of). */
    public static int intermediateSize(int dim, double ffnDimMultiplier, int multipleOf) {
        int base = (int) (8.0 * dim / 3);
        int scaled = (int) (ffnDimMultiplier * base);
        return multipleOf * ((scaled + multipleOf - 1) / multipleOf);
    }

    public static Params readParams(Path file, Map<String, Tensor> shard0, int shards) {
        Map<String, Object> p = Json.readObject(file);
        String where = file.toString();
        int dim = intOf(p, "dim", where, null);
        int heads = intOf(p, "n_heads", where, null);
        int layers = intOf(p, "n_layers", where, null);
        int kv = p.get("n_kv_heads") == null ? heads : intOf(p, "n_kv_heads", where, null);
        int multipleOf = p.get("multiple_of") == null ? 256 : intOf(p, "multiple_of", where, null);
        double mult = p.get("ffn_dim_multiplier") instanceof Number n ? n.doubleValue() : 1.0;
        int vocab = p.get("vocab_size") instanceof Number n ? n.intValue() : -1;
        if (vocab <= 0) { // Llama 1 ships vocab_size -1: the embedding says
            Tensor emb = shard0.get("tok_embeddings.weight");
            if (emb == null || emb.shape().length != 2) throw new QtoolException(where + ": vocab_size is " + vocab + " and shard 0 has no tok_embeddings.weight");
            vocab = (int) emb.shape()[0];
        }
        if (dim <= 0 || heads <= 0 || layers <= 0 || kv <= 0 || multipleOf <= 0 || dim % heads != 0 || heads % kv != 0 || (dim / heads) % 2 != 0) {
            throw new QtoolException(where + ": inconsistent sizes (dim " + dim + ", n_heads " + heads + ", n_kv_heads " + kv + ", n_layers " + layers + ")");
        }
        if (heads % shards != 0 || kv % shards != 0) {
            throw new QtoolException(where + ": " + shards + " shards do not divide n_heads " + heads + " / n_kv_heads " + kv);
        }
        double eps = p.get("norm_eps") instanceof Number n ? n.doubleValue() : 1e-5;
        double theta = p.get("rope_theta") instanceof Number n ? n.doubleValue() : 10000.0;
        int maxPos = p.get("max_seq_len") instanceof Number n ? n.intValue() : theta >= 500000 ? 8192 : 4096;
        return new Params(dim, layers, heads, kv, vocab, intermediateSize(dim, mult, multipleOf), eps, theta, maxPos);
    }

    public static List<Path> shardFiles(Path dir) {
        TreeMap<Integer, Path> byRank = new TreeMap<>();
        try (var s = Files.list(dir)) {
            for (Path f : (Iterable<Path>) s::iterator) {
                Matcher m = SHARD.matcher(f.getFileName().toString());
                if (m.matches()) byRank.put(Integer.parseInt(m.group(1)), f);
            }
        } catch (java.nio.file.NoSuchFileException e) {
            throw new QtoolException(dir + ": no such directory");
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot list: " + e.getMessage());
        }
        if (byRank.isEmpty()) throw new QtoolException(dir + ": no consolidated.NN.pth shards");
        for (int i = 0; i < byRank.size(); i++) {
            if (!byRank.containsKey(i)) throw new QtoolException(dir + ": shard consolidated." + String.format("%02d", i) + ".pth is missing (found ranks " + byRank.keySet() + ")");
        }
        return new ArrayList<>(byRank.values());
    }

    public static Result importDir(Path in, Path out, long shardBytes) {
        for (String f : List.of("params.json", "tokenizer.model")) {
            if (!Files.isRegularFile(in.resolve(f))) throw new QtoolException(in + ": " + f + " is missing");
        }
        List<Path> files = shardFiles(in);
        refuseStaleWeights(out);
        try (Arena arena = Arena.ofShared()) {
            List<Map<String, Tensor>> shards = new ArrayList<>();
            for (Path f : files) shards.add(TorchZipFile.open(f, arena).tensors());
            checkSameModel(files, shards);
            Params p = readParams(in.resolve("params.json"), shards.get(0), files.size());
            SafetensorsWriter writer = new SafetensorsWriter(out, shardBytes);
            int count = 0;
            long bytes = 0;
            DType dtype;
            try {
                Merger m = new Merger(files, shards, p, writer);
                // Llama 1 and 2 split the embedding along dim 1 (ParallelEmbedding), Llama 3 along the vocabulary
                Tensor emb0 = shards.get(0).get("tok_embeddings.weight");
                int embAxis = files.size() > 1 && emb0 != null && emb0.shape().length == 2 && emb0.shape()[1] == p.dim ? 0 : 1;
                m.write("model.embed_tokens.weight", "tok_embeddings.weight", embAxis, new long[] {p.vocab, p.dim}, 0);
                for (int i = 0; i < p.layers; i++) {
                    String meta = "layers." + i + ".", hf = "model.layers." + i + ".";
                    int kvDim = p.kvHeads * p.headDim();
                    m.write(hf + "self_attn.q_proj.weight", meta + "attention.wq.weight", 0, new long[] {p.dim, p.dim}, p.heads);
                    m.write(hf + "self_attn.k_proj.weight", meta + "attention.wk.weight", 0, new long[] {kvDim, p.dim}, p.kvHeads);
                    m.write(hf + "self_attn.v_proj.weight", meta + "attention.wv.weight", 0, new long[] {kvDim, p.dim}, 0);
                    m.write(hf + "self_attn.o_proj.weight", meta + "attention.wo.weight", 1, new long[] {p.dim, p.dim}, 0);
                    m.write(hf + "mlp.gate_proj.weight", meta + "feed_forward.w1.weight", 0, new long[] {p.intermediate, p.dim}, 0);
                    m.write(hf + "mlp.down_proj.weight", meta + "feed_forward.w2.weight", 1, new long[] {p.dim, p.intermediate}, 0);
                    m.write(hf + "mlp.up_proj.weight", meta + "feed_forward.w3.weight", 0, new long[] {p.intermediate, p.dim}, 0);
                    m.write(hf + "input_layernorm.weight", meta + "attention_norm.weight", -1, new long[] {p.dim}, 0);
                    m.write(hf + "post_attention_layernorm.weight", meta + "ffn_norm.weight", -1, new long[] {p.dim}, 0);
                }
                m.write("model.norm.weight", "norm.weight", -1, new long[] {p.dim}, 0);
                m.write("lm_head.weight", "output.weight", 0, new long[] {p.vocab, p.dim}, 0);
                count = m.count;
                bytes = m.bytes;
                dtype = m.dtype;
                writer.close();
            } catch (RuntimeException e) {
                writer.abandon();
                throw e;
            }
            writeConfigs(in, out, p, dtype);
            return new Result(p, files.size(), count, bytes);
        }
    }

    /** Weights already in the output directory would mix with the new ones (other shard counts, other names). */
    static void refuseStaleWeights(Path out) {
        if (!Files.isDirectory(out)) return;
        try (var s = Files.list(out)) {
            var stale = s.map(f -> f.getFileName().toString()).filter(n -> n.endsWith(".safetensors") || n.equals("model.safetensors.index.json")).sorted().toList();
            if (!stale.isEmpty()) throw new QtoolException(out + ": already holds weights (" + stale.get(0) + (stale.size() > 1 ? ", …" : "") + "); choose an empty output directory");
        } catch (IOException e) {
            throw new QtoolException(out + ": cannot list: " + e.getMessage());
        }
    }

    /** Every shard must hold the same tensor names with the same shapes and dtypes: one model cut in equal parts. */
    private static void checkSameModel(List<Path> files, List<Map<String, Tensor>> shards) {
        Map<String, Tensor> first = shards.get(0);
        for (int s = 1; s < shards.size(); s++) {
            Map<String, Tensor> other = shards.get(s);
            if (!other.keySet().equals(first.keySet())) {
                List<String> diff = new ArrayList<>(first.keySet());
                diff.removeAll(other.keySet());
                List<String> extra = new ArrayList<>(other.keySet());
                extra.removeAll(first.keySet());
                throw new QtoolException(files.get(s) + ": not a shard of the same model as " + files.get(0).getFileName()
                        + " (tensors missing: " + head(diff) + ", extra: " + head(extra) + ")");
            }
            for (var e : first.entrySet()) {
                Tensor a = e.getValue(), b = other.get(e.getKey());
                if (a.dtype() != b.dtype() || !Arrays.equals(a.shape(), b.shape())) {
                    throw new QtoolException(files.get(s) + ": " + e.getKey() + " is " + b + " but " + a + " in " + files.get(0).getFileName()
                            + " (shards of different models?)");
                }
            }
        }
    }

    private static String head(List<String> names) {
        return names.size() <= 5 ? names.toString() : names.subList(0, 5) + " and " + (names.size() - 5) + " more";
    }

    private static final class Merger {
        final List<Path> files;
        final List<Map<String, Tensor>> shards;
        final Params p;
        final SafetensorsWriter writer;
        DType dtype;
        int count;
        long bytes;

        Merger(List<Path> files, List<Map<String, Tensor>> shards, Params p, SafetensorsWriter writer) {
            this.files = files;
            this.shards = shards;
            this.p = p;
            this.writer = writer;
        }

        /**
         * Merges {@code meta} from all shards along {@code axis} (-1: replicated, taken from shard 0), checks the
         * result against {@code expected} (from params.json), permutes rows for RoPE when {@code ropeHeads > 0}.
         */
        void write(String hfName, String metaName, int axis, long[] expected, int ropeHeads) {
            List<Tensor> parts = new ArrayList<>();
            for (int s = 0; s < shards.size(); s++) {
                Tensor t = shards.get(s).get(metaName);
                if (t == null) throw new QtoolException(files.get(s) + ": no tensor " + metaName);
                parts.add(t);
                if (axis == -1) break;
            }
            Tensor t0 = parts.get(0);
            if (dtype == null) dtype = t0.dtype();
            if (!t0.dtype().isFloat()) throw new QtoolException(files.get(0) + ": " + metaName + " is " + t0.dtype() + ", not a float tensor");
            long[] merged = t0.shape().clone();
            if (axis >= 0) {
                if (merged.length != 2) throw new QtoolException(files.get(0) + ": " + metaName + " is " + t0 + ", not 2-D");
                merged[axis] *= parts.size();
            }
            if (!Arrays.equals(merged, expected)) {
                throw new QtoolException(files.get(0).getParent() + ": " + metaName + " merged from " + parts.size() + " shard(s) is "
                        + Arrays.toString(merged) + " but params.json implies " + Arrays.toString(expected)
                        + (axis >= 0 ? " (params.json of another model, or shards missing?)" : ""));
            }
            long size = t0.byteSize() * parts.size();
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment dst;
                if (axis == -1) {
                    dst = t0.data();
                } else if (axis == 0) {
                    dst = arena.allocate(size, 8);
                    long off = 0;
                    for (Tensor t : parts) {
                        MemorySegment.copy(t.data(), 0, dst, off, t.byteSize());
                        off += t.byteSize();
                    }
                } else { // axis 1: each output row is the shards' rows side by side
                    dst = arena.allocate(size, 8);
                    long rows = t0.shape()[0], partRow = t0.shape()[1] * t0.dtype().bytes, outRow = partRow * parts.size();
                    for (int s = 0; s < parts.size(); s++) {
                        MemorySegment src = parts.get(s).data();
                        for (long r = 0; r < rows; r++) MemorySegment.copy(src, r * partRow, dst, r * outRow + s * partRow, partRow);
                    }
                }
                if (ropeHeads > 0) dst = permuteRotary(dst, arena, ropeHeads, expected[0], expected[1] * t0.dtype().bytes);
                writer.add(hfName, t0.dtype(), expected, dst);
            }
            count++;
            bytes += size;
        }
    }

    /**
     * permute(w, n_heads, dim1, dim2) = w.view(n_heads, dim1/n_heads/2, 2, dim2).transpose(1, 2).reshape(dim1, dim2):
     * within each head, row 2i+j moves to j·half + i (Meta's interleaved rotary pairs → HF's two halves).
     */
    static MemorySegment permuteRotary(MemorySegment w, Arena arena, int heads, long rows, long rowBytes) {
        MemorySegment out = arena.allocate(w.byteSize(), 8);
        long headRows = rows / heads, half = headRows / 2;
        for (long h = 0; h < heads; h++) {
            for (long i = 0; i < half; i++) {
                for (int j = 0; j < 2; j++) {
                    long src = h * headRows + 2 * i + j, dst = h * headRows + j * half + i;
                    MemorySegment.copy(w, src * rowBytes, out, dst * rowBytes, rowBytes);
                }
            }
        }
        return out;
    }

    private static void writeConfigs(Path in, Path out, Params p, DType dtype) {
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("architectures", List.of("LlamaForCausalLM"));
        c.put("model_type", "llama");
        c.put("hidden_size", p.dim);
        c.put("intermediate_size", p.intermediate);
        c.put("num_attention_heads", p.heads);
        c.put("num_hidden_layers", p.layers);
        c.put("num_key_value_heads", p.kvHeads);
        c.put("vocab_size", p.vocab);
        c.put("rms_norm_eps", p.normEps);
        c.put("rope_theta", p.ropeTheta);
        c.put("max_position_embeddings", p.maxPositions);
        c.put("hidden_act", "silu");
        c.put("tie_word_embeddings", false);
        c.put("bos_token_id", 1);
        c.put("eos_token_id", 2);
        c.put("torch_dtype", switch (dtype) { case BF16 -> "bfloat16"; case F32 -> "float32"; default -> "float16"; });
        Json.writeFile(out.resolve("config.json"), c);
        Map<String, Object> gen = new LinkedHashMap<>();
        gen.put("bos_token_id", 1);
        gen.put("eos_token_id", 2);
        Json.writeFile(out.resolve("generation_config.json"), gen);
        Map<String, Object> tc = new LinkedHashMap<>();
        tc.put("tokenizer_class", "LlamaTokenizer");
        tc.put("add_bos_token", true);
        tc.put("add_eos_token", false);
        tc.put("bos_token", "<s>");
        tc.put("eos_token", "</s>");
        tc.put("unk_token", "<unk>");
        tc.put("legacy", false);
        tc.put("model_max_length", p.maxPositions);
        Json.writeFile(out.resolve("tokenizer_config.json"), tc);
        try {
            Files.copy(in.resolve("tokenizer.model"), out.resolve("tokenizer.model"), StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new QtoolException(out + ": cannot copy tokenizer.model: " + e.getMessage());
        }
    }

    private static int intOf(Map<String, Object> p, String key, String where, Integer dflt) {
        Object v = p.get(key);
        if (v == null && dflt != null) return dflt;
        if (!(v instanceof Number n) || n.doubleValue() != Math.rint(n.doubleValue())) throw new QtoolException(where + ": '" + key + "' is missing or not an integer");
        return n.intValue();
    }
}
