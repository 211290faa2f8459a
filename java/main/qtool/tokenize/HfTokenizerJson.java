package qtool.tokenize;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * Reads HF tokenizers' tokenizer.json: a BPE model (byte-level like GPT-2/Llama 3/Qwen2/SmolLM2, or SentencePiece
 * style like Llama 2/Mistral with byte fallback) or a Unigram model, with the normalizers, pre-tokenizers, decoders
 * and post-processors those files use.
 */
final class HfTokenizerJson {
    private HfTokenizerJson() {}

    /** What the post-processor adds around a sequence (TemplateProcessing): BOS/EOS ids, or -1. */
    record Template(int bos, int eos) {}

    static PipelineTokenizer load(Path file) {
        String where = file.toString();
        Map<String, Object> root = Json.readObject(file);
        if (!(root.get("model") instanceof Map<?, ?>)) throw new QtoolException(where + ": no \"model\" object");
        Map<String, Object> model = Json.object(root.get("model"), where + ": model");
        String type = model.get("type") instanceof String s ? s : (model.containsKey("merges") ? "BPE" : null);
        if (type == null) throw new QtoolException(where + ": model has no \"type\"");

        // vocabulary of the model, then the added tokens on top
        Map<String, Integer> vocab = new HashMap<>();
        float[] unigramScores = null;
        List<String> unigramPieces = null;
        switch (type) {
            case "BPE" -> {
                Map<String, Object> v = Json.object(require(model, "vocab", where + ": model"), where + ": model.vocab");
                for (Map.Entry<String, Object> e : v.entrySet()) vocab.put(e.getKey(), intValue(e.getValue(), where + ": model.vocab[" + Regexes.quote(e.getKey()) + "]"));
            }
            case "Unigram" -> {
                List<Object> v = Json.array(require(model, "vocab", where + ": model"), where + ": model.vocab");
                unigramPieces = new ArrayList<>(v.size());
                unigramScores = new float[v.size()];
                for (int i = 0; i < v.size(); i++) {
                    List<Object> entry = Json.array(v.get(i), where + ": model.vocab[" + i + "]");
                    if (entry.size() != 2 || !(entry.get(0) instanceof String piece)) {
                        throw new QtoolException(where + ": model.vocab[" + i + "]: expected [piece, score]");
                    }
                    unigramPieces.add(piece);
                    unigramScores[i] = (float) doubleValue(entry.get(1), where + ": model.vocab[" + i + "]");
                    vocab.putIfAbsent(piece, i);
                }
            }
            default -> throw new QtoolException(where + ": model type \"" + type + "\" is not supported (BPE, Unigram)");
        }
        List<AddedTokens.Token> added = new ArrayList<>();
        if (root.get("added_tokens") != null) {
            List<Object> list = Json.array(root.get("added_tokens"), where + ": added_tokens");
            for (int i = 0; i < list.size(); i++) {
                String w = where + ": added_tokens[" + i + "]";
                Map<String, Object> t = Json.object(list.get(i), w);
                if (!(t.get("content") instanceof String content)) throw new QtoolException(w + ": no \"content\"");
                added.add(new AddedTokens.Token(intValue(require(t, "id", w), w + ".id"), content,
                        bool(t, "special", false), bool(t, "lstrip", false), bool(t, "rstrip", false),
                        bool(t, "single_word", false), bool(t, "normalized", false)));
            }
        }
        int size = 0;
        for (int id : vocab.values()) size = Math.max(size, id + 1);
        if (unigramPieces != null) size = Math.max(size, unigramPieces.size());
        for (AddedTokens.Token t : added) size = Math.max(size, t.id() + 1);
        String[] pieces = new String[size];
        int[] types = new int[size];
        java.util.Arrays.fill(types, TokenizerSpec.TYPE_NORMAL);
        if (unigramPieces != null) for (int i = 0; i < unigramPieces.size(); i++) pieces[i] = unigramPieces.get(i);
        else for (Map.Entry<String, Integer> e : vocab.entrySet()) pieces[e.getValue()] = e.getKey();
        for (AddedTokens.Token t : added) {
            if (t.id() < 0) throw new QtoolException(where + ": added token " + Regexes.quote(t.content()) + " has id " + t.id());
            pieces[t.id()] = t.content();
            types[t.id()] = t.special() ? TokenizerSpec.TYPE_CONTROL : TokenizerSpec.TYPE_USER_DEFINED;
        }
        boolean byteFallback = bool(model, "byte_fallback", false);
        if (byteFallback) {
            for (int id = 0; id < size; id++) if (pieces[id] != null && ScoreBpe.parseByteToken(pieces[id]) >= 0) types[id] = TokenizerSpec.TYPE_BYTE;
        }

        TokenModel tokenModel;
        if (type.equals("BPE")) {
            int unkId = -1;
            if (model.get("unk_token") instanceof String unk) {
                Integer id = vocab.get(unk);
                if (id == null) throw new QtoolException(where + ": model.unk_token " + Regexes.quote(unk) + " is not in the vocabulary");
                unkId = id;
                types[unkId] = TokenizerSpec.TYPE_UNKNOWN;
            }
            if (model.get("dropout") instanceof Number d && d.doubleValue() > 0) {
                throw new QtoolException(where + ": BPE dropout is not supported (it makes tokenization random)");
            }
            tokenModel = new MergeBpe(vocab, merges(model, where), unkId, bool(model, "fuse_unk", false), byteFallback,
                    bool(model, "ignore_merges", false), string(model, "continuing_subword_prefix"),
                    string(model, "end_of_word_suffix"), where);
        } else {
            int unkId = model.get("unk_id") == null ? -1 : intValue(model.get("unk_id"), where + ": model.unk_id");
            if (unkId >= size) throw new QtoolException(where + ": model.unk_id " + unkId + " is outside the vocabulary");
            if (unkId >= 0) types[unkId] = TokenizerSpec.TYPE_UNKNOWN;
            tokenModel = new Unigram(pieces, java.util.Arrays.copyOf(unigramScores, size), types, unkId, byteFallback);
        }

        Normalizer normalizer = normalizer(root.get("normalizer"), where + ": normalizer");
        PreTokenizer pre = preTokenizer(root.get("pre_tokenizer"), where + ": pre_tokenizer");
        TokenDecoder decoder = decoder(root.get("decoder"), where + ": decoder");
        Map<String, Integer> ids = new HashMap<>(vocab);
        for (AddedTokens.Token t : added) ids.put(t.content(), t.id());
        Template template = template(root.get("post_processor"), ids, where + ": post_processor");
        return new PipelineTokenizer(where, pieces, types, new AddedTokens(added), normalizer, pre, tokenModel, decoder,
                template.bos, template.eos, template.bos >= 0);
    }

