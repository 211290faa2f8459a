package qtool.tokenize;

import java.util.Arrays;

/** A growable int array: token ids are produced by the hundred thousand, boxing them would dominate. */
final class IntList {
    private int[] values;
    private int size;

    IntList(int capacity) {
        values = new int[Math.max(4, capacity)];
    }

    IntList() {
        this(16);
    }

    void add(int v) {
        if (size == values.length) values = Arrays.copyOf(values, values.length * 2);
        values[size++] = v;
    }

    void addAll(int[] vs) {
        if (size + vs.length > values.length) values = Arrays.copyOf(values, Math.max(values.length * 2, size + vs.length));
        System.arraycopy(vs, 0, values, size, vs.length);
        size += vs.length;
    }

    int size() {
        return size;
    }

    int get(int i) {
        return values[i];
    }

    int last() {
        return values[size - 1];
    }

    void set(int i, int v) {
        values[i] = v;
    }

    int[] toArray() {
        return Arrays.copyOf(values, size);
    }

    int[] toArrayFrom(int start) {
        return Arrays.copyOfRange(values, start, size);
    }
}
