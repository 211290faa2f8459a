package qtool.tokenize;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;

/**
 * Rank-driven BPE as HF tokenizers' BPE model runs it (and llama.cpp's for "gpt2" vocabularies): a word starts as
 * one symbol per character; the adjacent pair with the lowest merge rank is merged, leftmost first among equals,
 * until no listed pair is left. Covers byte-level vocabularies (GPT-2, Llama 3, Qwen2, SmolLM2) and
 * SentencePiece-converted ones (Llama 2, Mistral: byte fallback, fused unknowns).
 */
final class MergeBpe implements TokenModel {
    private final Map<String, Integer> vocab;
    /** The merges in rank order, as pairs of token strings; kept for writing tokenizer files. */
    final List<String[]> merges;
    private final PairTable pairs;
    private final int unkId;
    private final boolean fuseUnk;
    private final boolean byteFallback;
    private final boolean ignoreMerges;
    private final String subwordPrefix;
    private final String wordSuffix;
    private final int[] byteIds = new int[256];

    MergeBpe(Map<String, Integer> vocab, List<String[]> merges, int unkId, boolean fuseUnk, boolean byteFallback,
             boolean ignoreMerges, String subwordPrefix, String wordSuffix, String where) {
        this.vocab = vocab;
        this.merges = merges;
        this.unkId = unkId;
        this.fuseUnk = fuseUnk;
        this.byteFallback = byteFallback;
        this.ignoreMerges = ignoreMerges;
        this.subwordPrefix = subwordPrefix == null ? "" : subwordPrefix;
        this.wordSuffix = wordSuffix == null ? "" : wordSuffix;
        this.pairs = new PairTable(merges.size() * 2 + 16);
        int prefixLength = this.subwordPrefix.length();
        for (int rank = 0; rank < merges.size(); rank++) {
            String[] m = merges.get(rank);
            Integer a = vocab.get(m[0]);
            Integer b = vocab.get(m[1]);
            if (a == null || b == null) {
                throw new QtoolException(where + ": merge " + rank + " (" + Regexes.quote(m[0] + " " + m[1])
                        + ") uses a token that is not in the vocabulary");
            }
            String merged = m[0] + (m[1].startsWith(this.subwordPrefix) ? m[1].substring(prefixLength) : m[1]);
            Integer id = vocab.get(merged);
            if (id == null) {
                throw new QtoolException(where + ": merge " + rank + " (" + Regexes.quote(m[0] + " " + m[1])
                        + ") makes " + Regexes.quote(merged) + ", which is not in the vocabulary");
            }
            // A pair listed twice takes its last rank, as in HF's map (llama.cpp keeps the first).
            pairs.put(key(a, b), ((long) rank << 32) | id);
        }
        Arrays.fill(byteIds, -1);
        if (byteFallback) {
            for (int b = 0; b < 256; b++) {
                Integer id = vocab.get(String.format("<0x%02X>", b));
                if (id != null) byteIds[b] = id;
            }
        }
    }

    private static long key(int a, int b) {
        return ((long) a << 32) | (b & 0xFFFFFFFFL);
    }

    @Override
    public void encode(String word, IntList out) {
        if (word.isEmpty()) return;
        if (ignoreMerges) {
            Integer whole = vocab.get(word);
            if (whole != null) {
                out.add(whole);
                return;
            }
        }
        int n = word.codePointCount(0, word.length());
        int[] ids = new int[n + 1];
        int count = 0;
        int pendingUnk = -1; // number of symbols fused into a pending unknown, or -1
        for (int i = 0, c = 0; i < word.length(); c++) {
            int cp = word.codePointAt(i);
            int next = i + Character.charCount(cp);
            String s = word.substring(i, next);
            if (c > 0 && !subwordPrefix.isEmpty()) s = subwordPrefix + s;
            if (next == word.length() && !wordSuffix.isEmpty()) s = s + wordSuffix;
            Integer id = vocab.get(s);
            if (id != null) {
                if (pendingUnk >= 0) { ids = grow(ids, count + 1); ids[count++] = unkId; pendingUnk = -1; }
                ids = grow(ids, count + 1);
                ids[count++] = id;
            } else if (byteFallback && allBytesKnown(word, i, next)) {
                if (pendingUnk >= 0) { ids = grow(ids, count + 1); ids[count++] = unkId; pendingUnk = -1; }
                byte[] bytes = word.substring(i, next).getBytes(StandardCharsets.UTF_8);
                ids = grow(ids, count + bytes.length);
                for (byte b : bytes) ids[count++] = byteIds[b & 0xFF];
            } else if (unkId >= 0) {
                if (pendingUnk >= 0 && !fuseUnk) { ids = grow(ids, count + 1); ids[count++] = unkId; }
                pendingUnk = pendingUnk >= 0 && fuseUnk ? pendingUnk + 1 : 1;
            }
            // no unknown token: the character is dropped, as HF does
            i = next;
        }
        if (pendingUnk >= 0) { ids = grow(ids, count + 1); ids[count++] = unkId; }
        mergeAll(ids, count, out);
    }