    private static List<String[]> merges(Map<String, Object> model, String where) {
        Object m = model.get("merges");
        if (m == null) return List.of();
        List<Object> list = Json.array(m, where + ": model.merges");
        List<String[]> out = new ArrayList<>(list.size());
        for (int i = 0; i < list.size(); i++) {
            Object e = list.get(i);
            if (e instanceof String s) {
                // "a b": HF splits on the space and wants exactly two parts
                String[] parts = s.split(" ", -1);
                if (parts.length != 2) throw new QtoolException(where + ": model.merges[" + i + "] " + Regexes.quote(s) + ": expected two tokens separated by one space");
                out.add(parts);
            } else if (e instanceof List<?> pair && pair.size() == 2 && pair.get(0) instanceof String a && pair.get(1) instanceof String b) {
                out.add(new String[] {a, b});
            } else {
                throw new QtoolException(where + ": model.merges[" + i + "]: expected \"a b\" or [\"a\", \"b\"]");
            }
        }
        return out;
    }

    static Normalizer normalizer(Object v, String where) {
        if (v == null) return null;
        Map<String, Object> n = Json.object(v, where);
        String type = typeOf(n, where);
        return switch (type) {
            case "Sequence" -> {
                List<Normalizer> steps = new ArrayList<>();
                List<Object> list = Json.array(require(n, "normalizers", where), where + ".normalizers");
                for (int i = 0; i < list.size(); i++) {
                    Normalizer s = normalizer(list.get(i), where + ".normalizers[" + i + "]");
                    if (s != null) steps.add(s);
                }
                yield new Normalizer.Sequence(steps);
            }
            case "Prepend" -> new Normalizer.Prepend(stringRequired(n, "prepend", where));
            case "Replace" -> {
                Map<String, Object> pattern = Json.object(require(n, "pattern", where), where + ".pattern");
                String content = stringRequired(n, "content", where);
                if (pattern.get("String") instanceof String s) yield new Normalizer.Replace(s, null, content);
                if (pattern.get("Regex") instanceof String r) yield new Normalizer.Replace(null, Regexes.compile(r, where), content);
                throw new QtoolException(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
            }
            case "NFC" -> new Normalizer.Unicode(java.text.Normalizer.Form.NFC);
            case "NFD" -> new Normalizer.Unicode(java.text.Normalizer.Form.NFD);
            case "NFKC" -> new Normalizer.Unicode(java.text.Normalizer.Form.NFKC);
            case "NFKD" -> new Normalizer.Unicode(java.text.Normalizer.Form.NFKD);
            case "Lowercase" -> new Normalizer.Lowercase();
            case "Strip" -> new Normalizer.Strip(bool(n, "strip_left", true), bool(n, "strip_right", true));
            // SentencePiece's compiled character map, approximated
            case "Precompiled" -> n.get("precompiled_charsmap") == null || "".equals(n.get("precompiled_charsmap"))
                    ? null : new Normalizer.NmtNfkc();
            default -> throw new QtoolException(where + ": normalizer type \"" + type + "\" is not supported");
        };
    }

    static PreTokenizer preTokenizer(Object v, String where) {
        if (v == null) return null;
        Map<String, Object> p = Json.object(v, where);
        String type = typeOf(p, where);
        return switch (type) {
            case "Sequence" -> {
                List<PreTokenizer> steps = new ArrayList<>();
                List<Object> list = Json.array(require(p, "pretokenizers", where), where + ".pretokenizers");
                for (int i = 0; i < list.size(); i++) {
                    PreTokenizer s = preTokenizer(list.get(i), where + ".pretokenizers[" + i + "]");
                    if (s != null) steps.add(s);
                }
                yield new PreTokenizer.Sequence(steps);
            }
            case "Split" -> {
                Map<String, Object> pattern = Json.object(require(p, "pattern", where), where + ".pattern");
                Pattern regex;
                if (pattern.get("String") instanceof String s) regex = Pattern.compile(Pattern.quote(s));
                else if (pattern.get("Regex") instanceof String r) regex = Regexes.compile(r, where);
                else throw new QtoolException(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
                String behavior = stringRequired(p, "behavior", where);
                PreTokenizer.Behavior b = switch (behavior) {
                    case "Removed" -> PreTokenizer.Behavior.REMOVED;
                    case "Isolated" -> PreTokenizer.Behavior.ISOLATED;
                    case "MergedWithPrevious" -> PreTokenizer.Behavior.MERGED_WITH_PREVIOUS;
                    case "MergedWithNext" -> PreTokenizer.Behavior.MERGED_WITH_NEXT;
                    case "Contiguous" -> PreTokenizer.Behavior.CONTIGUOUS;
                    default -> throw new QtoolException(where + ": unknown split behavior \"" + behavior + "\"");
                };
                yield new PreTokenizer.Split(regex, b, bool(p, "invert", false));
            }
            case "ByteLevel" -> new PreTokenizer.ByteLevelSplit(bool(p, "add_prefix_space", true), bool(p, "use_regex", true));
            case "Digits" -> new PreTokenizer.Digits(bool(p, "individual_digits", false));
            case "Metaspace" -> new PreTokenizer.Metaspace(replacement(p, where), prependScheme(p, where), bool(p, "split", true));
            case "Whitespace" -> new PreTokenizer.Whitespace();
            case "WhitespaceSplit" -> new PreTokenizer.WhitespaceSplit();
            default -> throw new QtoolException(where + ": pre-tokenizer type \"" + type + "\" is not supported");
        };
    }

    static TokenDecoder decoder(Object v, String where) {
        if (v == null) return TokenDecoder.PLAIN;
        boolean[] byteLevel = {false};
        boolean[] byteFallback = {false};
        int[] strip = {0};
        List<String[]> replacements = new ArrayList<>();
        collectDecoder(Json.object(v, where), where, byteLevel, byteFallback, strip, replacements);
        return new TokenDecoder(byteLevel[0], List.copyOf(replacements), byteFallback[0], strip[0]);
    }

    private static void collectDecoder(Map<String, Object> d, String where, boolean[] byteLevel, boolean[] byteFallback,
                                       int[] strip, List<String[]> replacements) {
        String type = typeOf(d, where);
        switch (type) {
            case "Sequence" -> {
                List<Object> list = Json.array(require(d, "decoders", where), where + ".decoders");
                for (int i = 0; i < list.size(); i++) {
                    String w = where + ".decoders[" + i + "]";
                    collectDecoder(Json.object(list.get(i), w), w, byteLevel, byteFallback, strip, replacements);
                }
            }
            case "ByteLevel" -> byteLevel[0] = true;
            case "ByteFallback" -> byteFallback[0] = true;
            case "Fuse" -> { /* tokens are concatenated anyway */ }
            case "Replace" -> {
                Map<String, Object> pattern = Json.object(require(d, "pattern", where), where + ".pattern");
                if (!(pattern.get("String") instanceof String s)) throw new QtoolException(where + ": only literal Replace patterns are supported");
                replacements.add(new String[] {s, stringRequired(d, "content", where)});
            }
            case "Strip" -> {
                if (!" ".equals(d.get("content"))) throw new QtoolException(where + ": Strip of " + Regexes.quote(String.valueOf(d.get("content"))) + " is not supported");
                strip[0] = intValue(d.getOrDefault("start", 0L), where + ".start");
                if (intValue(d.getOrDefault("stop", 0L), where + ".stop") != 0) throw new QtoolException(where + ": Strip with stop > 0 is not supported");
            }
            case "Metaspace" -> {
                replacements.add(new String[] {String.valueOf(replacement(d, where)), " "});
                if (prependScheme(d, where) != PreTokenizer.PrependScheme.NEVER) strip[0] = 1;
            }
            default -> throw new QtoolException(where + ": decoder type \"" + type + "\" is not supported");
        }
    }

    /** BOS/EOS the post-processor puts around a single sequence. */
    static Template template(Object v, Map<String, Integer> ids, String where) {
        if (v == null) return new Template(-1, -1);
        Map<String, Object> p = Json.object(v, where);
        String type = typeOf(p, where);
        switch (type) {
            case "Sequence" -> {
                int bos = -1, eos = -1;
                List<Object> list = Json.array(require(p, "processors", where), where + ".processors");
                for (int i = 0; i < list.size(); i++) {
                    Template t = template(list.get(i), ids, where + ".processors[" + i + "]");
                    if (t.bos >= 0) bos = t.bos;
                    if (t.eos >= 0) eos = t.eos;
                }
                return new Template(bos, eos);
            }
            case "TemplateProcessing" -> {
                List<Object> single = Json.array(require(p, "single", where), where + ".single");
                Map<String, Object> specials = p.get("special_tokens") == null ? Map.of() : Json.object(p.get("special_tokens"), where + ".special_tokens");
                int bos = single.isEmpty() ? -1 : specialId(single.getFirst(), specials, ids, where);
                int eos = single.size() < 2 ? -1 : specialId(single.getLast(), specials, ids, where);
                return new Template(bos, eos);
            }
            default -> {
                return new Template(-1, -1);
            }
        }
    }

    private static int specialId(Object item, Map<String, Object> specials, Map<String, Integer> ids, String where) {
        if (!(item instanceof Map<?, ?> m) || !(m.get("SpecialToken") instanceof Map<?, ?> st) || !(st.get("id") instanceof String name)) return -1;
        if (specials.get(name) instanceof Map<?, ?> sp && sp.get("ids") instanceof List<?> l && !l.isEmpty() && l.getFirst() instanceof Number n) {
            return n.intValue();
        }
        Integer id = ids.get(name);
        if (id == null) throw new QtoolException(where + ": special token " + Regexes.quote(name) + " is not in the vocabulary");
        return id;
    }

    private static char replacement(Map<String, Object> p, String where) {
        String r = p.get("replacement") instanceof String s ? s : "\u2581";
        if (r.length() != 1) throw new QtoolException(where + ": Metaspace replacement must be one character");
        return r.charAt(0);
    }

    private static PreTokenizer.PrependScheme prependScheme(Map<String, Object> p, String where) {
        if (p.get("prepend_scheme") instanceof String s) {
            return switch (s) {
                case "always" -> PreTokenizer.PrependScheme.ALWAYS;
                case "first" -> PreTokenizer.PrependScheme.FIRST;
                case "never" -> PreTokenizer.PrependScheme.NEVER;
                default -> throw new QtoolException(where + ": unknown prepend_scheme \"" + s + "\"");
            };
        }
        return bool(p, "add_prefix_space", true) ? PreTokenizer.PrependScheme.ALWAYS : PreTokenizer.PrependScheme.NEVER;
    }

    // ---- small JSON accessors ----

    private static String typeOf(Map<String, Object> o, String where) {
        if (!(o.get("type") instanceof String t)) throw new QtoolException(where + ": no \"type\"");
        return t;
    }

    private static Object require(Map<String, Object> o, String key, String where) {
        Object v = o.get(key);
        if (v == null) throw new QtoolException(where + ": no \"" + key + "\"");
        return v;
    }

    private static String stringRequired(Map<String, Object> o, String key, String where) {
        if (!(o.get(key) instanceof String s)) throw new QtoolException(where + ": \"" + key + "\" must be a string");
        return s;
    }

    private static String string(Map<String, Object> o, String key) {
        return o.get(key) instanceof String s ? s : null;
    }

    static boolean bool(Map<String, Object> o, String key, boolean dflt) {
        return o.get(key) instanceof Boolean b ? b : dflt;
    }

    static int intValue(Object v, String where) {
        if (v instanceof Long l && l >= Integer.MIN_VALUE && l <= Integer.MAX_VALUE) return l.intValue();
        throw new QtoolException(where + ": expected an integer, got " + v);
    }

    private static double doubleValue(Object v, String where) {
        if (v instanceof Number n) return n.doubleValue();
        throw new QtoolException(where + ": expected a number, got " + v);
    }
}
