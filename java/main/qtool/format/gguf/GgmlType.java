package qtool.format.gguf;

/**
 * The ggml tensor element types qtool reads and writes, with their on-disk block layouts.
 *
 * <p>A tensor row (along {@code dims[0]}) is a sequence of blocks; each block encodes {@link #blockSize} weights in
 * {@link #typeSize} bytes. Every layout below mirrors a {@code block_*} struct of ggml's {@code ggml-common.h}
 * (little-endian, no padding); {@code half} is IEEE binary16. {@link GgmlCodec} is the one reader/writer of these
 * blocks and names its field offsets after this table. QK_K = 256 (K-quant super-block).
 *
 * <pre>
 * type  id  weights bytes  layout (byte offset: field)                                    weight
 * F32    0     1     4     float                                                          x
 * F16    1     1     2     half                                                           x
 * BF16  30     1     2     upper 16 bits of a float                                       x
 * Q4_0   2    32    18     0:d half | 2:qs[16] nibbles: low = w[j], high = w[j+16]        d*(q-8)
 * Q4_1   3    32    20     0:d half | 2:m half | 4:qs[16] as Q4_0                         d*q + m
 * Q5_0   6    32    22     0:d half | 2:qh u32 (bit j = 5th bit of w[j]) | 6:qs[16]       d*(q-16)
 * Q5_1   7    32    24     0:d half | 2:m half | 4:qh u32 | 8:qs[16]                      d*q + m
 * Q8_0   8    32    34     0:d half | 2:qs[32] int8                                       d*q
 * Q2_K  10   256    84     0:scales[16] (low nibble scale, high nibble min, per 16 w)
 *                          | 16:qs[64] 2-bit | 80:d half | 82:dmin half                   d*sc*q - dmin*m
 * Q3_K  11   256   110     0:hmask[32] (high bit) | 32:qs[64] low 2 bits
 *                          | 96:scales[12] (16 packed 6-bit scales, biased by 32) | 108:d half   d*(sc-32)*(q-4)
 * Q4_K  12   256   144     0:d half | 2:dmin half | 4:scales[12] (8 packed 6-bit scales
 *                          and 8 6-bit mins, per 32 w) | 16:qs[128] nibbles               d*sc*q - dmin*m
 * Q5_K  13   256   176     0:d half | 2:dmin half | 4:scales[12] as Q4_K | 16:qh[32]
 *                          | 48:qs[128]                                                   d*sc*q - dmin*m
 * Q6_K  14   256   210     0:ql[128] low 4 bits | 128:qh[64] high 2 bits
 *                          | 192:scales[16] int8 (per 16 w) | 208:d half                  d*sc*(q-32)
 * Q8_K  15   256   292     0:d float | 4:qs[256] int8 | 260:bsums[16] int16               d*q
 * </pre>
 *
 * <p>Nibble and bit orders inside the K-quant blocks are spelled out next to each pair of functions in
 * {@link GgmlCodec}. Q8_K is an intermediate type of ggml's dot products and never appears in model files in
 * practice; it is listed so files holding it are still understood.
 */
public enum GgmlType {
    F32(0, 1, 4),
    F16(1, 1, 2),
    Q4_0(2, 32, 18),
    Q4_1(3, 32, 20),
    Q5_0(6, 32, 22),
    Q5_1(7, 32, 24),
    Q8_0(8, 32, 34),
    Q2_K(10, 256, 84),
    Q3_K(11, 256, 110),
    Q4_K(12, 256, 144),
    Q5_K(13, 256, 176),
    Q6_K(14, 256, 210),
    Q8_K(15, 256, 292),
    BF16(30, 1, 2);

    /** K-quant super-block size (ggml's QK_K). */
    public static final int QK_K = 256;

    /** The ggml_type number stored in GGUF tensor infos. */
    public final int id;
    /** Weights per block. */
    public final int blockSize;
    /** Bytes per block. */
    public final int typeSize;

    private static final GgmlType[] BY_ID = new GgmlType[64];

    static {
        for (GgmlType t : values()) BY_ID[t.id] = t;
    }

    GgmlType(int id, int blockSize, int typeSize) {
        this.id = id;
        this.blockSize = blockSize;
        this.typeSize = typeSize;
    }

    /** The type with this ggml id, or null when qtool does not know it. */
    public static GgmlType byId(long id) {
        return id >= 0 && id < BY_ID.length ? BY_ID[(int) id] : null;
    }

    /** The type named as llama.cpp names it ("Q4_K", "f16", "q8_0"; case-insensitive), or null. */
    public static GgmlType byName(String name) {
        for (GgmlType t : values()) {
            if (t.name().equalsIgnoreCase(name)) return t;
        }
        return null;
    }

    public boolean isQuantized() {
        return blockSize > 1;
    }

    /** Bytes of {@code n} weights; {@code n} must be a multiple of {@link #blockSize}. */
    public long byteSize(long n) {
        if (n % blockSize != 0) throw new IllegalArgumentException(this + ": " + n + " is not a multiple of " + blockSize);
        return n / blockSize * typeSize;
    }

    /** Bits per weight, e.g. 4.5 for Q4_K. */
    public double bitsPerWeight() {
        return typeSize * 8.0 / blockSize;
    }
}
