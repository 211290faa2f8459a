package qtool.tokenize;

import java.util.Arrays;

/**
 * Where a long word can be cut without changing what BPE makes of it: a merge can only join the characters at
 * i-1 and i if some vocabulary piece contains that pair, so at a pair no piece contains (of two characters that
 * are pieces by themselves) the halves are encoded independently, with the same result: merges on one side never
 * change the candidates on the other, and the leftmost-first order among equals is the same within each half.
 * Unknown characters stick to their neighbours, so that runs of them still fuse into one unknown token. This lets
 * SentencePiece-style tokenizers, which see a whole text segment as one word, work word by word and use the word
 * cache.
 */
final class CharPairs {
    private final long[] pairs; // open addressing; 0 is empty (pairs are stored +1)
    private final long[] known = new long[1024]; // bitset over chars that are pieces by themselves

    CharPairs(Iterable<String> pieces) {
        int count = 0;
        for (String p : pieces) count += Math.max(0, p.length() - 1);
        long[] table = new long[Integer.highestOneBit(Math.max(16, count) * 2) * 2];
        for (String p : pieces) {
            // a character that is a piece by itself never ends up unknown or as bytes
            if (p.codePointCount(0, p.length()) == 1) for (int i = 0; i < p.length(); i++) known[p.charAt(i) >>> 6] |= 1L << p.charAt(i);
            for (int i = 1; i < p.length(); i++) insert(table, key(p.charAt(i - 1), p.charAt(i)));
        }
        this.pairs = table;
    }

    private static long key(char a, char b) {
        return (((long) a << 16) | b) + 1;
    }

    private static void insert(long[] table, long k) {
        int mask = table.length - 1;
        for (int i = hash(k) & mask; ; i = (i + 1) & mask) {
            if (table[i] == k) return;
            if (table[i] == 0) {
                table[i] = k;
                return;
            }
        }
    }

    private static int hash(long k) {
        k *= 0x9E3779B97F4A7C15L;
        return (int) (k >>> 32);
    }

    private boolean isKnown(char c) {
        return (known[c >>> 6] & (1L << c)) != 0;
    }

    /** Whether a merge may join a and b (always, for surrogate pairs and for characters that are no piece alone). */
    boolean joinable(char a, char b) {
        if (Character.isHighSurrogate(a) || !isKnown(a) || !isKnown(b)) return true;
        long k = key(a, b);
        int mask = pairs.length - 1;
        for (int i = hash(k) & mask; ; i = (i + 1) & mask) {
            if (pairs[i] == k) return true;
            if (pairs[i] == 0) return false;
        }
    }

    @Override
    public String toString() {
        return "CharPairs[" + Arrays.stream(pairs).filter(p -> p != 0).count() + "]";
    }
}
