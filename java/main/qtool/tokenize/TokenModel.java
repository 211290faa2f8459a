package qtool.tokenize;

/** The model step of a tokenizer: one pre-tokenized word to token ids. Implementations are thread-safe. */
interface TokenModel {
    void encode(String word, IntList out);
}
