package qtool.format.gguf;

import qtool.tokenize.TokenizerSpec;

/** The {@code tokenizer.ggml.*} metadata of a GGUF file as a {@link TokenizerSpec}, and back. */
public final class GgufTokenizer {
    private GgufTokenizer() {}

    public static final String MODEL = "tokenizer.ggml.model";
    public static final String PRE = "tokenizer.ggml.pre";
    public static final String TOKENS = "tokenizer.ggml.tokens";
    public static final String SCORES = "tokenizer.ggml.scores";
    public static final String TOKEN_TYPE = "tokenizer.ggml.token_type";
    public static final String MERGES = "tokenizer.ggml.merges";
    public static final String BOS = "tokenizer.ggml.bos_token_id";
    public static final String EOS = "tokenizer.ggml.eos_token_id";
    public static final String UNK = "tokenizer.ggml.unknown_token_id";
    public static final String PAD = "tokenizer.ggml.padding_token_id";
    public static final String ADD_BOS = "tokenizer.ggml.add_bos_token";
    public static final String ADD_EOS = "tokenizer.ggml.add_eos_token";
    public static final String ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix";
    public static final String CHAT_TEMPLATE = "tokenizer.chat_template";

    /**
     * The file's tokenizer. Absent flags take llama.cpp's defaults for the vocabulary kind: a "llama" (SentencePiece)
     * vocabulary adds BOS and a space prefix, a "gpt2" one neither.
     */
    public static TokenizerSpec spec(GgufFile g) {
        String model = g.getString(MODEL);
        boolean spm = TokenizerSpec.MODEL_LLAMA.equals(model);
        return new TokenizerSpec(model, g.getString(PRE, null), g.getStrings(TOKENS),
                g.has(SCORES) ? g.getFloats(SCORES) : null, g.has(TOKEN_TYPE) ? g.getInts(TOKEN_TYPE) : null,
                g.has(MERGES) ? g.getStrings(MERGES) : null, id(g, BOS), id(g, EOS), id(g, UNK), id(g, PAD),
                g.getBool(ADD_BOS, spm), g.getBool(ADD_EOS, false), g.getBool(ADD_SPACE_PREFIX, spm));
    }

    private static int id(GgufFile g, String key) {
        return g.has(key) ? g.getInt(key) : -1;
    }

    /** Writes a spec as {@code tokenizer.ggml.*} metadata, with the value types llama.cpp's converter uses. */
    public static void put(GgufWriter w, TokenizerSpec s) {
        w.putString(MODEL, s.model());
        if (s.pre() != null) w.putString(PRE, s.pre());
        w.put(TOKENS, GgufValue.strings(s.tokens()));
        if (s.scores() != null) w.put(SCORES, GgufValue.float32s(s.scores()));
        if (s.tokenTypes() != null) w.put(TOKEN_TYPE, GgufValue.int32s(s.tokenTypes()));
        if (s.merges() != null) w.put(MERGES, GgufValue.strings(s.merges()));
        if (s.bos() >= 0) w.putUint32(BOS, s.bos());
        if (s.eos() >= 0) w.putUint32(EOS, s.eos());
        if (s.unk() >= 0) w.putUint32(UNK, s.unk());
        if (s.pad() >= 0) w.putUint32(PAD, s.pad());
        w.putBool(ADD_BOS, s.addBos());
        w.putBool(ADD_EOS, s.addEos());
        w.putBool(ADD_SPACE_PREFIX, s.addSpacePrefix());
    }
}
