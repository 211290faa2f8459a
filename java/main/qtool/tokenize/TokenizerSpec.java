package qtool.tokenize;

import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * A tokenizer as GGUF describes it in its {@code tokenizer.ggml.*} metadata, for {@link Tokenizer#fromSpec} and
 * {@link TokenizerJsonWriter}.
 *
 * @param model          {@code tokenizer.ggml.model}: "llama" (SentencePiece-style BPE driven by scores, "▁" for
 *                       spaces, byte fallback) or "gpt2" (byte-level BPE driven by merges)
 * @param pre            {@code tokenizer.ggml.pre} ("smollm", "llama-bpe", "qwen2", "default"...); the pre-tokenizer
 *                       regexes of "gpt2" vocabularies; null or ignored for "llama"
 * @param tokens         {@code tokenizer.ggml.tokens}, by id
 * @param scores         {@code tokenizer.ggml.scores}, by id; may be null ("gpt2")
 * @param tokenTypes     {@code tokenizer.ggml.token_type}, by id ({@link #TYPE_NORMAL}...); may be null (all normal)
 * @param merges         {@code tokenizer.ggml.merges} ("a b": the two tokens joined by one space), in rank order; may
 *                       be null ("llama")
 * @param bos            {@code tokenizer.ggml.bos_token_id}, -1 when none (likewise eos, unk, pad)
 * @param addBos         {@code tokenizer.ggml.add_bos_token}
 * @param addEos         {@code tokenizer.ggml.add_eos_token}
 * @param addSpacePrefix {@code tokenizer.ggml.add_space_prefix}: "llama" vocabularies put "▁" before the text (the
 *                       SentencePiece dummy prefix); llama.cpp's default is true for "llama", false otherwise
 */
public record TokenizerSpec(String model, String pre, String[] tokens, float[] scores, int[] tokenTypes,
                            String[] merges, int bos, int eos, int unk, int pad, boolean addBos, boolean addEos,
                            boolean addSpacePrefix) {

    public static final int TYPE_NORMAL = 1;
    public static final int TYPE_UNKNOWN = 2;
    public static final int TYPE_CONTROL = 3;
    public static final int TYPE_USER_DEFINED = 4;
    public static final int TYPE_UNUSED = 5;
    public static final int TYPE_BYTE = 6;

    public static final String MODEL_LLAMA = "llama";
    public static final String MODEL_GPT2 = "gpt2";

    public TokenizerSpec {
        if (model == null) throw new QtoolException("tokenizer spec: no model (tokenizer.ggml.model)");
        if (tokens == null || tokens.length == 0) throw new QtoolException("tokenizer spec: no tokens (tokenizer.ggml.tokens)");
        if (scores != null && scores.length != tokens.length) {
            throw new QtoolException("tokenizer spec: " + scores.length + " scores for " + tokens.length + " tokens");
        }
        if (tokenTypes != null && tokenTypes.length != tokens.length) {
            throw new QtoolException("tokenizer spec: " + tokenTypes.length + " token types for " + tokens.length + " tokens");
        }
        for (int id : new int[] {bos, eos, unk, pad}) {
            if (id < -1 || id >= tokens.length) throw new QtoolException("tokenizer spec: special token id " + id + " is outside the vocabulary of " + tokens.length);
        }
    }

    /** With llama.cpp's default for {@code add_space_prefix}: true for "llama" vocabularies. */
    public TokenizerSpec(String model, String pre, String[] tokens, float[] scores, int[] tokenTypes, String[] merges,
                         int bos, int eos, int unk, int pad, boolean addBos, boolean addEos) {
        this(model, pre, tokens, scores, tokenTypes, merges, bos, eos, unk, pad, addBos, addEos, MODEL_LLAMA.equals(model));
    }

    /**
     * The spec from GGUF key/value metadata ({@code tokenizer.ggml.*}; other keys are ignored), with llama.cpp's
     * defaults for what is absent: "llama" vocabularies BOS 1, EOS 2, unknown 0, add_bos true, add_space_prefix
     * true; "gpt2" ones no BOS/EOS, add_bos true only for the Llama-3-style pre-tokenizers. Arrays may be Java arrays
     * (String[], float[], int[]...) or Lists; numbers any Number.
     *
     * @throws QtoolException naming the key when one is missing or of the wrong type
     */
    public static TokenizerSpec fromGgufMetadata(Map<String, ?> metadata) {
        String model = ggufString(metadata, "tokenizer.ggml.model", true);
        String pre = ggufString(metadata, "tokenizer.ggml.pre", false);
        String[] tokens = ggufStrings(metadata, "tokenizer.ggml.tokens", true);
        Object scoreValue = metadata.get("tokenizer.ggml.scores");
        float[] scores = null;
        if (scoreValue != null) {
            Number[] n = ggufNumbers(scoreValue, "tokenizer.ggml.scores");
            scores = new float[n.length];
            for (int i = 0; i < n.length; i++) scores[i] = n[i].floatValue();
        }
        Object typeValue = metadata.get("tokenizer.ggml.token_type");
        int[] types = null;
        if (typeValue != null) {
            Number[] n = ggufNumbers(typeValue, "tokenizer.ggml.token_type");
            types = new int[n.length];
            for (int i = 0; i < n.length; i++) types[i] = n[i].intValue();
        }
        String[] merges = ggufStrings(metadata, "tokenizer.ggml.merges", false);
        boolean llama = MODEL_LLAMA.equals(model);
        int n = tokens.length;
        int bos = ggufId(metadata, "tokenizer.ggml.bos_token_id", llama ? 1 : -1, n);
        int eos = ggufId(metadata, "tokenizer.ggml.eos_token_id", llama ? 2 : -1, n);
        int unk = ggufId(metadata, "tokenizer.ggml.unknown_token_id", llama ? 0 : -1, n);
        int pad = ggufId(metadata, "tokenizer.ggml.padding_token_id", -1, n);
        boolean addBosDefault = llama || (MODEL_GPT2.equals(model) && Regexes.ggmlPre(pre).addBos());
        boolean addBos = ggufBool(metadata, "tokenizer.ggml.add_bos_token", addBosDefault);
        boolean addEos = ggufBool(metadata, "tokenizer.ggml.add_eos_token", false);
        boolean addSpacePrefix = ggufBool(metadata, "tokenizer.ggml.add_space_prefix", llama);
        return new TokenizerSpec(model, pre, tokens, scores, types, merges, bos, eos, unk, pad, addBos && bos >= 0,
                addEos && eos >= 0, addSpacePrefix);
    }

    private static String ggufString(Map<String, ?> m, String key, boolean required) {
        Object v = m.get(key);
        if (v == null && !required) return null;
        if (v instanceof String s) return s;
        throw new QtoolException("GGUF metadata " + key + ": " + (v == null ? "missing" : "expected a string"));
    }

    private static String[] ggufStrings(Map<String, ?> m, String key, boolean required) {
        Object v = m.get(key);
        if (v == null && !required) return null;
        if (v instanceof String[] a) return a.clone();
        if (v instanceof List<?> l && l.stream().allMatch(e -> e instanceof String)) return l.toArray(String[]::new);
        throw new QtoolException("GGUF metadata " + key + ": " + (v == null ? "missing" : "expected an array of strings"));
    }

    private static Number[] ggufNumbers(Object v, String key) {
        switch (v) {
            case float[] a -> { Number[] r = new Number[a.length]; for (int i = 0; i < a.length; i++) r[i] = a[i]; return r; }
            case double[] a -> { Number[] r = new Number[a.length]; for (int i = 0; i < a.length; i++) r[i] = a[i]; return r; }
            case int[] a -> { Number[] r = new Number[a.length]; for (int i = 0; i < a.length; i++) r[i] = a[i]; return r; }
            case long[] a -> { Number[] r = new Number[a.length]; for (int i = 0; i < a.length; i++) r[i] = a[i]; return r; }
            case List<?> l when l.stream().allMatch(e -> e instanceof Number) -> { return l.toArray(Number[]::new); }
            default -> throw new QtoolException("GGUF metadata " + key + ": expected an array of numbers");
        }
    }

    private static int ggufId(Map<String, ?> m, String key, int dflt, int vocabSize) {
        Object v = m.get(key);
        if (v == null) return dflt < vocabSize ? dflt : -1;
        if (!(v instanceof Number n)) throw new QtoolException("GGUF metadata " + key + ": expected a number");
        long id = n.longValue();
        if (id < 0 || id >= vocabSize) throw new QtoolException("GGUF metadata " + key + ": " + id + " is outside the vocabulary of " + vocabSize);
        return (int) id;
    }

    private static boolean ggufBool(Map<String, ?> m, String key, boolean dflt) {
        Object v = m.get(key);
        if (v == null) return dflt;
        if (v instanceof Boolean b) return b;
        throw new QtoolException("GGUF metadata " + key + ": expected a boolean");
    }

    /** The type of a token; normal when the spec has no types. */
    public int type(int id) {
        return tokenTypes == null ? TYPE_NORMAL : tokenTypes[id];
    }
}
