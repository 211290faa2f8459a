package qtool.tokenize;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * Unigram tokenization by Viterbi, as SentencePiece's optimized encoder runs it: the segmentation of the word into
 * pieces with the highest total score; a character no piece starts with becomes the unknown token at the lowest
 * score minus 10; consecutive unknowns fuse into one, which byte fallback then spells as bytes.
 */
final class Unigram implements TokenModel {
    private static final float UNKNOWN_PENALTY = 10f;

    private final Map<String, Integer> pieces;
    private final double[] scores;
    private final int unkId;
    private final double unkScore;
    private final int maxPieceChars;
    private final int[] byteIds = new int[256];

    Unigram(String[] pieceById, float[] scoreById, int[] types, int unkId, boolean byteFallback) {
        this.unkId = unkId;
        this.pieces = new HashMap<>(pieceById.length * 2);
        this.scores = new double[pieceById.length];
        Arrays.fill(byteIds, -1);
        float min = Float.MAX_VALUE, max = -Float.MAX_VALUE;
        for (int id = 0; id < pieceById.length; id++) {
            int type = types == null ? TokenizerSpec.TYPE_NORMAL : types[id];
            if (pieceById[id] != null && type == TokenizerSpec.TYPE_NORMAL) {
                min = Math.min(min, scoreById[id]);
                max = Math.max(max, scoreById[id]);
            }
        }
        if (min == Float.MAX_VALUE) min = max = 0;
        int maxChars = 1;
        for (int id = 0; id < pieceById.length; id++) {
            String p = pieceById[id];
            if (p == null) continue;
            int type = types == null ? TokenizerSpec.TYPE_NORMAL : types[id];
            if (type == TokenizerSpec.TYPE_NORMAL || type == TokenizerSpec.TYPE_USER_DEFINED) {
                pieces.putIfAbsent(p, id);
                maxChars = Math.max(maxChars, p.length());
                // SentencePiece favours user-defined pieces over any split of them
                scores[id] = type == TokenizerSpec.TYPE_USER_DEFINED ? p.codePointCount(0, p.length()) * max - 0.1 : scoreById[id];
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
        double[] best = new double[len + 1];
        int[] from = new int[len + 1];
        int[] token = new int[len + 1];
        Arrays.fill(best, Double.NEGATIVE_INFINITY);
        Arrays.fill(from, -1);
        best[0] = 0;
        for (int i = 0; i < len; ) {
            int charEnd = i + Character.charCount(word.codePointAt(i));
            if (best[i] != Double.NEGATIVE_INFINITY) {
                boolean singleChar = false;
                for (int end = charEnd; end <= Math.min(len, i + maxPieceChars); ) {
                    Integer id = pieces.get(word.substring(i, end));
                    if (id != null) {
                        if (end == charEnd) singleChar = true;
                        double s = best[i] + scores[id];
                        if (from[end] < 0 || s > best[end]) {
                            best[end] = s;
                            from[end] = i;
                            token[end] = id;
                        }
                    }
                    if (end == len) break;
                    end += Character.charCount(word.codePointAt(end));
                }
                if (!singleChar) {
                    double s = best[i] + unkScore;
                    if (from[charEnd] < 0 || s > best[charEnd]) {
                        best[charEnd] = s;
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
