package qtool.tokenize;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Added and special tokens ("<|im_start|>", "<s>") found in the text as whole strings before the normalizer and the
 * model see it, leftmost first and longest among those starting at the same place (HF's AddedVocabulary; llama.cpp's
 * special-token partition). lstrip/rstrip make the token swallow the whitespace before/after it; single_word
 * requires word boundaries around it.
 */
final class AddedTokens {
    record Token(int id, String content, boolean special, boolean lstrip, boolean rstrip, boolean singleWord,
                 boolean normalized) {}

    /** A piece of the input: a token ({@code id >= 0}) or text to tokenize; {@code start}: its offset in the input. */
    record Segment(int id, String text, int start) {}

    final List<Token> tokens;
    /** Candidates by first char, longest first. */
    private final Map<Character, List<Token>> byFirstChar = new HashMap<>();

    AddedTokens(List<Token> tokens) {
        this.tokens = List.copyOf(tokens);
        for (Token t : tokens) {
            if (t.content.isEmpty()) continue;
            byFirstChar.computeIfAbsent(t.content.charAt(0), c -> new ArrayList<>()).add(t);
        }
        for (List<Token> l : byFirstChar.values()) l.sort(Comparator.comparingInt((Token t) -> t.content.length()).reversed());
    }

    boolean isEmpty() {
        return byFirstChar.isEmpty();
    }

    List<Segment> split(String text) {
        List<Segment> out = new ArrayList<>();
        if (byFirstChar.isEmpty()) {
            if (!text.isEmpty()) out.add(new Segment(-1, text, 0));
            return out;
        }
        int segmentStart = 0;
        int pos = 0;
        while (pos < text.length()) {
            Token match = null;
            List<Token> candidates = byFirstChar.get(text.charAt(pos));
            if (candidates != null) {
                for (Token t : candidates) {
                    if (text.startsWith(t.content, pos) && (!t.singleWord || isWordBoundary(text, pos, pos + t.content.length()))) {
                        match = t;
                        break;
                    }
                }
            }
            if (match == null) {
                pos++;
                continue;
            }
            int start = pos;
            int end = pos + match.content.length();
            if (match.lstrip) while (start > segmentStart && Character.isWhitespace(text.charAt(start - 1))) start--;
            if (match.rstrip) while (end < text.length() && Character.isWhitespace(text.charAt(end))) end++;
            if (segmentStart < start) out.add(new Segment(-1, text.substring(segmentStart, start), segmentStart));
            out.add(new Segment(match.id, match.content, start));
            segmentStart = pos = end;
        }
        if (segmentStart < text.length()) out.add(new Segment(-1, text.substring(segmentStart), segmentStart));
        return out;
    }

    private static boolean isWordBoundary(String text, int start, int end) {
        boolean before = start == 0 || !isWordChar(text.codePointBefore(start));
        boolean after = end == text.length() || !isWordChar(text.codePointAt(end));
        return before && after;
    }

    private static boolean isWordChar(int cp) {
        return Character.isLetterOrDigit(cp) || cp == '_';
    }
}
