package qtool.tokenize;

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

    /** The type of a token; normal when the spec has no types. */
    public int type(int id) {
        return tokenTypes == null ? TYPE_NORMAL : tokenTypes[id];
    }
}