    private boolean allBytesKnown(String word, int from, int to) {
        for (byte b : word.substring(from, to).getBytes(StandardCharsets.UTF_8)) if (byteIds[b & 0xFF] < 0) return false;
        return true;
    }

    private static int[] grow(int[] a, int need) {
        return need <= a.length ? a : Arrays.copyOf(a, Math.max(need, a.length * 2));
    }

    /** Merges symbols by rank with a heap of (rank, position) keys; stale entries are skipped when popped. */
    private void mergeAll(int[] ids, int n, IntList out) {
        if (n == 1) {
            out.add(ids[0]);
            return;
        }
        int[] next = new int[n];
        int[] prev = new int[n];
        for (int i = 0; i < n; i++) {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
        }
        LongHeap heap = new LongHeap(n);
        for (int i = 0; i + 1 < n; i++) {
            long m = pairs.get(key(ids[i], ids[i + 1]));
            if (m >= 0) heap.push((m & 0xFFFFFFFF00000000L) | i);
        }
        while (!heap.isEmpty()) {
            long top = heap.pop();
            int pos = (int) top;
            int rank = (int) (top >>> 32);
            if (ids[pos] < 0) continue; // merged into its left neighbour
            int right = next[pos];
            if (right < 0) continue;
            long m = pairs.get(key(ids[pos], ids[right]));
            if (m < 0 || (int) (m >>> 32) != rank) continue; // the pair at pos has changed since this entry
            ids[pos] = (int) m;
            ids[right] = -1;
            int after = next[right];
            next[pos] = after;
            if (after >= 0) prev[after] = pos;
            int before = prev[pos];
            if (before >= 0) {
                long mb = pairs.get(key(ids[before], ids[pos]));
                if (mb >= 0) heap.push((mb & 0xFFFFFFFF00000000L) | before);
            }
            if (after >= 0) {
                long ma = pairs.get(key(ids[pos], ids[after]));
                if (ma >= 0) heap.push((ma & 0xFFFFFFFF00000000L) | pos);
            }
        }
        for (int i = 0; i >= 0; i = next[i]) out.add(ids[i]);
    }

    /** Open-addressing map from a pair of token ids to (rank << 32 | merged id); absent: -1. */
    static final class PairTable {
        private long[] keys;
        private long[] values;
        private int size;

        PairTable(int capacity) {
            int cap = Integer.highestOneBit(Math.max(16, capacity) * 2);
            keys = new long[cap];
            values = new long[cap];
            Arrays.fill(keys, -1L);
        }

        private static int hash(long k) {
            k ^= k >>> 33;
            k *= 0xff51afd7ed558ccdL;
            k ^= k >>> 33;
            return (int) k;
        }

        void put(long key, long value) {
            if ((size + 1) * 2 > keys.length) rehash();
            int mask = keys.length - 1;
            for (int i = hash(key) & mask; ; i = (i + 1) & mask) {
                if (keys[i] == -1L) {
                    keys[i] = key;
                    values[i] = value;
                    size++;
                    return;
                }
                if (keys[i] == key) {
                    values[i] = value;
                    return;
                }
            }
        }

        long get(long key) {
            int mask = keys.length - 1;
            for (int i = hash(key) & mask; ; i = (i + 1) & mask) {
                if (keys[i] == key) return values[i];
                if (keys[i] == -1L) return -1L;
            }
        }

        private void rehash() {
            long[] oldKeys = keys;
            long[] oldValues = values;
            keys = new long[oldKeys.length * 2];
            values = new long[oldKeys.length * 2];
            Arrays.fill(keys, -1L);
            size = 0;
            for (int i = 0; i < oldKeys.length; i++) if (oldKeys[i] != -1L) put(oldKeys[i], oldValues[i]);
        }
    }

    /** A binary min-heap of longs. */
    static final class LongHeap {
        private long[] a;
        private int n;

        LongHeap(int capacity) {
            a = new long[Math.max(4, capacity)];
        }

        boolean isEmpty() {
            return n == 0;
        }

        void push(long v) {
            if (n == a.length) a = Arrays.copyOf(a, n * 2);
            int i = n++;
            while (i > 0) {
                int parent = (i - 1) >>> 1;
                if (a[parent] <= v) break;
                a[i] = a[parent];
                i = parent;
            }
            a[i] = v;
        }

        long pop() {
            long top = a[0];
            long v = a[--n];
            int i = 0;
            while (true) {
                int child = 2 * i + 1;
                if (child >= n) break;
                if (child + 1 < n && a[child + 1] < a[child]) child++;
                if (a[child] >= v) break;
                a[i] = a[child];
                i = child;
            }
            a[i] = v;
            return top;
        }
    }
}
