package qtool.backend;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import qtool.load.DType;

/**
 * A dense row-major tensor: where its bytes are, their type, and the shape. On the CPU backend {@code data} is
 * readable host memory (often a slice of a memory-mapped weight file); on the CUDA backend it is a device pointer
 * wrapped as a zero-length segment, which Java passes to kernels but never dereferences.
 *
 * <p>A {@link DType#QMATRIX} tensor [out, in] is one quantized linear: {@code data} is a host segment holding a
 * {@code qt_qmatrix} struct ({@link QMatrix}), whose pointers are host memory (a host tensor, the CPU backend) or
 * device memory (the CUDA backend's). It is passed as a linear's weight; it has no elements to slice or read.
 */
public record Tensor(MemorySegment data, DType dtype, long[] shape) {

    public static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    public static final ValueLayout.OfShort F16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    public static final ValueLayout.OfInt I32 = ValueLayout.JAVA_INT_UNALIGNED;

    public Tensor {
        shape = shape.clone();
    }

    public long numel() {
        long n = 1;
        for (long d : shape) n *= d;
        return n;
    }

    public long byteSize() {
        return numel() * dtype.bytes;
    }

    /** The last dimension: the contiguous one. */
    public int cols() {
        return (int) shape[shape.length - 1];
    }

    /** The product of all dimensions but the last. */
    public int rows() {
        return (int) (numel() / Math.max(1, cols()));
    }

    public long address() {
        return data.address();
    }

    /** Same bytes seen with another shape of the same element count. */
    public Tensor reshape(long... newShape) {
        long n = 1;
        for (long d : newShape) n *= d;
        if (n != numel()) throw new IllegalArgumentException("reshape " + Arrays.toString(shape) + " -> " + Arrays.toString(newShape));
        return new Tensor(data, dtype, newShape);
    }

    /** Rows [from, from + count) of a 2-D view; zero-copy. Works for device pointers too. */
    public Tensor rowSlice(long from, long count) {
        if (dtype == DType.QMATRIX) throw new IllegalArgumentException("a QMATRIX tensor has no rows to slice: " + this);
        long rowBytes = (long) cols() * dtype.bytes;
        MemorySegment sliced = data.byteSize() == 0
                ? MemorySegment.ofAddress(data.address() + from * rowBytes)
                : data.asSlice(from * rowBytes, count * rowBytes);
        return new Tensor(sliced, dtype, new long[] {count, cols()});
    }

    /** Element i as a float, for host tensors of any float type. */
    public float getFloat(long i) {
        return switch (dtype) {
            case F32 -> data.getAtIndex(F32, i);
            case F16 -> Float.float16ToFloat(data.getAtIndex(F16, i));
            case BF16 -> Float.intBitsToFloat(data.getAtIndex(F16, i) << 16);
            case F64 -> (float) data.getAtIndex(ValueLayout.JAVA_DOUBLE_UNALIGNED, i);
            default -> throw new IllegalStateException("not a float tensor: " + dtype);
        };
    }

    /** Host copy of a float tensor as float[] (small tensors: norms, biases, tests). */
    public float[] toFloatArray() {
        float[] out = new float[Math.toIntExact(numel())];
        for (int i = 0; i < out.length; i++) out[i] = getFloat(i);
        return out;
    }

    @Override
    public String toString() {
        return dtype + Arrays.toString(shape);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Tensor t && t.data.address() == data.address() && t.dtype == dtype && Arrays.equals(t.shape, shape);
    }

    @Override
    public int hashCode() {
        return Long.hashCode(data.address()) * 31 + Arrays.hashCode(shape);
    }
}
