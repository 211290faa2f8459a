package qtool.format.gguf;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * One tensor of a GGUF file: its name, element type, dims in ggml order ({@code dims[0]} is the contiguous one, the
 * row length: in_features of a weight), byte offset from the start of the file's data section, and its bytes as a
 * zero-copy slice of the mapped file (valid until the {@link GgufFile} is closed).
 */
public record GgufTensor(String name, GgmlType type, long[] dims, long offset, MemorySegment data) {

    public GgufTensor {
        dims = dims.clone();
    }

    @Override
    public long[] dims() {
        return dims.clone();
    }

    public int nDims() {
        return dims.length;
    }

    public long elementCount() {
        return elementCount(dims);
    }

    public long byteSize() {
        return type.byteSize(elementCount());
    }

    /** Elements per row: {@code dims[0]} (1 for a 0-dimensional tensor). */
    public long rowLength() {
        return dims.length == 0 ? 1 : dims[0];
    }

    /** Number of rows: the product of all dims but the first. */
    public long rowCount() {
        long rl = rowLength();
        return rl == 0 ? 0 : elementCount() / rl;
    }

    public long rowBytes() {
        return type.byteSize(rowLength());
    }

    /** Row {@code r}'s bytes; zero-copy. */
    public MemorySegment row(long r) {
        long rb = rowBytes();
        return data.asSlice(r * rb, rb);
    }

    /** The shape the way PyTorch and safetensors write it: dims reversed (outermost first). */
    public long[] shape() {
        long[] s = new long[dims.length];
        for (int i = 0; i < dims.length; i++) s[i] = dims[dims.length - 1 - i];
        return s;
    }

    static long elementCount(long[] dims) {
        long n = 1;
        for (long d : dims) n *= d;
        return n;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof GgufTensor t && t.name.equals(name) && t.type == type && Arrays.equals(t.dims, dims)
                && t.offset == offset;
    }

    @Override
    public int hashCode() {
        return name.hashCode() * 31 + Arrays.hashCode(dims);
    }

    @Override
    public String toString() {
        return name + " " + type + Arrays.toString(dims);
    }
}
