package qtool.tokenize;

import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * HF tokenizers' pre-tokenizers: each splits a piece of (normalized) text into smaller pieces, the "words" the model
 * encodes one by one. A Sequence runs its steps over every piece the previous step left.
 */
sealed interface PreTokenizer {

    /** Splits one piece into {@code out}; {@code atTextStart}: the piece begins the input (Metaspace's "first"). */
    void split(String piece, boolean atTextStart, List<String> out);

    default List<String> split(String text, boolean atTextStart) {
        List<String> out = new ArrayList<>();
        split(text, atTextStart, out);
        return out;
    }

    /** How a Split keeps the delimiters it finds (HF's SplitDelimiterBehavior). */
    enum Behavior { REMOVED, ISOLATED, MERGED_WITH_PREVIOUS, MERGED_WITH_NEXT, CONTIGUOUS }

    enum PrependScheme { ALWAYS, FIRST, NEVER }

    record Sequence(List<PreTokenizer> steps) implements PreTokenizer {
        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            List<String> current = List.of(piece);
            for (int s = 0; s < steps.size(); s++) {
                List<String> next = s == steps.size() - 1 ? out : new ArrayList<>();
                for (int i = 0; i < current.size(); i++) steps.get(s).split(current.get(i), atTextStart && i == 0, next);
                current = next;
            }
            if (steps.isEmpty()) out.add(piece);
        }
    }

    /** HF Split: a regex (or literal) delimiter with a behavior; {@code invert} splits on what does not match. */
    record Split(Pattern pattern, Behavior behavior, boolean invert) implements PreTokenizer {
        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            splitByMatches(piece, matches(pattern, piece, invert), behavior, out);
        }
    }

    /**
     * HF ByteLevel: optionally a leading space, optionally the GPT-2 split, then every piece spelled in the
     * byte-level alphabet.
     */
    record ByteLevelSplit(boolean addPrefixSpace, boolean useRegex) implements PreTokenizer {
        private static final Pattern GPT2 = Regexes.compile(Regexes.GPT2, "ByteLevel");

        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            if (addPrefixSpace && !piece.startsWith(" ")) piece = " " + piece;
            if (!useRegex) {
                if (!piece.isEmpty()) out.add(ByteLevel.encode(piece));
                return;
            }
            List<String> parts = new ArrayList<>();
            splitByMatches(piece, matches(GPT2, piece, false), Behavior.ISOLATED, parts);
            for (String p : parts) out.add(ByteLevel.encode(p));
        }
    }

    /** HF Digits: numeric characters isolated one by one, or in runs. */
    record Digits(boolean individual) implements PreTokenizer {
        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            // each numeric character is a match, the runs between them gaps (HF's char-predicate pattern)
            List<int[]> spans = new ArrayList<>();
            int gap = 0;
            for (int i = 0; i < piece.length(); ) {
                int cp = piece.codePointAt(i);
                int n = Character.charCount(cp);
                if (isNumeric(cp)) {
                    if (gap < i) spans.add(new int[] {gap, i, 0});
                    spans.add(new int[] {i, i + n, 1});
                    gap = i + n;
                }
                i += n;
            }
            if (gap < piece.length()) spans.add(new int[] {gap, piece.length(), 0});
            splitByMatches(piece, spans, individual ? Behavior.ISOLATED : Behavior.CONTIGUOUS, out);
        }

        /** Rust's char::is_numeric: general categories Nd, Nl, No. */
        static boolean isNumeric(int cp) {
            int t = Character.getType(cp);
            return t == Character.DECIMAL_DIGIT_NUMBER || t == Character.LETTER_NUMBER || t == Character.OTHER_NUMBER;
        }
    }

    /** HF Metaspace: spaces become the replacement (▁), one is prepended per the scheme, pieces start at each ▁. */
    record Metaspace(char replacement, PrependScheme prependScheme, boolean splitWords) implements PreTokenizer {
        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            String s = piece.replace(' ', replacement);
            boolean prepend = prependScheme == PrependScheme.ALWAYS || (prependScheme == PrependScheme.FIRST && atTextStart);
            if (prepend && !s.isEmpty() && s.charAt(0) != replacement) s = replacement + s;
            if (!splitWords) {
                if (!s.isEmpty()) out.add(s);
                return;
            }
            List<int[]> spans = new ArrayList<>();
            int gap = 0;
            for (int i = 0; i < s.length(); i++) {
                if (s.charAt(i) == replacement) {
                    if (gap < i) spans.add(new int[] {gap, i, 0});
                    spans.add(new int[] {i, i + 1, 1});
                    gap = i + 1;
                }
            }
            if (gap < s.length()) spans.add(new int[] {gap, s.length(), 0});
            splitByMatches(s, spans, Behavior.MERGED_WITH_NEXT, out);
        }
    }

    /** HF Whitespace: {@code \w+|[^\w\s]+}, whitespace removed. */
    record Whitespace() implements PreTokenizer {
        private static final Pattern WORDS = Regexes.compile("\\w+|[^\\w\\s]+", "Whitespace");

        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            splitByMatches(piece, matches(WORDS, piece, true), Behavior.REMOVED, out);
        }
    }

    /** HF WhitespaceSplit: runs of non-whitespace. */
    record WhitespaceSplit() implements PreTokenizer {
        private static final Pattern SPACES = Regexes.compile("\\s+", "WhitespaceSplit");

        @Override
        public void split(String piece, boolean atTextStart, List<String> out) {
            splitByMatches(piece, matches(SPACES, piece, false), Behavior.REMOVED, out);
        }
    }

    /**
     * Spans covering {@code s}: {start, end, 1} for a match (or, inverted, for a gap) and {start, end, 0} otherwise.
     * Empty matches are skipped as HF does.
     */
    static List<int[]> matches(Pattern pattern, String s, boolean invert) {
        List<int[]> spans = new ArrayList<>();
        Matcher m = pattern.matcher(s);
        int prev = 0;
        int hit = invert ? 0 : 1;
        while (m.find()) {
            if (m.start() == m.end()) continue;
            if (prev < m.start()) spans.add(new int[] {prev, m.start(), 1 - hit});
            spans.add(new int[] {m.start(), m.end(), hit});
            prev = m.end();
        }
        if (prev < s.length()) spans.add(new int[] {prev, s.length(), 1 - hit});
        return spans;
    }

    /** HF's NormalizedString::split: turns match/gap spans into pieces per the behavior. */
    static void splitByMatches(String s, List<int[]> spans, Behavior behavior, List<String> out) {
        List<int[]> pieces = new ArrayList<>();
        switch (behavior) {
            case REMOVED -> {
                for (int[] sp : spans) if (sp[2] == 0) pieces.add(sp);
            }
            case ISOLATED -> pieces.addAll(spans);
            case MERGED_WITH_PREVIOUS -> {
                boolean previousMatch = false;
                for (int[] sp : spans) {
                    if (sp[2] == 1 && !previousMatch && !pieces.isEmpty()) pieces.getLast()[1] = sp[1];
                    else pieces.add(sp.clone());
                    previousMatch = sp[2] == 1;
                }
            }
            case MERGED_WITH_NEXT -> {
                boolean previousMatch = false;
                List<int[]> reversed = new ArrayList<>();
                for (int i = spans.size() - 1; i >= 0; i--) {
                    int[] sp = spans.get(i);
                    if (sp[2] == 1 && !previousMatch && !reversed.isEmpty()) reversed.getLast()[0] = sp[0];
                    else reversed.add(sp.clone());
                    previousMatch = sp[2] == 1;
                }
                for (int i = reversed.size() - 1; i >= 0; i--) pieces.add(reversed.get(i));
            }
            case CONTIGUOUS -> {
                boolean previousMatch = false;
                for (int[] sp : spans) {
                    if (sp[2] == (previousMatch ? 1 : 0) && !pieces.isEmpty()) pieces.getLast()[1] = sp[1];
                    else pieces.add(sp.clone());
                    previousMatch = sp[2] == 1;
                }
            }
        }
        for (int[] p : pieces) if (p[0] < p[1]) out.add(s.substring(p[0], p[1]));
    }
}
