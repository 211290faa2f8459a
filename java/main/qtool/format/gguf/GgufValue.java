package qtool.format.gguf;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * One GGUF metadata value with its type, so it can be written back unchanged. {@code elementType} is set for arrays
 * only. See {@link GgufValueType} for the Java class that holds each type.
 */
public record GgufValue(GgufValueType type, GgufValueType elementType, Object value) {

    public GgufValue {
        if (type == null || value == null) throw new IllegalArgumentException("type and value are required");
        if ((type == GgufValueType.ARRAY) != (elementType != null)) {
            throw new IllegalArgumentException("elementType is for arrays only");
        }
        Class<?> expected = type == GgufValueType.ARRAY ? arrayClass(elementType) : scalarClass(type);
        if (!expected.isInstance(value)) {
            throw new IllegalArgumentException(type + (elementType == null ? "" : " of " + elementType)
                    + " needs a " + expected.getSimpleName() + ", got " + value.getClass().getSimpleName());
        }
    }

    public static GgufValue of(String s) {
        return new GgufValue(GgufValueType.STRING, null, s);
    }

    public static GgufValue uint32(long v) {
        if (v < 0 || v > 0xFFFF_FFFFL) throw new IllegalArgumentException("not a uint32: " + v);
        return new GgufValue(GgufValueType.UINT32, null, v);
    }

    public static GgufValue int32(int v) {
        return new GgufValue(GgufValueType.INT32, null, v);
    }

    public static GgufValue uint64(long v) {
        return new GgufValue(GgufValueType.UINT64, null, v);
    }

    public static GgufValue float32(float v) {
        return new GgufValue(GgufValueType.FLOAT32, null, v);
    }

    public static GgufValue bool(boolean v) {
        return new GgufValue(GgufValueType.BOOL, null, v);
    }

    public static GgufValue strings(String... v) {
        return new GgufValue(GgufValueType.ARRAY, GgufValueType.STRING, v);
    }

    public static GgufValue float32s(float... v) {
        return new GgufValue(GgufValueType.ARRAY, GgufValueType.FLOAT32, v);
    }

    public static GgufValue int32s(int... v) {
        return new GgufValue(GgufValueType.ARRAY, GgufValueType.INT32, v);
    }

    /** Number of elements of an array value; 1 for a scalar. */
    public int length() {
        return switch (value) {
            case byte[] a -> a.length;
            case short[] a -> a.length;
            case int[] a -> a.length;
            case long[] a -> a.length;
            case float[] a -> a.length;
            case double[] a -> a.length;
            case boolean[] a -> a.length;
            case Object[] a -> a.length;
            default -> 1;
        };
    }

    /**
     * The value as a plain Java object: scalars and primitive/String arrays as held; arrays of arrays as
     * {@code List<Object>} of their plain values.
     */
    public Object plain() {
        if (value instanceof GgufValue[] nested) {
            List<Object> out = new ArrayList<>(nested.length);
            for (GgufValue v : nested) out.add(v.plain());
            return out;
        }
        return value;
    }

    /** Element {@code i} of an array as a boxed plain value (unsigned elements zero-extended). */
    public Object element(int i) {
        return switch (value) {
            case byte[] a -> elementType == GgufValueType.UINT8 ? Byte.toUnsignedInt(a[i]) : (int) a[i];
            case short[] a -> elementType == GgufValueType.UINT16 ? Short.toUnsignedInt(a[i]) : (int) a[i];
            case int[] a -> elementType == GgufValueType.UINT32 ? Integer.toUnsignedLong(a[i]) : a[i];
            case long[] a -> a[i];
            case float[] a -> a[i];
            case double[] a -> a[i];
            case boolean[] a -> a[i];
            case GgufValue[] a -> a[i].plain();
            case Object[] a -> a[i];
            default -> throw new IllegalStateException("not an array: " + type);
        };
    }

    static Class<?> scalarClass(GgufValueType t) {
        return switch (t) {
            case UINT8, INT8, UINT16, INT16, INT32 -> Integer.class;
            case UINT32, UINT64, INT64 -> Long.class;
            case FLOAT32 -> Float.class;
            case FLOAT64 -> Double.class;
            case BOOL -> Boolean.class;
            case STRING -> String.class;
            case ARRAY -> GgufValue.class;
        };
    }

    static Class<?> arrayClass(GgufValueType element) {
        return switch (element) {
            case UINT8, INT8 -> byte[].class;
            case UINT16, INT16 -> short[].class;
            case UINT32, INT32 -> int[].class;
            case UINT64, INT64 -> long[].class;
            case FLOAT32 -> float[].class;
            case FLOAT64 -> double[].class;
            case BOOL -> boolean[].class;
            case STRING -> String[].class;
            case ARRAY -> GgufValue[].class;
        };
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof GgufValue v && v.type == type && v.elementType == elementType
                && Arrays.deepEquals(new Object[] {value}, new Object[] {v.value});
    }

    @Override
    public int hashCode() {
        return type.hashCode() * 31 + Arrays.deepHashCode(new Object[] {value});
    }

    @Override
    public String toString() {
        if (type != GgufValueType.ARRAY) return type + " " + value;
        return "ARRAY[" + elementType + ", " + length() + "]";
    }
}
