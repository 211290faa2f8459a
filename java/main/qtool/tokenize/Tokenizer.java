package qtool.tokenize;

import java.nio.file.Path;

/**
 * Text ↔ token ids for one model. Implementations are immutable and thread-safe.
 *
 * <p>{@code encode} finds added/special tokens written in the text ("<|im_start|>", "</s>") and emits their ids, as
 * HF tokenizers and llama.cpp do by default. {@code decode} leaves special tokens (control and unknown ones: BOS,
 * EOS, "<|im_end|>") out, like HF's {@code decode(ids, skip_special_tokens=True)}.
 */
public interface Tokenizer {

    /** Token ids of the text, BOS first when {@code addBos} and the model has one. */
    int[] encode(String text, boolean addBos);

    /** Token ids of the text, BOS first when the model's tokenizer adds it by default. */
    default int[] encode(String text) {
        return encode(text, addBosByDefault());
    }

    /** The text of the ids, special tokens left out; the inverse of {@code encode(text, false)}. */
    String decode(int[] ids);

    /**
     * The bytes a token contributes to decoded text (UTF-8, possibly part of a character: byte tokens, byte-level
     * pieces); empty for special tokens. Decoded text is these bytes concatenated, less the dummy-prefix space that
     * SentencePiece-style tokenizers drop at the start: use {@link #streamDecoder()} to print token by token.
     */
    byte[] tokenBytes(int id);

    /** A decoder that turns ids into text one at a time without breaking UTF-8 sequences. */
    StreamDecoder streamDecoder();

    /** The token's string in the vocabulary, e.g. "Ġthe", "▁the", "<0x0A>", "<s>". */
    String piece(int id);

    /** Whether decode leaves the token out (control and unknown tokens). */
    boolean isSpecial(int id);

    /** Beginning-of-sequence id, or -1. */
    int bos();

    /** End-of-sequence id, or -1. */
    int eos();

    /** Number of ids: one more than the largest id. */
    int vocabSize();

    /** Whether the model expects BOS before a prompt (tokenizer_config.json add_bos_token, GGUF add_bos_token). */
    boolean addBosByDefault();

    /**
     * The tokenizer of an HF model directory (or the file itself): tokenizer.json if present, else SentencePiece's
     * tokenizer.model; BOS, EOS and add_bos from tokenizer_config.json, config.json and the tokenizer's
     * post-processor.
     *
     * @throws qtool.QtoolException naming the file and the problem when files are missing, malformed or of an
     *                              unsupported kind
     */
    static Tokenizer load(Path modelDir) {
        return TokenizerFiles.load(modelDir);
    }

    /** The tokenizer GGUF metadata describes, tokenizing as llama.cpp does. */
    static Tokenizer fromSpec(TokenizerSpec spec) {
        return SpecTokenizers.build(spec);
    }
}
