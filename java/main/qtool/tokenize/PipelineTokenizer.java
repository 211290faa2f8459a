package qtool.tokenize;

import java.util.List;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The tokenizer pipeline of HF tokenizers, which SentencePiece and llama.cpp vocabularies also fit: added tokens are
 * cut out of the text; each remaining segment is normalized, pre-tokenized into words, and each word encoded by the
 * model. Results for short words are cached: natural text repeats most of its words.
 */
final class PipelineTokenizer implements Tokenizer {
    private static final int CACHED_WORD_MAX_CHARS = 64;
    private static final int CACHE_MAX_ENTRIES = 200_000;

    final String source;
    final String[] pieces;
    final int[] types;
    final AddedTokens addedTokens;
    final Normalizer normalizer;
    final PreTokenizer preTokenizer;
    final TokenModel model;
    final TokenDecoder decoder;
    final int bos;
    final int eos;
    final boolean addBos;
    private final ConcurrentHashMap<String, int[]> cache = new ConcurrentHashMap<>();

    /**
     * @param source  where the tokenizer came from, for messages
     * @param pieces  token strings by id (added tokens included); null where an id is unused
     * @param types   TokenizerSpec.TYPE_* by id
     */
    PipelineTokenizer(String source, String[] pieces, int[] types, AddedTokens addedTokens, Normalizer normalizer,
                      PreTokenizer preTokenizer, TokenModel model, TokenDecoder decoder, int bos, int eos, boolean addBos) {
        this.source = source;
        this.pieces = pieces;
        this.types = types;
        this.addedTokens = addedTokens;
        this.normalizer = normalizer;
        this.preTokenizer = preTokenizer;
        this.model = model;
        this.decoder = decoder;
        this.bos = bos;
        this.eos = eos;
        this.addBos = addBos;
    }

    PipelineTokenizer withSpecials(int bos, int eos, boolean addBos) {
        return new PipelineTokenizer(source, pieces, types, addedTokens, normalizer, preTokenizer, model, decoder, bos, eos, addBos);
    }

    @Override
    public int[] encode(String text, boolean addBos) {
        IntList out = new IntList(Math.max(16, text.length() / 3));
        if (addBos && bos >= 0) out.add(bos);
        for (AddedTokens.Segment segment : addedTokens.split(text)) {
            if (segment.id() >= 0) out.add(segment.id());
            else encodeSegment(segment.text(), segment.start() == 0, out);
        }
        return out.toArray();
    }

    private void encodeSegment(String text, boolean atTextStart, IntList out) {
        if (normalizer != null) text = normalizer.apply(text);
        if (text.isEmpty()) return;
        if (preTokenizer == null) {
            encodeWord(text, out);
            return;
        }
        List<String> words = preTokenizer.split(text, atTextStart);
        for (String w : words) encodeWord(w, out);
    }

    private void encodeWord(String word, IntList out) {
        if (word.length() > CACHED_WORD_MAX_CHARS) {
            model.encode(word, out);
            return;
        }
        int[] ids = cache.get(word);
        if (ids == null) {
            IntList l = new IntList(8);
            model.encode(word, l);
            ids = l.toArray();
            if (cache.size() >= CACHE_MAX_ENTRIES) cache.clear();
            cache.put(word, ids);
        }
        out.addAll(ids);
    }

    @Override
    public String decode(int[] ids) {
        return StreamDecoder.decodeAll(this, ids, decoder.stripLeadingSpaces());
    }

    @Override
    public byte[] tokenBytes(int id) {
        checkId(id);
        if (isSpecial(id) || pieces[id] == null) return new byte[0];
        return decoder.bytes(pieces[id]);
    }

    @Override
    public StreamDecoder streamDecoder() {
        return new StreamDecoder(this, decoder.stripLeadingSpaces());
    }

    @Override
    public String piece(int id) {
        checkId(id);
        return pieces[id];
    }

    @Override
    public boolean isSpecial(int id) {
        checkId(id);
        return types[id] == TokenizerSpec.TYPE_CONTROL || types[id] == TokenizerSpec.TYPE_UNKNOWN;
    }

    private void checkId(int id) {
        if (id < 0 || id >= pieces.length) {
            throw new IllegalArgumentException("token id " + id + " is outside the vocabulary of " + pieces.length + " (" + source + ")");
        }
    }

    @Override
    public int bos() {
        return bos;
    }

    @Override
    public int eos() {
        return eos;
    }

    @Override
    public int vocabSize() {
        return pieces.length;
    }

    @Override
    public boolean addBosByDefault() {
        return addBos;
    }

    @Override
    public String toString() {
        return "Tokenizer[" + source + ", " + pieces.length + " tokens]";
    }
}
