package qtool.tokenize;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * The GGUF vocabulary ({@link TokenizerSpec}) of an HF model directory, derived as llama.cpp's
 * {@code convert_hf_to_gguf.py} derives it for a Llama model, so that llama.cpp tokenizes the exported file as the
 * HF tokenizer does:
 * <ul>
 * <li>tokenizer.model present: a "llama" (SentencePiece) vocabulary with the model's pieces, scores and types; the
 *     added tokens of added_tokens.json and tokenizer_config.json's added_tokens_decoder on top
 *     ({@code _create_vocab_sentencepiece}).</li>
 * <li>else tokenizer.json with a BPE model with byte fallback (Llama 2 style): a "llama" vocabulary. The converter
 *     ({@code LlamaHfVocab}) gives every token the score -1000, which makes llama.cpp's score-driven merging differ
 *     from the file's merges; here each token made by a merge scores minus the rank of its first merge, so the
 *     highest-ranked merges win as in HF's BPE.</li>
 * <li>else tokenizer.json with a byte-level BPE model: a "gpt2" vocabulary with the merges and the
 *     {@code tokenizer.ggml.pre} name whose regexes the pre-tokenizer spells ({@code get_vocab_base}). The converter
 *     finds the name from a hash of a test string's tokenization; comparing the pre-tokenizer's regexes with
 *     llama.cpp's table finds the same name for the models both know.</li>
 * </ul>
 * Special ids come from tokenizer_config.json's {@code bos_token}/... looked up among tokenizer.json's added tokens,
 * then config.json's {@code bos_token_id}/..., then tokenizer.json's post-processor template; {@code add_bos_token}/{@code add_eos_token} from tokenizer_config.json,
 * then from the post-processor template, then llama.cpp's default for the vocabulary (gguf-py's SpecialVocab).
 * Ids from {@code vocab_size} on are padded with "[PADn]" tokens of type unused, as the converter does.
 */
public final class HfTokenizerSpec {
    private HfTokenizerSpec() {}

    /** Names tried, in this order, for a byte-level pre-tokenizer; the first whose llama.cpp regexes match wins. */
    private static final List<String> PRE_NAMES = List.of("gpt-2", "smollm", "llama-bpe", "dbrx", "qwen2", "qwen35",
            "gpt-4o", "tekken", "falcon", "deepseek-coder", "deepseek-v3", "bloom", "viking", "default");

    /**
     * @param dir        the HF model directory
     * @param vocabSize  config.json's vocab_size (the embedding's rows), or 0 to take the tokenizer's size
     * @param preOverride a {@code tokenizer.ggml.pre} name to use instead of the detected one, or null
     * @throws QtoolException naming the file and the problem when the tokenizer is missing or of a kind llama.cpp
     *                        cannot run
     */
    public static TokenizerSpec read(Path dir, int vocabSize, String preOverride) {
        Path model = dir.resolve(TokenizerFiles.TOKENIZER_MODEL);
        Path json = dir.resolve(TokenizerFiles.TOKENIZER_JSON);
        Map<String, Object> tokenizerConfig = readIfPresent(dir.resolve("tokenizer_config.json"));
        Map<String, Object> config = readIfPresent(dir.resolve("config.json"));
        Map<String, Object> tokenizerJson = Files.isRegularFile(json) ? Json.readObject(json) : null;
        if (Files.isRegularFile(model)) {
            return sentencePiece(dir, model, vocabSize, tokenizerJson, tokenizerConfig, config);
        }
        if (tokenizerJson == null) {
            throw new QtoolException(dir + ": no " + TokenizerFiles.TOKENIZER_JSON + " or " + TokenizerFiles.TOKENIZER_MODEL
                    + " (a GGUF needs the model's tokenizer)");
        }
        Map<String, Object> m = Json.object(tokenizerJson.get("model"), json + ": model");
        if (!"BPE".equals(m.get("type")) && !(m.get("type") == null && m.containsKey("merges"))) {
            throw new QtoolException(json + ": model type " + m.get("type") + " cannot be written as a llama.cpp vocabulary"
                    + " (BPE, or a SentencePiece tokenizer.model)");
        }
        boolean byteFallback = Boolean.TRUE.equals(m.get("byte_fallback"));
        return byteFallback ? llamaBpe(json, tokenizerJson, vocabSize, tokenizerConfig, config)
                : byteLevelBpe(json, tokenizerJson, vocabSize, preOverride, tokenizerConfig, config);
    }

