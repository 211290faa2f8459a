package qtool.tokenize;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * Unigram tokenization by Viterbi, as SentencePiece's optimized encoder (unigram_model.cc, EncodeOptimized) runs it,
 * float arithmetic included: the segmentation of the word into pieces with the highest total score, the earliest
 * start winning ties; a character no piece covers alone becomes the unknown token at the lowest normal score minus
 * 10; user-defined pieces score (UTF-8 length × the highest normal score − 0.1), so they are always taken;
 * consecutive unknowns fuse into one, which byte fallback then spells as bytes.
 */
final class Unigram implements TokenModel {
    private static final float UNKNOWN_PENALTY = 10f;

    private final Map<String, Integer> pieces;
    private final float[] scores;
    private final boolean[] userDefined;
    private final double[] userDefinedScores;
    private final int unkId;
    private final float unkScore;
    private final int maxPieceChars;
    private final int[] byteIds = new int[256];

    Unigram(String[] pieceById, float[] scoreById, int[] types, int unkId, boolean byteFallback) {
        this.unkId = unkId;
        this.pieces = new HashMap<>(pieceById.length * 2);
        this.scores = Arrays.copyOf(scoreById, pieceById.length);
        this.userDefined = new boolean[pieceById.length];
        this.userDefinedScores = new double[pieceById.length];
        Arrays.fill(byteIds, -1);
        // as SentencePiece: min starts at FLT_MAX, max at FLT_MIN (the smallest positive float), over normal pieces
        float min = Float.MAX_VALUE, max = Float.MIN_NORMAL;
        for (int id = 0; id < pieceById.length; id++) {
            int type = types == null ? TokenizerSpec.TYPE_NORMAL : types[id];
            if (pieceById[id] != null && type == TokenizerSpec.TYPE_NORMAL) {
                min = Math.min(min, scoreById[id]);
                max = Math.max(max, scoreById[id]);
            }
        }
        int maxChars = 1;
        for (int id = 0; id < pieceById.length; id++) {
            String p = pieceById[id];
            if (p == null || p.isEmpty()) continue;
            int type = types == null ? TokenizerSpec.TYPE_NORMAL : types[id];
            if (type == TokenizerSpec.TYPE_NORMAL || type == TokenizerSpec.TYPE_USER_DEFINED) {
                pieces.putIfAbsent(p, id);
                maxChars = Math.max(maxChars, p.length());
                if (type == TokenizerSpec.TYPE_USER_DEFINED) {
                    userDefined[id] = true;
                    userDefinedScores[id] = p.getBytes(StandardCharsets.UTF_8).length * max - 0.1;
                }
            }
            if (byteFallback && type == TokenizerSpec.TYPE_BYTE) {
                int b = ScoreBpe.parseByteToken(p);
                if (b >= 0) byteIds[b] = id;
            }
        }
        this.unkScore = min - UNKNOWN_PENALTY;
        this.maxPieceChars = maxChars;
    }

    @Override
    public void encode(String word, IntList out) {
        int len = word.length();
        if (len == 0) return;
        float[] best = new float[len + 1];
        int[] from = new int[len + 1];
        int[] token = new int[len + 1];
        Arrays.fill(from, -1);
        for (int i = 0; i < len; ) {
            int charEnd = i + Character.charCount(word.codePointAt(i));
            if (i == 0 || from[i] >= 0) {
                boolean singleChar = false;
                for (int end = charEnd; end <= Math.min(len, i + maxPieceChars); ) {
                    Integer id = pieces.get(word.substring(i, end));
                    if (id != null) {
                        if (end == charEnd) singleChar = true;
                        // as SentencePiece: the candidate in double (its score expression is a double), compared
                        // with and stored as the float path score; over a long text the floats lose the small
                        // differences and the order of candidates decides, so that order is kept too
                        double candidate = (userDefined[id] ? userDefinedScores[id] : scores[id]) + (double) best[i];
                        if (from[end] < 0 || candidate > best[end]) {
                            best[end] = (float) candidate;
                            from[end] = i;
                            token[end] = id;
                        }
                    }
                    if (end == len) break;
                    end += Character.charCount(word.codePointAt(end));
                }
                if (!singleChar) {
                    float candidate = unkScore + best[i];
                    if (from[charEnd] < 0 || candidate > best[charEnd]) {
                        best[charEnd] = candidate;
                        from[charEnd] = i;
                        token[charEnd] = -1;
                    }
                }
            }
            i = charEnd;
        }
        // walk back, then emit forwards, fusing runs of unknown characters
        IntList ends = new IntList();
        for (int e = len; e > 0; e = from[e]) ends.add(e);
        int unkStart = -1;
        for (int k = ends.size() - 1; k >= 0; k--) {
            int e = ends.get(k);
            int s = from[e];
            if (token[e] < 0) {
                if (unkStart < 0) unkStart = s;
                continue;
            }
            if (unkStart >= 0) {
                emitUnknown(word.substring(unkStart, s), out);
                unkStart = -1;
            }
            out.add(token[e]);
        }
        if (unkStart >= 0) emitUnknown(word.substring(unkStart), out);
    }

    private void emitUnknown(String s, IntList out) {
        byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
        boolean allBytes = true;
        for (byte b : bytes) allBytes &= byteIds[b & 0xFF] >= 0;
        if (allBytes) {
            for (byte b : bytes) out.add(byteIds[b & 0xFF]);
        } else if (unkId >= 0) {
            out.add(unkId);
        }
    }
}
