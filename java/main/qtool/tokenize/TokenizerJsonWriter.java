package qtool.tokenize;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * Writes a {@link TokenizerSpec} (a GGUF vocabulary) as HF tokenizer files, tokenizer.json and
 * tokenizer_config.json, shaped like the files HF models ship: a "gpt2" vocabulary as byte-level BPE (SmolLM2,
 * Llama 3, Qwen2 style), a "llama" one as SentencePiece-style BPE with byte fallback (Llama 2 style). Both qtool and
 * the HF tokenizers library then tokenize as llama.cpp does with the GGUF.
 */
public final class TokenizerJsonWriter {
    private TokenizerJsonWriter() {}

    /** Writes tokenizer.json and tokenizer_config.json into {@code dir} (created if needed), replacing them. */
    public static void write(TokenizerSpec spec, Path dir) {
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot create directory: " + e.getMessage());
        }
        Json.writeFile(dir.resolve(TokenizerFiles.TOKENIZER_JSON), tokenizerJson(spec));
        Json.writeFile(dir.resolve("tokenizer_config.json"), tokenizerConfig(spec));
    }

    static Map<String, Object> tokenizerJson(TokenizerSpec spec) {
        boolean llama = switch (spec.model()) {
            case TokenizerSpec.MODEL_LLAMA -> true;
            case TokenizerSpec.MODEL_GPT2 -> false;
            default -> throw new QtoolException("tokenizer.ggml.model '" + spec.model() + "' cannot be written as tokenizer.json (llama, gpt2)");
        };
        String[] tokens = spec.tokens();
        Map<String, Object> vocab = new LinkedHashMap<>();
        for (int id = 0; id < tokens.length; id++) {
            if (tokens[id] == null) throw new QtoolException("tokenizer spec: token " + id + " is null");
            Object previous = vocab.putIfAbsent(tokens[id], id);
            if (previous != null) {
                throw new QtoolException("tokenizer spec: token " + Regexes.quote(tokens[id]) + " has ids " + previous + " and " + id);
            }
        }
        List<Object> added = new ArrayList<>();
        for (int id = 0; id < tokens.length; id++) {
            int t = spec.type(id);
            if (id == spec.unk() || t == TokenizerSpec.TYPE_CONTROL || t == TokenizerSpec.TYPE_UNKNOWN || t == TokenizerSpec.TYPE_USER_DEFINED) {
                if (tokens[id].isEmpty()) continue;
                Map<String, Object> a = new LinkedHashMap<>();
                a.put("id", id);
                a.put("content", tokens[id]);
                a.put("single_word", false);
                a.put("lstrip", false);
                a.put("rstrip", false);
                a.put("normalized", false);
                a.put("special", t != TokenizerSpec.TYPE_USER_DEFINED);
                added.add(a);
            }
        }

        Map<String, Object> root = new LinkedHashMap<>();
        root.put("version", "1.0");
        root.put("truncation", null);
        root.put("padding", null);
        root.put("added_tokens", added);
        Map<String, Object> model = new LinkedHashMap<>();
        model.put("type", "BPE");
        model.put("dropout", null);
        if (llama) {
            List<Object> normalizers = new ArrayList<>();
            if (spec.addSpacePrefix()) normalizers.add(object("type", "Prepend", "prepend", "\u2581"));
            normalizers.add(object("type", "Replace", "pattern", object("String", " "), "content", "\u2581"));
            root.put("normalizer", object("type", "Sequence", "normalizers", normalizers));
            root.put("pre_tokenizer", null);
            root.put("post_processor", template(spec));
            List<Object> decoders = new ArrayList<>();
            decoders.add(object("type", "Replace", "pattern", object("String", "\u2581"), "content", " "));
            decoders.add(object("type", "ByteFallback"));
            decoders.add(object("type", "Fuse"));
            if (spec.addSpacePrefix()) decoders.add(object("type", "Strip", "content", " ", "start", 1, "stop", 0));
            root.put("decoder", object("type", "Sequence", "decoders", decoders));
            model.put("unk_token", spec.unk() >= 0 ? tokens[spec.unk()] : null);
            model.put("continuing_subword_prefix", null);
            model.put("end_of_word_suffix", null);
            model.put("fuse_unk", true);
            boolean byteFallback = false;
            for (int id = 0; id < tokens.length; id++) byteFallback |= spec.type(id) == TokenizerSpec.TYPE_BYTE;
            model.put("byte_fallback", byteFallback);
            model.put("vocab", vocab);
            model.put("merges", mergesFromScores(spec));
        } else {
            Regexes.GgmlPre pre = Regexes.ggmlPre(spec.pre());
            if (spec.merges() == null) throw new QtoolException("tokenizer spec: a gpt2 vocabulary needs merges (tokenizer.ggml.merges)");
            root.put("normalizer", null);
            root.put("pre_tokenizer", preTokenizer(pre));
            root.put("post_processor", template(spec));
            root.put("decoder", object("type", "ByteLevel", "add_prefix_space", true, "trim_offsets", true, "use_regex", true));
            model.put("unk_token", null);
            model.put("continuing_subword_prefix", null);
            model.put("end_of_word_suffix", null);
            model.put("fuse_unk", false);
            model.put("byte_fallback", false);
            if (pre.ignoreMerges()) model.put("ignore_merges", true);
            model.put("vocab", vocab);
            List<Object> merges = new ArrayList<>();
            for (String[] m : SpecTokenizers.parseMerges(spec.merges(), "tokenizer spec")) {
                if (m[0].contains(" ") || m[1].contains(" ")) merges.add(List.of(m[0], m[1]));
                else merges.add(m[0] + " " + m[1]);
            }
            model.put("merges", merges);
        }
        root.put("model", model);
        return root;
    }

    /** As the models' own files spell it: ByteLevel's built-in GPT-2 split, Digits for SmolLM's, else Split regexes. */
    private static Object preTokenizer(Regexes.GgmlPre pre) {
        Map<String, Object> byteLevelWithRegex = object("type", "ByteLevel", "add_prefix_space", false, "trim_offsets", true, "use_regex", true);
        if (pre.regexes().equals(List.of(Regexes.GPT2))) return byteLevelWithRegex;
        if (pre.regexes().equals(List.of("\\p{N}", Regexes.GPT2))) {
            return object("type", "Sequence", "pretokenizers", List.of(
                    object("type", "Digits", "individual_digits", true), byteLevelWithRegex));
        }
        List<Object> steps = new ArrayList<>();
        for (String r : pre.regexes()) {
            steps.add(object("type", "Split", "pattern", object("Regex", r), "behavior", "Isolated", "invert", false));
        }
        steps.add(object("type", "ByteLevel", "add_prefix_space", false, "trim_offsets", true, "use_regex", false));
        return object("type", "Sequence", "pretokenizers", steps);
    }

    /** BOS/EOS around a sequence, as HF's TemplateProcessing; null when neither is added. */
    private static Object template(TokenizerSpec spec) {
        boolean bos = spec.addBos() && spec.bos() >= 0;
        boolean eos = spec.addEos() && spec.eos() >= 0;
        if (!bos && !eos) return null;
        String b = bos ? spec.tokens()[spec.bos()] : null;
        String e = eos ? spec.tokens()[spec.eos()] : null;
        List<Object> single = new ArrayList<>();
        List<Object> pair = new ArrayList<>();
        Map<String, Object> specials = new LinkedHashMap<>();
        if (bos) {
            single.add(object("SpecialToken", object("id", b, "type_id", 0)));
            specials.put(b, object("id", b, "ids", List.of(spec.bos()), "tokens", List.of(b)));
        }
        single.add(object("Sequence", object("id", "A", "type_id", 0)));
        if (eos) {
            single.add(object("SpecialToken", object("id", e, "type_id", 0)));
            specials.put(e, object("id", e, "ids", List.of(spec.eos()), "tokens", List.of(e)));
        }
        for (int s = 0; s < 2; s++) {
            if (bos) pair.add(object("SpecialToken", object("id", b, "type_id", s)));
            pair.add(object("Sequence", object("id", s == 0 ? "A" : "B", "type_id", s)));
            if (eos) pair.add(object("SpecialToken", object("id", e, "type_id", s)));
        }
        return object("type", "TemplateProcessing", "single", single, "pair", pair, "special_tokens", specials);
    }

    /**
     * Merges for a score-driven vocabulary, built as HF's SentencePiece converter builds them (the way Llama 2's
     * tokenizer.json was made): every split of a piece into two pieces of the vocabulary is a merge, ranked by the
     * piece's score (higher first), then by piece id, then by the ids of the two halves. Only pieces SentencePiece
     * merges into (normal, user-defined, unused) are split.
     */
    static List<Object> mergesFromScores(TokenizerSpec spec) {
        String[] tokens = spec.tokens();
        float[] scores = spec.scores() == null ? new float[tokens.length] : spec.scores();
        Map<String, Integer> ids = new HashMap<>(tokens.length * 2);
        for (int id = 0; id < tokens.length; id++) ids.putIfAbsent(tokens[id], id);
        record Merge(int left, int right, int piece) {}
        List<Merge> merges = new ArrayList<>();
        for (int id = 0; id < tokens.length; id++) {
            int t = spec.type(id);
            if (t != TokenizerSpec.TYPE_NORMAL && t != TokenizerSpec.TYPE_USER_DEFINED && t != TokenizerSpec.TYPE_UNUSED) continue;
            String p = tokens[id];
            List<Merge> local = new ArrayList<>();
            for (int i = p.offsetByCodePoints(0, Math.min(1, p.length())); i > 0 && i < p.length(); i = p.offsetByCodePoints(i, 1)) {
                Integer l = ids.get(p.substring(0, i));
                Integer r = ids.get(p.substring(i));
                if (l != null && r != null) local.add(new Merge(l, r, id));
            }
            local.sort((a, b) -> a.left != b.left ? Integer.compare(a.left, b.left) : Integer.compare(a.right, b.right));
            merges.addAll(local);
        }
        // stable: equal scores keep piece-id order
        merges.sort((a, b) -> Float.compare(scores[b.piece], scores[a.piece]));
        List<Object> out = new ArrayList<>(merges.size());
        for (Merge m : merges) {
            String l = tokens[m.left], r = tokens[m.right];
            out.add(l.contains(" ") || r.contains(" ") ? List.of(l, r) : l + " " + r);
        }
        return out;
    }

    static Map<String, Object> tokenizerConfig(TokenizerSpec spec) {
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("tokenizer_class", "PreTrainedTokenizerFast");
        c.put("add_bos_token", spec.addBos());
        c.put("add_eos_token", spec.addEos());
        c.put("bos_token", spec.bos() >= 0 ? spec.tokens()[spec.bos()] : null);
        c.put("eos_token", spec.eos() >= 0 ? spec.tokens()[spec.eos()] : null);
        c.put("unk_token", spec.unk() >= 0 ? spec.tokens()[spec.unk()] : null);
        c.put("pad_token", spec.pad() >= 0 ? spec.tokens()[spec.pad()] : null);
        c.put("clean_up_tokenization_spaces", false);
        return c;
    }

    private static Map<String, Object> object(Object... keyValues) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < keyValues.length; i += 2) m.put((String) keyValues[i], keyValues[i + 1]);
        return m;
    }
}
