package qtool.tokenize;

/** The model step of a tokenizer: one pre-tokenized word to token ids. Implementations are thread-safe. */
interface TokenModel {
    void encode(String word, IntList out);

    /**
     * Where a long word may be cut into parts that encode independently to the same ids (see {@link CharPairs});
     * null: nowhere.
     */
    default CharPairs cutPoints() {
        return null;
    }
}
