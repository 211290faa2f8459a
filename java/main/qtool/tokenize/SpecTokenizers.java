package qtool.tokenize;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/** Builds the tokenizer a {@link TokenizerSpec} (GGUF metadata) describes, tokenizing as llama.cpp does. */
final class SpecTokenizers {
    private SpecTokenizers() {}

    static PipelineTokenizer build(TokenizerSpec spec) {
        String source = "tokenizer.ggml (" + spec.model() + (spec.pre() == null ? "" : ", " + spec.pre()) + ")";
        String[] pieces = spec.tokens().clone();
        int n = pieces.length;
        int[] types = new int[n];
        for (int id = 0; id < n; id++) {
            if (pieces[id] == null) throw new QtoolException(source + ": token " + id + " is null");
            types[id] = spec.type(id);
        }
        if (spec.unk() >= 0 && types[spec.unk()] == TokenizerSpec.TYPE_NORMAL) types[spec.unk()] = TokenizerSpec.TYPE_UNKNOWN;
        AddedTokens added = SentencePieceModelFile.specialTokens(pieces, types, true);
        return switch (spec.model()) {
            case TokenizerSpec.MODEL_LLAMA -> {
                boolean byteFallback = Arrays.stream(types).anyMatch(t -> t == TokenizerSpec.TYPE_BYTE);
                float[] scores = spec.scores() == null ? new float[n] : spec.scores();
                ScoreBpe model = new ScoreBpe(pieces, scores, types, spec.unk(), byteFallback);
                // llama.cpp: spaces escaped as "▁", a space before the first text and after each special token
                Normalizer normalizer = new Normalizer.SentencePiece(false, false, true, spec.addSpacePrefix());
                yield new PipelineTokenizer(source, pieces, types, added, normalizer, null, model,
                        TokenDecoder.sentencePiece(spec.addSpacePrefix()), spec.bos(), spec.eos(), spec.addBos());
            }
            case TokenizerSpec.MODEL_GPT2 -> {
                Regexes.GgmlPre pre = Regexes.ggmlPre(spec.pre());
                if (spec.merges() == null) throw new QtoolException(source + ": a gpt2 vocabulary needs merges (tokenizer.ggml.merges)");
                Map<String, Integer> vocab = new HashMap<>(n * 2);
                for (int id = 0; id < n; id++) vocab.putIfAbsent(pieces[id], id);
                MergeBpe model = new MergeBpe(vocab, parseMerges(spec.merges(), source), -1, false, false,
                        pre.ignoreMerges(), null, null, source);
                yield new PipelineTokenizer(source, pieces, types, added, null, preTokenizer(pre), model,
                        TokenDecoder.byteLevelDecoder(), spec.bos(), spec.eos(), spec.addBos());
            }
            default -> throw new QtoolException("tokenizer.ggml.model '" + spec.model() + "' is not supported (llama, gpt2)");
        };
    }

    /** llama.cpp's regex chain as HF pre-tokenizers: each regex an isolating Split, then the byte-level spelling. */
    static PreTokenizer preTokenizer(Regexes.GgmlPre pre) {
        List<PreTokenizer> steps = new ArrayList<>();
        for (String r : pre.regexes()) {
            steps.add(new PreTokenizer.Split(Regexes.compile(r, "tokenizer.ggml.pre"), PreTokenizer.Behavior.ISOLATED, false));
        }
        steps.add(new PreTokenizer.ByteLevelSplit(false, false));
        return new PreTokenizer.Sequence(steps);
    }

    /** "a b" → {a, b}, split at the first space after the first character as llama.cpp does. */
    static List<String[]> parseMerges(String[] merges, String source) {
        List<String[]> out = new ArrayList<>(merges.length);
        for (int i = 0; i < merges.length; i++) {
            String m = merges[i];
            int space = m == null ? -1 : m.indexOf(' ', 1);
            if (space < 0) throw new QtoolException(source + ": merge " + i + " " + Regexes.quote(String.valueOf(m)) + " is not two tokens separated by a space");
            out.add(new String[] {m.substring(0, space), m.substring(space + 1)});
        }
        return out;
    }
}
