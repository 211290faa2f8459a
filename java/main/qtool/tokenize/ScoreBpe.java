package qtool.tokenize;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Score-driven BPE as SentencePiece runs it (tokenizer.model with model_type BPE, and llama.cpp's "llama"
 * vocabularies): a word starts as one symbol per character; the adjacent pair whose concatenation is a piece with the
 * highest score is merged, leftmost first among equals, until no pair forms a piece. Symbols that are not pieces
 * fall back to byte tokens ({@code <0xNN>}) or the unknown token.
 */
final class ScoreBpe implements TokenModel {
    private final Map<String, Integer> mergeable;
    private final float[] scores;
    private final boolean[] unused;
    private final boolean anyUnused;
    private final int[] byteIds = new int[256];
    private final int unkId;
    private final int maxPieceChars;
    /** User-defined pieces by first char, longest first: SentencePiece keeps them whole as initial symbols. */
    private final Map<Character, List<String>> userDefined = new HashMap<>();

    /**
     * @param pieces  by id; null where absent
     * @param types   TokenizerSpec.TYPE_* by id
     */
    ScoreBpe(String[] pieces, float[] scores, int[] types, int unkId, boolean byteFallback) {
        this.scores = scores;
        this.unkId = unkId;
        this.mergeable = new HashMap<>(pieces.length * 2);
        this.unused = new boolean[pieces.length];
        boolean anyUnused = false;
        int maxChars = 1;
        Arrays.fill(byteIds, -1);
        for (int id = 0; id < pieces.length; id++) {
            String p = pieces[id];
            if (p == null) continue;
            int type = types == null ? TokenizerSpec.TYPE_NORMAL : types[id];
            // SentencePiece merges into normal, user-defined and unused pieces (model_interface.cc); control,
            // unknown and byte pieces never form from text.
            if (type == TokenizerSpec.TYPE_NORMAL || type == TokenizerSpec.TYPE_USER_DEFINED || type == TokenizerSpec.TYPE_UNUSED) {
                mergeable.putIfAbsent(p, id);
                maxChars = Math.max(maxChars, p.length());
            }
            if (type == TokenizerSpec.TYPE_USER_DEFINED && !p.isEmpty()) {
                userDefined.computeIfAbsent(p.charAt(0), c -> new ArrayList<>()).add(p);
            }
            if (type == TokenizerSpec.TYPE_UNUSED) {
                unused[id] = true;
                anyUnused = true;
            }
            if (byteFallback && type == TokenizerSpec.TYPE_BYTE) {
                int b = parseByteToken(p);
                if (b >= 0) byteIds[b] = id;
            }
        }
        this.anyUnused = anyUnused;
        this.maxPieceChars = maxChars;
        for (List<String> l : userDefined.values()) l.sort(Comparator.comparingInt(String::length).reversed());
    }