    /**
     * tokenizer.chat_template: tokenizer_config.json's {@code chat_template} (a string, or the "default" entry of a
     * list of named templates), else chat_template.jinja; null when there is none.
     */
    public static String chatTemplate(Path dir) {
        Object t = readIfPresent(dir.resolve("tokenizer_config.json")).get("chat_template");
        if (t instanceof String s) return s;
        if (t instanceof List<?> list) {
            for (Object o : list) {
                if (o instanceof Map<?, ?> named && "default".equals(named.get("name")) && named.get("template") instanceof String s) return s;
            }
        }
        Path jinja = dir.resolve("chat_template.jinja");
        if (Files.isRegularFile(jinja)) {
            try {
                return Files.readString(jinja, StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new QtoolException(jinja + ": cannot read: " + e.getMessage());
            }
        }
        return null;
    }

    // ------------------------------------------------------------------ SentencePiece tokenizer.model

    private static TokenizerSpec sentencePiece(Path dir, Path file, int vocabSize, Map<String, Object> tokenizerJson,
                                               Map<String, Object> tokenizerConfig, Map<String, Object> config) {
        SentencePieceModelFile.Model model = SentencePieceModelFile.read(file);
        String where = model.where();
        List<String> pieces = List.of(model.pieces());
        int unkId = model.unkId(), bosId = model.bosId(), eosId = model.eosId();
        boolean addDummyPrefix = model.addDummyPrefix();
        if (pieces.isEmpty()) throw new QtoolException(where + ": not a SentencePiece model (no pieces)");
        int n = vocabSize > 0 ? vocabSize : pieces.size();
        String[] tokens = new String[n];
        float[] scores = new float[n];
        int[] types = new int[n];
        for (int id = 0; id < n; id++) {
            tokens[id] = "[PAD" + id + "]";
            scores[id] = -10000f;
            types[id] = TokenizerSpec.TYPE_UNUSED;
        }
        for (int id = 0; id < Math.min(n, pieces.size()); id++) {
            tokens[id] = pieces.get(id);
            scores[id] = model.scores()[id];
            types[id] = model.types()[id];
        }
        Map<String, Object> addedJson = readIfPresent(dir.resolve("added_tokens.json"));
        for (var e : addedJson.entrySet()) {
            if (e.getValue() instanceof Number id && id.intValue() >= 0 && id.intValue() < n) {
                tokens[id.intValue()] = e.getKey();
                scores[id.intValue()] = -1000f;
                types[id.intValue()] = TokenizerSpec.TYPE_USER_DEFINED;
            }
        }
        if (tokenizerConfig.get("added_tokens_decoder") instanceof Map<?, ?> decoder) {
            for (var e : decoder.entrySet()) {
                int id;
                try {
                    id = Integer.parseInt(String.valueOf(e.getKey()));
                } catch (NumberFormatException ex) {
                    continue;
                }
                if (id < 0 || id >= n || !(e.getValue() instanceof Map<?, ?> data) || !(data.get("content") instanceof String content)) continue;
                if (Boolean.TRUE.equals(data.get("special")) || looksSpecial(content)) {
                    types[id] = TokenizerSpec.TYPE_CONTROL;
                } else {
                    content = content.replace("\u2581", " ");
                    types[id] = TokenizerSpec.TYPE_USER_DEFINED;
                }
                scores[id] = -1000f;
                tokens[id] = content;
            }
        }
        Specials s = specials(tokens, tokenizerJson, tokenizerConfig, config, true);
        int bos = s.bos >= 0 ? s.bos : bosId >= 0 && bosId < n ? bosId : -1;
        int eos = s.eos >= 0 ? s.eos : eosId >= 0 && eosId < n ? eosId : -1;
        int unk = s.unk >= 0 ? s.unk : unkId >= 0 && unkId < n ? unkId : -1;
        return new TokenizerSpec(TokenizerSpec.MODEL_LLAMA, null, tokens, scores, types, null, bos, eos, unk, s.pad,
                s.addBos && bos >= 0, s.addEos && eos >= 0, addDummyPrefix);
    }

    // ------------------------------------------------------------------ tokenizer.json

    /** Token strings by id (vocabulary, then added tokens), padded to {@code vocabSize}; null entries unused. */
    private static String[] tokensById(Path where, Map<String, Object> root, Map<String, Object> model, int vocabSize) {
        Map<String, Object> vocab = Json.object(model.get("vocab"), where + ": model.vocab");
        Map<Integer, String> byId = new HashMap<>(vocab.size() * 2);
        int max = -1;
        for (var e : vocab.entrySet()) {
            int id = HfTokenizerJson.intValue(e.getValue(), where + ": model.vocab[" + Regexes.quote(e.getKey()) + "]");
            byId.put(id, e.getKey());
            max = Math.max(max, id);
        }
        for (Map<String, Object> a : addedTokens(where, root)) {
            int id = HfTokenizerJson.intValue(a.get("id"), where + ": added_tokens id");
            byId.put(id, (String) a.get("content"));
            max = Math.max(max, id);
        }
        int n = vocabSize > 0 ? vocabSize : max + 1;
        if (max >= n) {
            throw new QtoolException(where + ": token id " + max + " is outside the model's vocabulary of " + n
                    + " (config.json vocab_size)");
        }
        String[] tokens = new String[n];
        for (int id = 0; id < n; id++) tokens[id] = byId.get(id);
        return tokens;
    }

    private static List<Map<String, Object>> addedTokens(Path where, Map<String, Object> root) {
        List<Map<String, Object>> out = new ArrayList<>();
        if (root.get("added_tokens") == null) return out;
        for (Object o : Json.array(root.get("added_tokens"), where + ": added_tokens")) {
            Map<String, Object> a = Json.object(o, where + ": added_tokens[]");
            if (!(a.get("content") instanceof String)) throw new QtoolException(where + ": added token without \"content\"");
            out.add(a);
        }
        return out;
    }

    /** get_vocab_base: byte-level BPE, tokens typed normal / control / user-defined / unused. */
    private static TokenizerSpec byteLevelBpe(Path where, Map<String, Object> root, int vocabSize, String preOverride,
                                              Map<String, Object> tokenizerConfig, Map<String, Object> config) {
        Map<String, Object> model = Json.object(root.get("model"), where + ": model");
        String[] tokens = tokensById(where, root, model, vocabSize);
        int n = tokens.length;
        int[] types = new int[n];
        Arrays.fill(types, TokenizerSpec.TYPE_NORMAL);
        for (Map<String, Object> a : addedTokens(where, root)) {
            int id = HfTokenizerJson.intValue(a.get("id"), where + ": added_tokens id");
            String content = (String) a.get("content");
            if (Boolean.TRUE.equals(a.get("special")) || looksSpecial(content)) {
                types[id] = TokenizerSpec.TYPE_CONTROL;
            } else {
                tokens[id] = content.replace("\u2581", " ");
                types[id] = TokenizerSpec.TYPE_USER_DEFINED;
            }
        }
        for (int id = 0; id < n; id++) {
            if (tokens[id] == null) {
                tokens[id] = "[PAD" + id + "]";
                types[id] = TokenizerSpec.TYPE_UNUSED;
            }
        }
        String pre = preOverride != null ? preOverride : preName(where, root, model);
        Regexes.GgmlPre ggmlPre = Regexes.ggmlPre(pre); // checks an override
        String[] merges = merges(where, model);
        Specials s = specials(tokens, root, tokenizerConfig, config, ggmlPre.addBos());
        return new TokenizerSpec(TokenizerSpec.MODEL_GPT2, pre, tokens, null, types, merges, s.bos, s.eos, s.unk, s.pad,
                s.addBos && s.bos >= 0, s.addEos && s.eos >= 0, false);
    }

    /**
     * LlamaHfVocab: a SentencePiece-style BPE (byte fallback, "▁" for spaces) as a "llama" vocabulary. Scores from the
     * merge ranks (see the class comment); tokens no merge makes score below all merged ones, byte and special
     * tokens 0 as in SentencePiece models.
     */
    private static TokenizerSpec llamaBpe(Path where, Map<String, Object> root, int vocabSize,
                                          Map<String, Object> tokenizerConfig, Map<String, Object> config) {
        Map<String, Object> model = Json.object(root.get("model"), where + ": model");
        String[] tokens = tokensById(where, root, model, vocabSize);
        int n = tokens.length;
        int[] types = new int[n];
        float[] scores = new float[n];
        Arrays.fill(types, TokenizerSpec.TYPE_NORMAL);
        for (int id = 0; id < n; id++) {
            if (tokens[id] != null && ScoreBpe.parseByteToken(tokens[id]) >= 0) types[id] = TokenizerSpec.TYPE_BYTE;
        }
        int unk = -1;
        if (model.get("unk_token") instanceof String u) {
            for (int id = 0; id < n && unk < 0; id++) if (u.equals(tokens[id])) unk = id;
        }
        for (Map<String, Object> a : addedTokens(where, root)) {
            int id = HfTokenizerJson.intValue(a.get("id"), where + ": added_tokens id");
            types[id] = Boolean.TRUE.equals(a.get("special")) || looksSpecial((String) a.get("content"))
                    ? TokenizerSpec.TYPE_CONTROL : TokenizerSpec.TYPE_USER_DEFINED;
        }
        if (unk >= 0) types[unk] = TokenizerSpec.TYPE_UNKNOWN;
        String[] merges = merges(where, model);
        Map<String, Integer> ids = new HashMap<>(n * 2);
        for (int id = 0; id < n; id++) if (tokens[id] != null) ids.putIfAbsent(tokens[id], id);
        boolean[] merged = new boolean[n];
        for (int rank = 0; rank < merges.length; rank++) {
            String m = merges[rank];
            int space = m.indexOf(' ', 1);
            Integer id = ids.get(m.substring(0, space) + m.substring(space + 1));
            if (id != null && !merged[id]) {
                merged[id] = true;
                scores[id] = -rank;
            }
        }
        for (int id = 0; id < n; id++) {
            if (tokens[id] == null) {
                tokens[id] = "[PAD" + id + "]";
                types[id] = TokenizerSpec.TYPE_UNUSED;
                scores[id] = -10000f;
            } else if (!merged[id] && types[id] == TokenizerSpec.TYPE_NORMAL) {
                scores[id] = -(float) merges.length - id;
            }
        }
        boolean spacePrefix = prependsSpace(root.get("normalizer")) || prependsSpace(root.get("pre_tokenizer"));
        Specials s = specials(tokens, root, tokenizerConfig, config, true);
        // without ids in the configs, llama.cpp's defaults for a SentencePiece vocabulary: <s> 1, </s> 2
        int bos = s.bos >= 0 ? s.bos : n > 1 && "<s>".equals(tokens[1]) ? 1 : -1;
        int eos = s.eos >= 0 ? s.eos : n > 2 && "</s>".equals(tokens[2]) ? 2 : -1;
        return new TokenizerSpec(TokenizerSpec.MODEL_LLAMA, null, tokens, scores, types, null, bos, eos,
                unk >= 0 ? unk : s.unk, s.pad, s.addBos && bos >= 0, s.addEos && eos >= 0, spacePrefix);
    }

    /**
     * Whether a normalizer or pre-tokenizer puts "▁" before the text (SentencePiece's dummy prefix): a Prepend of "▁"
     * (Llama 2's tokenizer.json), or a Metaspace that prepends (older files), anywhere in a Sequence.
     */
    private static boolean prependsSpace(Object v) {
        if (!(v instanceof Map<?, ?> m)) return false;
        return switch (String.valueOf(m.get("type"))) {
            case "Sequence" -> {
                Object steps = m.containsKey("normalizers") ? m.get("normalizers") : m.get("pretokenizers");
                yield steps instanceof List<?> l && l.stream().anyMatch(HfTokenizerSpec::prependsSpace);
            }
            case "Prepend" -> "\u2581".equals(m.get("prepend"));
            case "Metaspace" -> m.get("prepend_scheme") instanceof String scheme ? !scheme.equals("never")
                    : !Boolean.FALSE.equals(m.get("add_prefix_space"));
            default -> false;
        };
    }

    private static String[] merges(Path where, Map<String, Object> model) {
        if (model.get("merges") == null) return new String[0];
        List<Object> list = Json.array(model.get("merges"), where + ": model.merges");
        String[] out = new String[list.size()];
        for (int i = 0; i < out.length; i++) {
            Object e = list.get(i);
            if (e instanceof String s) out[i] = s;
            else if (e instanceof List<?> pair && pair.size() == 2) out[i] = pair.get(0) + " " + pair.get(1);
            else throw new QtoolException(where + ": model.merges[" + i + "]: expected \"a b\" or [\"a\", \"b\"]");
            if (out[i].indexOf(' ', 1) < 0) throw new QtoolException(where + ": model.merges[" + i + "] " + Regexes.quote(out[i]) + " is not two tokens");
        }
        return out;
    }

    /**
     * The {@code tokenizer.ggml.pre} name whose llama.cpp regex chain the byte-level pre-tokenizer spells: ByteLevel
     * with use_regex is the GPT-2 split, Digits with individual_digits is \p{N}, a Split is its regex.
     */
    static String preName(Path where, Map<String, Object> root, Map<String, Object> model) {
        List<String> regexes = new ArrayList<>();
        if (!collectRegexes(root.get("pre_tokenizer"), regexes)) {
            throw new QtoolException(where + ": pre_tokenizer " + Json.write(root.get("pre_tokenizer"))
                    + " has no llama.cpp equivalent; name one with --tokenizer-pre");
        }
        boolean ignoreMerges = Boolean.TRUE.equals(model.get("ignore_merges"));
        for (String name : PRE_NAMES) {
            Regexes.GgmlPre p = Regexes.ggmlPre(name);
            if (p.regexes().equals(regexes) && p.ignoreMerges() == ignoreMerges) return name;
        }
        throw new QtoolException(where + ": no llama.cpp pre-tokenizer splits as this one does (regexes " + Json.write(regexes)
                + "); name one with --tokenizer-pre");
    }

    private static boolean collectRegexes(Object v, List<String> out) {
        if (!(v instanceof Map<?, ?> p)) return v == null;
        switch (String.valueOf(p.get("type"))) {
            case "Sequence" -> {
                if (!(p.get("pretokenizers") instanceof List<?> list)) return false;
                for (Object o : list) if (!collectRegexes(o, out)) return false;
                return true;
            }
            case "ByteLevel" -> {
                if (!Boolean.FALSE.equals(p.get("use_regex"))) out.add(Regexes.GPT2);
                return true;
            }
            case "Digits" -> {
                out.add(Boolean.TRUE.equals(p.get("individual_digits")) ? "\\p{N}" : "\\p{N}+");
                return true;
            }
            case "Split" -> {
                if (!(p.get("pattern") instanceof Map<?, ?> pattern) || !(pattern.get("Regex") instanceof String r)) return false;
                if (!"Isolated".equals(p.get("behavior")) || Boolean.TRUE.equals(p.get("invert"))) return false;
                out.add(r);
                return true;
            }
            default -> {
                return false;
            }
        }
    }

    // ------------------------------------------------------------------ special tokens

    private record Specials(int bos, int eos, int unk, int pad, boolean addBos, boolean addEos) {}

    /** gguf-py's SpecialVocab, for the four ids a TokenizerSpec holds. */
    private static Specials specials(String[] tokens, Map<String, Object> tokenizerJson, Map<String, Object> tokenizerConfig,
                                     Map<String, Object> config, boolean addBosDefault) {
        List<Map<String, Object>> added = new ArrayList<>();
        if (tokenizerJson != null && tokenizerJson.get("added_tokens") instanceof List<?> list) {
            for (Object o : list) if (o instanceof Map<?, ?> m) added.add(Json.object(m, "added_tokens[]"));
        }
        int[] ids = new int[4];
        String[] kinds = {"bos", "eos", "unk", "pad"};
        for (int k = 0; k < 4; k++) {
            ids[k] = -1;
            Object entry = tokenizerConfig.get(kinds[k] + "_token");
            String content = entry instanceof String s ? s : entry instanceof Map<?, ?> m && m.get("content") instanceof String s ? s : null;
            if (content != null) {
                for (Map<String, Object> a : added) {
                    if (content.equals(a.get("content")) && a.get("id") instanceof Number id) {
                        ids[k] = valid(id.intValue(), tokens.length);
                        break;
                    }
                }
            }
            if (ids[k] < 0 && config.get(kinds[k] + "_token_id") instanceof Object v) {
                if (v instanceof List<?> l && !l.isEmpty()) v = l.getFirst();
                if (v instanceof Number id) ids[k] = valid(id.intValue(), tokens.length);
            }
        }
        HfTokenizerJson.Template template = tokenizerJson == null || tokenizerJson.get("post_processor") == null
                ? null : templateOrNull(tokenizerJson.get("post_processor"), tokens);
        if (template != null && ids[0] < 0) ids[0] = valid(template.bos(), tokens.length);
        if (template != null && ids[1] < 0) ids[1] = valid(template.eos(), tokens.length);
        boolean addBos = tokenizerConfig.get("add_bos_token") instanceof Boolean b ? b
                : template != null ? template.bos() >= 0 : addBosDefault;
        boolean addEos = tokenizerConfig.get("add_eos_token") instanceof Boolean b ? b
                : template != null && template.eos() >= 0;
        return new Specials(ids[0], ids[1], ids[2], ids[3], addBos, addEos);
    }

    private static HfTokenizerJson.Template templateOrNull(Object postProcessor, String[] tokens) {
        Map<String, Integer> ids = new HashMap<>(tokens.length * 2);
        for (int id = 0; id < tokens.length; id++) if (tokens[id] != null) ids.putIfAbsent(tokens[id], id);
        try {
            HfTokenizerJson.Template t = HfTokenizerJson.template(postProcessor, ids, "post_processor");
            return t.bos() < 0 && t.eos() < 0 && !(postProcessor instanceof Map<?, ?> m && "TemplateProcessing".equals(m.get("type"))) ? null : t;
        } catch (QtoolException e) {
            return null;
        }
    }

    private static int valid(int id, int n) {
        return id >= 0 && id < n ? id : -1;
    }

    /** convert_hf_to_gguf.py's does_token_look_special. */
    static boolean looksSpecial(String t) {
        return t.equals("<pad>") || t.equals("<mask>") || t.equals("<2mass>") || t.equals("[@BOS@]")
                || (t.startsWith("<|") && t.endsWith("|>")) || (t.startsWith("<\uff5c") && t.endsWith("\uff5c>"))
                || (t.startsWith("<unused") && t.endsWith(">"));
    }

    private static Map<String, Object> readIfPresent(Path file) {
        return Files.isRegularFile(file) ? Json.readObject(file) : Map.of();
    }
}
