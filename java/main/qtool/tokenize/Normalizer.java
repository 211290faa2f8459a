package qtool.tokenize;

import java.util.List;
import java.util.regex.Pattern;

/** HF tokenizers' normalizers (and SentencePiece's): rewrite a segment of raw text before it is split. */
sealed interface Normalizer {

    String apply(String s);

    record Sequence(List<Normalizer> steps) implements Normalizer {
        @Override
        public String apply(String s) {
            for (Normalizer n : steps) s = n.apply(s);
            return s;
        }
    }

    /** HF Prepend: the prefix goes before any non-empty segment (Llama's "▁" dummy prefix). */
    record Prepend(String prefix) implements Normalizer {
        @Override
        public String apply(String s) {
            return s.isEmpty() ? s : prefix + s;
        }
    }

    /** HF Replace: every occurrence of a literal ({@code regex} null) or of a regex. */
    record Replace(String literal, Pattern regex, String content) implements Normalizer {
        @Override
        public String apply(String s) {
            return regex == null ? s.replace(literal, content) : regex.matcher(s).replaceAll(java.util.regex.Matcher.quoteReplacement(content));
        }
    }

    record Unicode(java.text.Normalizer.Form form) implements Normalizer {
        @Override
        public String apply(String s) {
            return java.text.Normalizer.normalize(s, form);
        }
    }

    record Lowercase() implements Normalizer {
        @Override
        public String apply(String s) {
            return s.toLowerCase(java.util.Locale.ROOT);
        }
    }

    record Strip(boolean left, boolean right) implements Normalizer {
        @Override
        public String apply(String s) {
            int a = 0, b = s.length();
            if (left) while (a < b && Character.isWhitespace(s.charAt(a))) a++;
            if (right) while (b > a && Character.isWhitespace(s.charAt(b - 1))) b--;
            return s.substring(a, b);
        }
    }

    /**
     * Stands in for SentencePiece's precompiled "nmt_nfkc" character map (which is data, not an algorithm): NFKC,
     * whitespace characters (tab, newline, carriage return...) to spaces, other control characters removed. Close
     * to, not exactly, the real map.
     */
    record NmtNfkc() implements Normalizer {
        @Override
        public String apply(String s) {
            s = java.text.Normalizer.normalize(s, java.text.Normalizer.Form.NFKC);
            StringBuilder b = null;
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                boolean space = c != ' ' && Character.isWhitespace(c) || c == '\u0085';
                boolean control = !space && Character.getType(c) == Character.CONTROL;
                if (space || control) {
                    if (b == null) b = new StringBuilder(s.length()).append(s, 0, i);
                    if (space) b.append(' ');
                } else if (b != null) {
                    b.append(c);
                }
            }
            return b == null ? s : b.toString();
        }
    }

    /**
     * SentencePiece's normalizer (normalizer_spec of tokenizer.model): optionally the nmt_nfkc map (when the model
     * has a precompiled character map, see {@link NmtNfkc}), optional removal of leading, trailing and repeated spaces, spaces escaped as "▁", and the dummy
     * "▁" prefix. As in llama.cpp, every text segment gets the prefix: each is the start of the text or follows a
     * special token.
     */
    record SentencePiece(boolean nfkc, boolean removeExtraWhitespaces, boolean escapeWhitespaces, boolean addDummyPrefix)
            implements Normalizer {
        @Override
        public String apply(String s) {
            if (nfkc) s = new NmtNfkc().apply(s);
            if (removeExtraWhitespaces) {
                StringBuilder b = new StringBuilder(s.length());
                boolean space = true; // drops leading spaces
                for (int i = 0; i < s.length(); i++) {
                    char c = s.charAt(i);
                    if (c == ' ') {
                        if (!space) b.append(c);
                        space = true;
                    } else {
                        b.append(c);
                        space = false;
                    }
                }
                if (!b.isEmpty() && b.charAt(b.length() - 1) == ' ') b.setLength(b.length() - 1);
                s = b.toString();
            }
            if (s.isEmpty()) return s;
            if (addDummyPrefix) s = " " + s;
            return escapeWhitespaces ? s.replace(' ', '\u2581') : s;
        }
    }
}