    /** {@code <0xNN>} → NN, else -1. */
    static int parseByteToken(String p) {
        if (p.length() != 6 || !p.startsWith("<0x") || p.charAt(5) != '>') return -1;
        try {
            return Integer.parseInt(p.substring(3, 5), 16);
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    @Override
    public void encode(String word, IntList out) {
        if (word.isEmpty()) return;
        int capacity = word.codePointCount(0, word.length());
        int[] start = new int[capacity];
        int[] end = new int[capacity];
        int n = 0;
        for (int i = 0; i < word.length(); n++) {
            start[n] = i;
            i += userDefinedLength(word, i);
            end[n] = i;
        }
        int[] prev = new int[n];
        int[] next = new int[n];
        for (int s = 0; s < n; s++) {
            prev[s] = s - 1;
            next[s] = s + 1 < n ? s + 1 : -1;
        }
        Agenda agenda = new Agenda(n);
        Map<Long, Integer> splits = anyUnused ? new HashMap<>() : null;
        for (int s = 0; s + 1 < n; s++) tryAdd(word, start, end, s, s + 1, agenda);
        while (!agenda.isEmpty()) {
            int e = agenda.pop();
            int l = agenda.left[e];
            int r = agenda.right[e];
            // skip entries whose symbols have changed since they were queued
            if (end[l] == start[l] || end[r] == start[r] || (end[l] - start[l]) + (end[r] - start[r]) != agenda.size[e]) continue;
            if (splits != null) splits.put(((long) start[l] << 32) | end[r], start[r]);
            end[l] = end[r];
            start[r] = end[r]; // empty: merged away
            next[l] = next[r];
            if (next[r] >= 0) prev[next[r]] = l;
            if (prev[l] >= 0) tryAdd(word, start, end, prev[l], l, agenda);
            if (next[l] >= 0) tryAdd(word, start, end, l, next[l], agenda);
        }
        int begin = out.size();
        for (int s = 0; s >= 0; s = next[s]) emit(word, start[s], end[s], splits, begin, out);
    }

    /** The length of the initial symbol at i: a user-defined piece starting there, else one character. */
    private int userDefinedLength(String word, int i) {
        List<String> candidates = userDefined.isEmpty() ? null : userDefined.get(word.charAt(i));
        if (candidates != null) for (String u : candidates) if (word.startsWith(u, i)) return u.length();
        return Character.charCount(word.codePointAt(i));
    }

    private void tryAdd(String word, int[] start, int[] end, int l, int r, Agenda agenda) {
        int size = end[r] - start[l];
        if (size > maxPieceChars) return;
        Integer id = mergeable.get(word.substring(start[l], end[r]));
        if (id == null) return;
        agenda.push(scores[id], l, r, size);
    }

    /** A final symbol: its piece, or (an unused piece) the two symbols it was merged from, or bytes, or unknown. */
    private void emit(String word, int from, int to, Map<Long, Integer> splits, int begin, IntList out) {
        String s = word.substring(from, to);
        Integer id = mergeable.get(s);
        if (id != null && !unused[id]) {
            out.add(id);
            return;
        }
        if (id != null && splits != null) {
            Integer mid = splits.get(((long) from << 32) | to);
            if (mid != null) {
                emit(word, from, mid, splits, begin, out);
                emit(word, mid, to, splits, begin, out);
                return;
            }
        }
        byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
        boolean allBytes = true;
        for (byte b : bytes) allBytes &= byteIds[b & 0xFF] >= 0;
        if (allBytes) {
            for (byte b : bytes) out.add(byteIds[b & 0xFF]);
        } else if (unkId >= 0 && (out.size() == begin || out.last() != unkId)) {
            out.add(unkId); // a run of unknown symbols is one unknown, as SentencePiece and HF (fuse_unk) emit it
        }
    }

    /** Candidate merges, highest score first, then leftmost; a heap of entry indices over parallel arrays. */
    private static final class Agenda {
        float[] score;
        int[] left;
        int[] right;
        int[] size;
        int entries;
        int[] heap;
        int n;
        /** Entries already popped, reused by push: a long word queues several times as many candidates as symbols. */
        int[] free = new int[16];
        int freeCount;
        int lastPopped = -1;

        Agenda(int capacity) {
            capacity = Math.max(4, capacity);
            score = new float[capacity];
            left = new int[capacity];
            right = new int[capacity];
            size = new int[capacity];
            heap = new int[capacity];
        }

        boolean isEmpty() {
            return n == 0;
        }

        /** True when entry a comes out before entry b. */
        private boolean before(int a, int b) {
            return score[a] > score[b] || (score[a] == score[b] && left[a] < left[b]);
        }

        void push(float s, int l, int r, int sz) {
            int e;
            if (freeCount > 0) {
                e = free[--freeCount];
            } else {
                if (entries == score.length) {
                    int cap = entries * 2;
                    score = Arrays.copyOf(score, cap);
                    left = Arrays.copyOf(left, cap);
                    right = Arrays.copyOf(right, cap);
                    size = Arrays.copyOf(size, cap);
                }
                e = entries++;
            }
            score[e] = s;
            left[e] = l;
            right[e] = r;
            size[e] = sz;
            if (n == heap.length) heap = Arrays.copyOf(heap, n * 2);
            int i = n++;
            while (i > 0) {
                int parent = (i - 1) >>> 1;
                if (!before(e, heap[parent])) break;
                heap[i] = heap[parent];
                i = parent;
            }
            heap[i] = e;
        }

        /** Pops the best entry; its fields stay valid until the next pop. */
        int pop() {
            if (lastPopped >= 0) {
                if (freeCount == free.length) free = Arrays.copyOf(free, freeCount * 2);
                free[freeCount++] = lastPopped;
            }
            int top = heap[0];
            lastPopped = top;
            int v = heap[--n];
            int i = 0;
            while (true) {
                int child = 2 * i + 1;
                if (child >= n) break;
                if (child + 1 < n && before(heap[child + 1], heap[child])) child++;
                if (!before(heap[child], v)) break;
                heap[i] = heap[child];
                i = child;
            }
            heap[i] = v;
            return top;
        }
    }
}
