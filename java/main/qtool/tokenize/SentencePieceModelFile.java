package qtool.tokenize;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import qtool.QtoolException;

/**
 * Reads SentencePiece's tokenizer.model (a protobuf ModelProto): the pieces with their scores and types, the model
 * type (BPE or unigram), byte fallback, the normalizer's dummy prefix and whitespace handling, unk/bos/eos ids.
 */
final class SentencePieceModelFile {
    private SentencePieceModelFile() {}

    static final int MODEL_UNIGRAM = 1;
    static final int MODEL_BPE = 2;

    /** What a tokenizer.model holds that tokenizing needs. */
    record Model(String where, String[] pieces, float[] scores, int[] types, int modelType, boolean byteFallback,
                 int unkId, int bosId, int eosId, boolean addDummyPrefix, boolean removeExtraWhitespaces,
                 boolean escapeWhitespaces, boolean charsmap) {}

    /** Parses a tokenizer.model; piece types are checked, ids are as the file gives them. */
    static Model read(Path file) {
        String where = file.toString();
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (IOException e) {
            throw new QtoolException(where + ": cannot read: " + e.getMessage());
        }
        List<String> pieces = new ArrayList<>();
        List<Float> scores = new ArrayList<>();
        List<Integer> types = new ArrayList<>();
        // proto2 defaults of TrainerSpec and NormalizerSpec
        int modelType = MODEL_UNIGRAM;
        boolean byteFallback = false, treatWhitespaceAsSuffix = false;
        int unkId = 0, bosId = 1, eosId = 2;
        boolean addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
        boolean charsmap = false;
        boolean sawTrainerSpec = false;

        ProtobufReader r = new ProtobufReader(bytes, 0, bytes.length, where);
        while (r.hasMore()) {
            int tag = r.readTag();
            int field = tag >>> 3, wire = tag & 7;
            if (field == 1 && wire == ProtobufReader.LENGTH_DELIMITED) { // pieces
                ProtobufReader p = r.readMessage("piece " + pieces.size());
                String piece = null;
                float score = 0;
                int type = TokenizerSpec.TYPE_NORMAL;
                while (p.hasMore()) {
                    int t = p.readTag();
                    switch (t) {
                        case (1 << 3) | ProtobufReader.LENGTH_DELIMITED -> piece = p.readString();
                        case (2 << 3) | ProtobufReader.FIXED32 -> score = p.readFloat();
                        case (3 << 3) | ProtobufReader.VARINT -> type = (int) p.readVarint();
                        default -> p.skip(t & 7);
                    }
                }
                if (piece == null) throw r.malformed("piece " + pieces.size() + " has no text");
                pieces.add(piece);
                scores.add(score);
                types.add(type);
            } else if (field == 2 && wire == ProtobufReader.LENGTH_DELIMITED) { // trainer_spec
                sawTrainerSpec = true;
                ProtobufReader t = r.readMessage("trainer_spec");
                while (t.hasMore()) {
                    int k = t.readTag();
                    int f = k >>> 3;
                    if ((k & 7) != ProtobufReader.VARINT) {
                        t.skip(k & 7);
                        continue;
                    }
                    long v = t.readVarint();
                    switch (f) {
                        case 3 -> modelType = (int) v;
                        case 24 -> treatWhitespaceAsSuffix = v != 0;
                        case 35 -> byteFallback = v != 0;
                        case 40 -> unkId = (int) v;
                        case 41 -> bosId = (int) v;
                        case 42 -> eosId = (int) v;
                        default -> { }
                    }
                }
            } else if (field == 3 && wire == ProtobufReader.LENGTH_DELIMITED) { // normalizer_spec
                ProtobufReader n = r.readMessage("normalizer_spec");
                while (n.hasMore()) {
                    int k = n.readTag();
                    switch (k) {
                        case (2 << 3) | ProtobufReader.LENGTH_DELIMITED -> { int[] span = n.readLengthDelimited(); charsmap = span[1] > span[0]; }
                        case (3 << 3) | ProtobufReader.VARINT -> addDummyPrefix = n.readVarint() != 0;
                        case (4 << 3) | ProtobufReader.VARINT -> removeExtraWhitespaces = n.readVarint() != 0;
                        case (5 << 3) | ProtobufReader.VARINT -> escapeWhitespaces = n.readVarint() != 0;
                        default -> n.skip(k & 7);
                    }
                }
            } else {
                r.skip(wire);
            }
        }
        if (pieces.isEmpty() || !sawTrainerSpec) throw new QtoolException(where + ": not a SentencePiece model (no pieces or no trainer_spec)");
        if (treatWhitespaceAsSuffix) throw new QtoolException(where + ": treat_whitespace_as_suffix is not supported");

        int n = pieces.size();
        String[] pieceArray = pieces.toArray(String[]::new);
        float[] scoreArray = new float[n];
        int[] typeArray = new int[n];
        for (int i = 0; i < n; i++) {
            scoreArray[i] = scores.get(i);
            typeArray[i] = types.get(i);
            if (typeArray[i] < TokenizerSpec.TYPE_NORMAL || typeArray[i] > TokenizerSpec.TYPE_BYTE) {
                throw new QtoolException(where + ": piece " + i + " has unknown type " + typeArray[i]);
            }
        }
        return new Model(where, pieceArray, scoreArray, typeArray, modelType, byteFallback, unkId, bosId, eosId, addDummyPrefix,
                removeExtraWhitespaces, escapeWhitespaces, charsmap);
    }

    static PipelineTokenizer load(Path file) {
        Model m = read(file);
        int n = m.pieces().length;
        int unkId = validId(m.unkId(), n), bosId = validId(m.bosId(), n);
        TokenModel model = switch (m.modelType()) {
            case MODEL_BPE -> new ScoreBpe(m.pieces(), m.scores(), m.types(), unkId, m.byteFallback());
            case MODEL_UNIGRAM -> new Unigram(m.pieces(), m.scores(), m.types(), unkId, m.byteFallback());
            default -> throw new QtoolException(m.where() + ": model_type " + m.modelType() + " is not supported (1 unigram, 2 BPE)");
        };
        return new PipelineTokenizer(m.where(), m.pieces(), m.types(), specialTokens(m.pieces(), m.types(), false),
                new Normalizer.SentencePiece(m.charsmap(), m.removeExtraWhitespaces(), m.escapeWhitespaces(), m.addDummyPrefix()),
                null, model, TokenDecoder.sentencePiece(m.addDummyPrefix()), bosId, validId(m.eosId(), n), bosId >= 0);
    }

    private static int validId(int id, int n) {
        return id >= 0 && id < n ? id : -1;
    }

    /**
     * Control and unknown pieces written in the text stand for themselves, as in llama.cpp and HF; so do
     * user-defined ones with {@code userDefined} (llama.cpp, HF), where SentencePiece itself instead matches them
     * inside the normalized text (the model then keeps them whole).
     */
    static AddedTokens specialTokens(String[] pieces, int[] types, boolean userDefined) {
        List<AddedTokens.Token> added = new ArrayList<>();
        for (int id = 0; id < pieces.length; id++) {
            int t = types[id];
            if (pieces[id] == null || pieces[id].isEmpty()) continue;
            if (t == TokenizerSpec.TYPE_CONTROL || t == TokenizerSpec.TYPE_UNKNOWN || (userDefined && t == TokenizerSpec.TYPE_USER_DEFINED)) {
                added.add(new AddedTokens.Token(id, pieces[id], t != TokenizerSpec.TYPE_USER_DEFINED, false, false, false, false));
            }
        }
        return new AddedTokens(added);
    }
}
