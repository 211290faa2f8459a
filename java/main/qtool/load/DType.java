package qtool.load;

import qtool.QtoolException;

/**
 * Element types of tensors on disk and in memory, named as safetensors names them; plus {@link #QMATRIX}, which
 * exists only in memory.
 */
public enum DType {
    F64(8), F32(4), F16(2), BF16(2), I64(8), I32(4), I16(2), I8(1), U8(1), BOOL(1),
    /**
     * One quantized linear W [out, in] (shape [out, in]) in the kernels' layout: the tensor's {@code data} is a host
     * segment holding a {@code qt_qmatrix} struct (native/include/qtool.h; see {@link qtool.backend.QMatrix}), whose
     * pointers are host memory for a host or CPU-backend tensor and device memory for a CUDA-backend one. No element
     * has a size of its own ({@code bytes} 0, so {@code byteSize()} is 0): backends read the struct. Never on disk.
     */
    QMATRIX(0);

    public final int bytes;

    DType(int bytes) {
        this.bytes = bytes;
    }

    public boolean isFloat() {
        return this == F64 || this == F32 || this == F16 || this == BF16;
    }

    /** The safetensors dtype string, e.g. "BF16". */
    public String safetensorsName() {
        return name();
    }

    public static DType fromSafetensors(String name, String where) {
        for (DType d : values()) {
            if (d != QMATRIX && d.name().equals(name)) return d;
        }
        throw new QtoolException(where + ": unknown dtype '" + name + "' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
}
