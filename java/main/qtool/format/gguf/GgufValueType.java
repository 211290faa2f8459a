package qtool.format.gguf;

/**
 * The 13 GGUF metadata value types (gguf_type, stored as uint32), with their encoded size in bytes (0 for the
 * variable-length STRING and ARRAY).
 *
 * <p>How each is held in Java ({@link GgufValue#value()}): UINT8, INT8, UINT16, INT16, INT32 as Integer (unsigned
 * types zero-extended); UINT32, UINT64, INT64 as Long (UINT32 zero-extended, UINT64 as its two's-complement bits);
 * FLOAT32 Float; FLOAT64 Double; BOOL Boolean; STRING String. Arrays of them: byte[] (UINT8/INT8), short[]
 * (UINT16/INT16), int[] (UINT32/INT32), long[] (UINT64/INT64), float[], double[], boolean[], String[], and
 * {@code GgufValue[]} for arrays of arrays. Unsigned array elements keep their raw bits; read them with
 * {@link Byte#toUnsignedInt} and the like.
 */
public enum GgufValueType {
    UINT8(0, 1), INT8(1, 1), UINT16(2, 2), INT16(3, 2), UINT32(4, 4), INT32(5, 4), FLOAT32(6, 4), BOOL(7, 1),
    STRING(8, 0), ARRAY(9, 0), UINT64(10, 8), INT64(11, 8), FLOAT64(12, 8);

    public final int id;
    /** Encoded bytes of one value; 0 for STRING and ARRAY. */
    public final int size;

    GgufValueType(int id, int size) {
        this.id = id;
        this.size = size;
    }

    public static GgufValueType byId(long id) {
        for (GgufValueType t : values()) {
            if (t.id == id) return t;
        }
        return null;
    }

    /** The fewest bytes one value of this type can take: a string's 8-byte length, an array's type and count. */
    public int minEncodedSize() {
        return switch (this) {
            case STRING -> 8;
            case ARRAY -> 12;
            default -> size;
        };
    }
}
