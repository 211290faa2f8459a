package qtool.format.gguf;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Converts rows between float and every {@link GgmlType}: one quantizer and one dequantizer per block layout (the
 * layouts are tabled in {@link GgmlType}; the field offsets below are named after that table).
 *
 * <p>The quantizers reproduce llama.cpp's reference quantizers ({@code ggml-quants.c}: {@code quantize_row_*_ref},
 * and the {@code quantize_row_*_impl} variants taken when an importance matrix is given) bit for bit: the same float
 * (never double) operations in the same order, {@code nearest_int}'s 1.5*2^23 rounding trick, C's float-to-integer
 * truncations and unsigned/signed 8-bit wrap-arounds, and round-to-nearest-even fp16 conversion. Java's float
 * arithmetic is IEEE single precision without contraction into fused multiply-adds, as ggml's portable C is when
 * compiled without FMA, so results agree byte for byte (checked against llama-quantize in the tests).
 *
 * <p>Rows are whole: {@code n} is the row length, a multiple of the type's block size. The importance weights
 * ({@code qw}, one per element of the row, or null) change the result only for the types whose llama.cpp quantizer
 * uses them (all but Q8_0 and the float types); with null the reference quantizer runs, as llama-quantize does
 * without {@code --imatrix}.
 */
public final class GgmlCodec {
    private GgmlCodec() {}

    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfFloat LE32F = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it quantizes to zeros. */
    private static final float GROUP_MAX_EPS = 1e-15f;

    // ================================================================ public API

    /** Decodes {@code n} weights of {@code type} starting at byte {@code srcOff} of {@code src} into {@code dst}. */
    public static void dequantizeRow(GgmlType type, MemorySegment src, long srcOff, float[] dst, int dstOff, int n) {
        checkLength(type, n);
        switch (type) {
            case F32 -> MemorySegment.copy(src, LE32F, srcOff, dst, dstOff, n);
            case F16 -> {
                for (int i = 0; i < n; i++) dst[dstOff + i] = Float.float16ToFloat(src.get(LE16, srcOff + 2L * i));
            }
            case BF16 -> {
                for (int i = 0; i < n; i++) dst[dstOff + i] = bf16ToFloat(src.get(LE16, srcOff + 2L * i));
            }
            default -> {
                byte[] b = new byte[type.typeSize];
                for (int i = 0, nb = n / type.blockSize; i < nb; i++) {
                    MemorySegment.copy(src, ValueLayout.JAVA_BYTE, srcOff + (long) i * type.typeSize, b, 0, type.typeSize);
                    int o = dstOff + i * type.blockSize;
                    switch (type) {
                        case Q4_0 -> dequantizeQ4_0(b, dst, o);
                        case Q4_1 -> dequantizeQ4_1(b, dst, o);
                        case Q5_0 -> dequantizeQ5_0(b, dst, o);
                        case Q5_1 -> dequantizeQ5_1(b, dst, o);
                        case Q8_0 -> dequantizeQ8_0(b, dst, o);
                        case Q2_K -> dequantizeQ2_K(b, dst, o);
                        case Q3_K -> dequantizeQ3_K(b, dst, o);
                        case Q4_K -> dequantizeQ4_K(b, dst, o);
                        case Q5_K -> dequantizeQ5_K(b, dst, o);
                        case Q6_K -> dequantizeQ6_K(b, dst, o);
                        case Q8_K -> dequantizeQ8_K(b, dst, o);
                        default -> throw new AssertionError(type);
                    }
                }
            }
        }
    }

    /** Rows {@code [row, row + count)} of a tensor, decoded into {@code dst} (at least count * rowLength long). */
    public static void dequantizeRows(GgufTensor t, long row, int count, float[] dst) {
        int rl = Math.toIntExact(t.rowLength());
        long rb = t.rowBytes();
        for (int r = 0; r < count; r++) dequantizeRow(t.type(), t.data(), (row + r) * rb, dst, r * rl, rl);
    }

    /** The whole tensor as floats (tensors under 2^31 elements: norms, embeddings of small models, tests). */
    public static float[] dequantize(GgufTensor t) {
        float[] out = new float[Math.toIntExact(t.elementCount())];
        if (out.length > 0) dequantizeRows(t, 0, Math.toIntExact(t.rowCount()), out);
        return out;
    }

    /**
     * Encodes the row {@code x[xOff, xOff + n)} as {@code type} into {@code dst} at byte {@code dstOff}
     * ({@code type.byteSize(n)} bytes). {@code qw}: importance weights of the row's elements (index 0 = element
     * {@code xOff}), or null.
     */
    public static void quantizeRow(GgmlType type, float[] x, int xOff, int n, float[] qw, MemorySegment dst, long dstOff) {
        checkLength(type, n);
        if (qw != null && qw.length < n) throw new IllegalArgumentException("importance has " + qw.length + " < " + n + " values");
        switch (type) {
            case F32 -> MemorySegment.copy(x, xOff, dst, LE32F, dstOff, n);
            case F16 -> {
                for (int i = 0; i < n; i++) dst.set(LE16, dstOff + 2L * i, Float.floatToFloat16(x[xOff + i]));
            }
            case BF16 -> {
                for (int i = 0; i < n; i++) dst.set(LE16, dstOff + 2L * i, floatToBf16(x[xOff + i]));
            }
            default -> {
                byte[] b = new byte[type.typeSize];
                // The imatrix variants of Q4_0..Q5_1 scale the weights by the variance of the whole row.
                float sigma2 = qw != null && type.blockSize == 32 ? rowSigma2(x, xOff, n) : 0f;
                for (int i = 0, nb = n / type.blockSize; i < nb; i++) {
                    int o = xOff + i * type.blockSize;
                    int w = i * type.blockSize; // offset of this block's importance weights
                    java.util.Arrays.fill(b, (byte) 0);
                    switch (type) {
                        case Q4_0 -> { if (qw == null) quantizeQ4_0(x, o, b); else quantizeQ4_0(x, o, qw, w, sigma2, b); }
                        case Q4_1 -> { if (qw == null) quantizeQ4_1(x, o, b); else quantizeQ4_1(x, o, qw, w, sigma2, b); }
                        case Q5_0 -> { if (qw == null) quantizeQ5_0(x, o, b); else quantizeQ5_0(x, o, qw, w, sigma2, b); }
                        case Q5_1 -> { if (qw == null) quantizeQ5_1(x, o, b); else quantizeQ5_1(x, o, qw, w, sigma2, b); }
                        case Q8_0 -> quantizeQ8_0(x, o, b); // llama.cpp ignores importance for Q8_0
                        case Q2_K -> { if (qw == null) quantizeQ2_K(x, o, b); else quantizeQ2_K(x, o, qw, w, b); }
                        case Q3_K -> { if (qw == null) quantizeQ3_K(x, o, b); else quantizeQ3_K(x, o, qw, w, b); }
                        case Q4_K -> { if (qw == null) quantizeQ4_K(x, o, b); else quantizeQ4_K(x, o, qw, w, b); }
                        case Q5_K -> { if (qw == null) quantizeQ5_K(x, o, b); else quantizeQ5_K(x, o, qw, w, b); }
                        case Q6_K -> quantizeQ6_K(x, o, qw, w, b);
                        default -> throw new UnsupportedOperationException("quantizing to " + type + " is not supported");
                    }
                    MemorySegment.copy(b, 0, dst, ValueLayout.JAVA_BYTE, dstOff + (long) i * type.typeSize, type.typeSize);
                }
            }
        }
    }

    /** Convenience: one row, returned as bytes. */
    public static byte[] quantizeRow(GgmlType type, float[] x, float[] qw) {
        byte[] out = new byte[Math.toIntExact(type.byteSize(x.length))];
        quantizeRow(type, x, 0, x.length, qw, MemorySegment.ofArray(out), 0);
        return out;
    }

    /** Whether {@link #quantizeRow} can produce this type. */
    public static boolean canQuantize(GgmlType type) {
        return type != GgmlType.Q8_K;
    }

    private static void checkLength(GgmlType type, int n) {
        if (n < 0 || n % type.blockSize != 0) {
            throw new IllegalArgumentException(type + ": row length " + n + " is not a multiple of " + type.blockSize);
        }
    }

    // ================================================================ scalar helpers, as ggml defines them

    /** ggml's nearest_int: round half to even via the float adder, exact for |f| <= 2^22. */
    static int nearestInt(float f) {
        float val = f + 12582912.f;
        int i = Float.floatToRawIntBits(val);
        return (i & 0x007fffff) - 0x00400000;
    }

    /** C's roundf: halves away from zero (Math.round rounds -2.5 to -2). */
    static float roundf(float x) {
        if (!(Math.abs(x) < 8388608f)) return x; // already integral (or NaN/inf)
        return (float) Math.copySign(Math.floor(Math.abs((double) x) + 0.5), x);
    }

    /** ggml_compute_fp32_to_bf16: round to nearest even; NaNs made quiet. */
    public static short floatToBf16(float f) {
        int u = Float.floatToRawIntBits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (short) ((u >>> 16) | 64);
        return (short) ((u + (0x7fff + ((u >>> 16) & 1))) >>> 16);
    }

    public static float bf16ToFloat(short h) {
        return Float.intBitsToFloat((h & 0xffff) << 16);
    }

    private static float half(byte[] b, int off) {
        return Float.float16ToFloat((short) ((b[off] & 0xff) | (b[off + 1] << 8)));
    }

    private static void putHalf(byte[] b, int off, float v) {
        short h = Float.floatToFloat16(v);
        b[off] = (byte) h;
        b[off + 1] = (byte) (h >> 8);
    }

    /** fp16 round trip: the value a stored scale will dequantize to. */
    private static float viaHalf(float v) {
        return Float.float16ToFloat(Float.floatToFloat16(v));
    }

    private static int u32(byte[] b, int off) {
        return (b[off] & 0xff) | (b[off + 1] & 0xff) << 8 | (b[off + 2] & 0xff) << 16 | (b[off + 3] & 0xff) << 24;
    }

    private static void putU32(byte[] b, int off, int v) {
        b[off] = (byte) v;
        b[off + 1] = (byte) (v >>> 8);
        b[off + 2] = (byte) (v >>> 16);
        b[off + 3] = (byte) (v >>> 24);
    }

    /** C's (int8_t) conversion of a float: truncate toward zero, keep the low 8 bits. */
    private static int toInt8(float f) {
        return (byte) (int) f;
    }

    private static float rowSigma2(float[] x, int xo, int n) {
        float sumX2 = 0;
        for (int j = 0; j < n; j++) sumX2 += x[xo + j] * x[xo + j];
        return sumX2 / n;
    }

    private static float sqrtf(float f) {
        return (float) Math.sqrt(f); // double sqrt rounded to float is the correctly rounded float sqrt
    }

    // ================================================================ Q4_0: 0:d half | 2:qs[16]

    private static final int Q4_0_D = 0, Q4_0_QS = 2;

    /** quantize_row_q4_0_ref. */
    private static void quantizeQ4_0(float[] x, int xo, byte[] y) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            float v = x[xo + j];
            if (amax < Math.abs(v)) {
                amax = Math.abs(v);
                max = v;
            }
        }
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        putHalf(y, Q4_0_D, d);
        for (int j = 0; j < 16; j++) {
            float x0 = x[xo + j] * id;
            float x1 = x[xo + 16 + j] * id;
            int xi0 = Math.min(15, toInt8(x0 + 8.5f)) & 0xff;
            int xi1 = Math.min(15, toInt8(x1 + 8.5f)) & 0xff;
            y[Q4_0_QS + j] = (byte) (xi0 | (xi1 << 4));
        }
    }

    /** quantize_row_q4_0_impl with importance weights. */
    private static void quantizeQ4_0(float[] x, int xo, float[] qw, int wo, float sigma2, byte[] y) {
        float[] weight = new float[32];
        int[] l = new int[32];
        for (int j = 0; j < 32; j++) weight[j] = qw[wo + j] * sqrtf(sigma2 + x[xo + j] * x[xo + j]);
        float d = makeQxQuants(32, 8, x, xo, l, 0, 1, weight, 0);
        putHalf(y, Q4_0_D, d);
        for (int j = 0; j < 16; j++) y[Q4_0_QS + j] = (byte) (l[j] | (l[j + 16] << 4));
    }

    /** dequantize_row_q4_0. */
    private static void dequantizeQ4_0(byte[] b, float[] y, int yo) {
        float d = half(b, Q4_0_D);
        for (int j = 0; j < 16; j++) {
            int q = b[Q4_0_QS + j] & 0xff;
            y[yo + j] = ((q & 0x0F) - 8) * d;
            y[yo + j + 16] = ((q >> 4) - 8) * d;
        }
    }

    // ================================================================ Q4_1: 0:d half | 2:m half | 4:qs[16]

    private static final int Q4_1_D = 0, Q4_1_M = 2, Q4_1_QS = 4;

    /** quantize_row_q4_1_ref. */
    private static void quantizeQ4_1(float[] x, int xo, byte[] y) {
        float min = Float.MAX_VALUE, max = -Float.MAX_VALUE;
        for (int j = 0; j < 32; j++) {
            float v = x[xo + j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        float d = (max - min) / ((1 << 4) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        putHalf(y, Q4_1_D, d);
        putHalf(y, Q4_1_M, min);
        for (int j = 0; j < 16; j++) {
            float x0 = (x[xo + j] - min) * id;
            float x1 = (x[xo + 16 + j] - min) * id;
            int xi0 = Math.min(15, toInt8(x0 + 0.5f)) & 0xff;
            int xi1 = Math.min(15, toInt8(x1 + 0.5f)) & 0xff;
            y[Q4_1_QS + j] = (byte) (xi0 | (xi1 << 4));
        }
    }

    /** quantize_row_q4_1_impl with importance weights. */
    private static void quantizeQ4_1(float[] x, int xo, float[] qw, int wo, float sigma2, byte[] y) {
        float[] weight = new float[32];
        int[] l = new int[32], laux = new int[32];
        float[] min = new float[1];
        for (int j = 0; j < 32; j++) weight[j] = qw[wo + j] * sqrtf(sigma2 + x[xo + j] * x[xo + j]);
        float d = makeQkx3Quants(32, 15, x, xo, weight, 0, l, 0, min, laux, -0.9f, 0.05f, 36, false);
        putHalf(y, Q4_1_D, d);
        putHalf(y, Q4_1_M, -min[0]);
        for (int j = 0; j < 16; j++) y[Q4_1_QS + j] = (byte) (l[j] | (l[j + 16] << 4));
    }

    /** dequantize_row_q4_1. */
    private static void dequantizeQ4_1(byte[] b, float[] y, int yo) {
        float d = half(b, Q4_1_D), m = half(b, Q4_1_M);
        for (int j = 0; j < 16; j++) {
            int q = b[Q4_1_QS + j] & 0xff;
            y[yo + j] = (q & 0x0F) * d + m;
            y[yo + j + 16] = (q >> 4) * d + m;
        }
    }

    // ================================================================ Q5_0: 0:d half | 2:qh u32 | 6:qs[16]
    // qs as Q4_0 (low 4 bits); bit j of qh is the 5th bit of element j (j < 32).

    private static final int Q5_0_D = 0, Q5_0_QH = 2, Q5_0_QS = 6;

    /** quantize_row_q5_0_ref. */
    private static void quantizeQ5_0(float[] x, int xo, byte[] y) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            float v = x[xo + j];
            if (amax < Math.abs(v)) {
                amax = Math.abs(v);
                max = v;
            }
        }
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        putHalf(y, Q5_0_D, d);
        int qh = 0;
        for (int j = 0; j < 16; j++) {
            float x0 = x[xo + j] * id;
            float x1 = x[xo + 16 + j] * id;
            int xi0 = Math.min(31, toInt8(x0 + 16.5f)) & 0xff;
            int xi1 = Math.min(31, toInt8(x1 + 16.5f)) & 0xff;
            y[Q5_0_QS + j] = (byte) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10) >>> 4) << j;
            qh |= ((xi1 & 0x10) >>> 4) << (j + 16);
        }
        putU32(y, Q5_0_QH, qh);
    }

    /** quantize_row_q5_0_impl with importance weights. */
    private static void quantizeQ5_0(float[] x, int xo, float[] qw, int wo, float sigma2, byte[] y) {
        float[] weight = new float[32];
        int[] l = new int[32];
        for (int j = 0; j < 32; j++) weight[j] = qw[wo + j] * sqrtf(sigma2 + x[xo + j] * x[xo + j]);
        float d = makeQxQuants(32, 16, x, xo, l, 0, 1, weight, 0);
        putHalf(y, Q5_0_D, d);
        int qh = 0;
        for (int j = 0; j < 16; j++) {
            int xi0 = l[j] & 0xff, xi1 = l[j + 16] & 0xff;
            y[Q5_0_QS + j] = (byte) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10) >>> 4) << j;
            qh |= ((xi1 & 0x10) >>> 4) << (j + 16);
        }
        putU32(y, Q5_0_QH, qh);
    }

    /** dequantize_row_q5_0. */
    private static void dequantizeQ5_0(byte[] b, float[] y, int yo) {
        float d = half(b, Q5_0_D);
        int qh = u32(b, Q5_0_QH);
        for (int j = 0; j < 16; j++) {
            int xh0 = ((qh >>> j) << 4) & 0x10;
            int xh1 = (qh >>> (j + 12)) & 0x10;
            int q = b[Q5_0_QS + j] & 0xff;
            y[yo + j] = (((q & 0x0F) | xh0) - 16) * d;
            y[yo + j + 16] = (((q >> 4) | xh1) - 16) * d;
        }
    }

    // ================================================================ Q5_1: 0:d half | 2:m half | 4:qh u32 | 8:qs[16]

    private static final int Q5_1_D = 0, Q5_1_M = 2, Q5_1_QH = 4, Q5_1_QS = 8;

    /** quantize_row_q5_1_ref. */
    private static void quantizeQ5_1(float[] x, int xo, byte[] y) {
        float min = Float.MAX_VALUE, max = -Float.MAX_VALUE;
        for (int j = 0; j < 32; j++) {
            float v = x[xo + j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        float d = (max - min) / ((1 << 5) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        putHalf(y, Q5_1_D, d);
        putHalf(y, Q5_1_M, min);
        int qh = 0;
        for (int j = 0; j < 16; j++) {
            float x0 = (x[xo + j] - min) * id;
            float x1 = (x[xo + 16 + j] - min) * id;
            int xi0 = (int) (x0 + 0.5f) & 0xff; // (uint8_t) conversion
            int xi1 = (int) (x1 + 0.5f) & 0xff;
            y[Q5_1_QS + j] = (byte) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10) >>> 4) << j;
            qh |= ((xi1 & 0x10) >>> 4) << (j + 16);
        }
        putU32(y, Q5_1_QH, qh);
    }

    /** quantize_row_q5_1_impl with importance weights. */
    private static void quantizeQ5_1(float[] x, int xo, float[] qw, int wo, float sigma2, byte[] y) {
        float[] weight = new float[32];
        int[] l = new int[32], laux = new int[32];
        float[] min = new float[1];
        for (int j = 0; j < 32; j++) weight[j] = qw[wo + j] * sqrtf(sigma2 + x[xo + j] * x[xo + j]);
        float d = makeQkx3Quants(32, 31, x, xo, weight, 0, l, 0, min, laux, -0.9f, 0.05f, 36, false);
        putHalf(y, Q5_1_D, d);
        putHalf(y, Q5_1_M, -min[0]);
        int qh = 0;
        for (int j = 0; j < 16; j++) {
            int xi0 = l[j], xi1 = l[j + 16];
            y[Q5_1_QS + j] = (byte) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10) >>> 4) << j;
            qh |= ((xi1 & 0x10) >>> 4) << (j + 16);
        }
        putU32(y, Q5_1_QH, qh);
    }

    /** dequantize_row_q5_1. */
    private static void dequantizeQ5_1(byte[] b, float[] y, int yo) {
        float d = half(b, Q5_1_D), m = half(b, Q5_1_M);
        int qh = u32(b, Q5_1_QH);
        for (int j = 0; j < 16; j++) {
            int xh0 = ((qh >>> j) << 4) & 0x10;
            int xh1 = (qh >>> (j + 12)) & 0x10;
            int q = b[Q5_1_QS + j] & 0xff;
            y[yo + j] = ((q & 0x0F) | xh0) * d + m;
            y[yo + j + 16] = ((q >> 4) | xh1) * d + m;
        }
    }

    // ================================================================ Q8_0: 0:d half | 2:qs[32] int8

    private static final int Q8_0_D = 0, Q8_0_QS = 2;

    /** quantize_row_q8_0_ref. */
    private static void quantizeQ8_0(float[] x, int xo, byte[] y) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[xo + j]));
        float d = amax / ((1 << 7) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        putHalf(y, Q8_0_D, d);
        for (int j = 0; j < 32; j++) y[Q8_0_QS + j] = (byte) (int) roundf(x[xo + j] * id);
    }

    /** dequantize_row_q8_0. */
    private static void dequantizeQ8_0(byte[] b, float[] y, int yo) {
        float d = half(b, Q8_0_D);
        for (int j = 0; j < 32; j++) y[yo + j] = b[Q8_0_QS + j] * d;
    }

    // ================================================================ K-quant helpers (ggml-quants.c)
    // Arrays of quant levels ("L") are int[]: stores into C's uint8_t/int8_t arrays are wrapped (& 0xff / (byte))
    // where the C code could wrap, so every later read sees the value C sees.

    /** make_qx_quants: symmetric quantization of n values to [-nmax, nmax-1] (stored + nmax) with a refined scale. */
    static float makeQxQuants(int n, int nmax, float[] x, int xo, int[] L, int lo, int rmseType, float[] qw, int wo) {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++) {
            float ax = Math.abs(x[xo + i]);
            if (ax > amax) {
                amax = ax;
                max = x[xo + i];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            for (int i = 0; i < n; i++) L[lo + i] = 0;
            return 0.f;
        }
        float iscale = -nmax / max;
        if (rmseType == 0) {
            for (int i = 0; i < n; i++) {
                int l = nearestInt(iscale * x[xo + i]);
                L[lo + i] = (byte) (nmax + Math.max(-nmax, Math.min(nmax - 1, l)));
            }
            return 1 / iscale;
        }
        boolean returnEarly = false;
        if (rmseType < 0) {
            rmseType = -rmseType;
            returnEarly = true;
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearestInt(iscale * x[xo + i]);
            l = Math.max(-nmax, Math.min(nmax - 1, l));
            L[lo + i] = (byte) (l + nmax);
            float w = qxWeight(x[xo + i], rmseType, qw, wo + i);
            sumlx += w * x[xo + i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        if (returnEarly) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
        float best = scale * sumlx;
        for (int is = -9; is <= 9; is++) {
            if (is == 0) continue;
            iscale = -(nmax + 0.1f * is) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++) {
                int l = nearestInt(iscale * x[xo + i]);
                l = Math.max(-nmax, Math.min(nmax - 1, l));
                float w = qxWeight(x[xo + i], rmseType, qw, wo + i);
                sumlx += w * x[xo + i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2) {
                for (int i = 0; i < n; i++) {
                    int l = nearestInt(iscale * x[xo + i]);
                    L[lo + i] = (byte) (nmax + Math.max(-nmax, Math.min(nmax - 1, l)));
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    private static float qxWeight(float x, int rmseType, float[] qw, int i) {
        if (qw != null) return qw[i];
        return switch (rmseType) {
            case 1 -> x * x;
            case 2 -> 1;
            case 3 -> Math.abs(x);
            default -> sqrtf(Math.abs(x));
        };
    }

    /** make_q3_quants: like make_qx_quants with x^2 weights and a coordinate-descent refinement (Q3_K). */
    static float makeQ3Quants(int n, int nmax, float[] x, int xo, int[] L, int lo, boolean doRmse) {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++) {
            float ax = Math.abs(x[xo + i]);
            if (ax > amax) {
                amax = ax;
                max = x[xo + i];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            for (int i = 0; i < n; i++) L[lo + i] = 0;
            return 0.f;
        }
        float iscale = -nmax / max;
        if (doRmse) {
            float sumlx = 0, suml2 = 0;
            for (int i = 0; i < n; i++) {
                int l = nearestInt(iscale * x[xo + i]);
                l = Math.max(-nmax, Math.min(nmax - 1, l));
                L[lo + i] = (byte) l;
                float w = x[xo + i] * x[xo + i];
                sumlx += w * x[xo + i] * l;
                suml2 += w * l * l;
            }
            for (int itry = 0; itry < 5; itry++) {
                int nChanged = 0;
                for (int i = 0; i < n; i++) {
                    float xi = x[xo + i];
                    float w = xi * xi;
                    float slx = sumlx - w * xi * L[lo + i];
                    if (slx > 0) {
                        float sl2 = suml2 - w * L[lo + i] * L[lo + i];
                        int newL = nearestInt(xi * sl2 / slx);
                        newL = Math.max(-nmax, Math.min(nmax - 1, newL));
                        if (newL != L[lo + i]) {
                            slx += w * xi * newL;
                            sl2 += w * newL * newL;
                            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                                L[lo + i] = (byte) newL;
                                sumlx = slx;
                                suml2 = sl2;
                                nChanged++;
                            }
                        }
                    }
                }
                if (nChanged == 0) break;
            }
            for (int i = 0; i < n; i++) L[lo + i] = (byte) (L[lo + i] + nmax);
            return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
        }
        for (int i = 0; i < n; i++) {
            int l = nearestInt(iscale * x[xo + i]);
            l = Math.max(-nmax, Math.min(nmax - 1, l));
            L[lo + i] = (byte) (l + nmax);
        }
        return 1 / iscale;
    }

    /**
     * make_qkx2_quants: asymmetric quantization to [0, nmax] with scale and min fitted by weighted least squares
     * over nstep+1 trial scales. Returns the scale; {@code theMin[0]} gets minus the offset.
     */
    static float makeQkx2Quants(int n, int nmax, float[] x, int xo, float[] weights, int[] L, int lo, float[] theMin,
                                int[] laux, float rmin, float rdelta, int nstep, boolean useMad) {
        float min = x[xo], max = x[xo];
        float sumW = weights[0];
        float sumX = sumW * x[xo];
        for (int i = 1; i < n; i++) {
            float xi = x[xo + i];
            if (xi < min) min = xi;
            if (xi > max) max = xi;
            float w = weights[i];
            sumW += w;
            sumX += w * xi;
        }
        if (min > 0) min = 0;
        if (max == min) {
            for (int i = 0; i < n; i++) L[lo + i] = 0;
            theMin[0] = -min;
            return 0.f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++) {
            int l = nearestInt(iscale * (x[xo + i] - min));
            L[lo + i] = Math.max(0, Math.min(nmax, l)) & 0xff;
            float diff = scale * L[lo + i] + min - x[xo + i];
            diff = useMad ? Math.abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1) {
            theMin[0] = -min;
            return scale;
        }
        for (int is = 0; is <= nstep; is++) {
            iscale = (rmin + rdelta * is + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++) {
                int l = nearestInt(iscale * (x[xo + i] - min));
                l = Math.max(0, Math.min(nmax, l));
                laux[i] = l & 0xff;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[xo + i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0) {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0) {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++) {
                    float diff = thisScale * laux[i] + thisMin - x[xo + i];
                    diff = useMad ? Math.abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError) {
                    System.arraycopy(laux, 0, L, lo, n);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin[0] = -min;
        return scale;
    }

    /** make_qkx3_quants (the importance-weighted variant of make_qkx2_quants; weights always given here). */
    static float makeQkx3Quants(int n, int nmax, float[] x, int xo, float[] weights, int wo, int[] L, int lo,
                                float[] theMin, int[] laux, float rmin, float rdelta, int nstep, boolean useMad) {
        float min = x[xo], max = x[xo];
        float sumW = weights[wo];
        float sumX = sumW * x[xo];
        for (int i = 1; i < n; i++) {
            float xi = x[xo + i];
            if (xi < min) min = xi;
            if (xi > max) max = xi;
            float w = weights[wo + i];
            sumW += w;
            sumX += w * xi;
        }
        if (min > 0) min = 0;
        if (max <= min) {
            for (int i = 0; i < n; i++) L[lo + i] = 0;
            theMin[0] = -min;
            return 0.f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestMad = 0;
        for (int i = 0; i < n; i++) {
            int l = nearestInt(iscale * (x[xo + i] - min));
            L[lo + i] = Math.max(0, Math.min(nmax, l)) & 0xff;
            float diff = scale * L[lo + i] + min - x[xo + i];
            diff = useMad ? Math.abs(diff) : diff * diff;
            bestMad += weights[wo + i] * diff;
        }
        if (nstep < 1) {
            theMin[0] = -min;
            return scale;
        }
        for (int is = 0; is <= nstep; is++) {
            iscale = (rmin + rdelta * is + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++) {
                // min is the best fit so far and can be at or near max, so v can be inf, nan or out of range
                float v = iscale * (x[xo + i] - min);
                int l = v > 0 ? nearestInt(v < nmax ? v : nmax) : 0;
                laux[i] = l & 0xff;
                float w = weights[wo + i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[xo + i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0) {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0) {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float mad = 0;
                for (int i = 0; i < n; i++) {
                    float diff = thisScale * laux[i] + thisMin - x[xo + i];
                    diff = useMad ? Math.abs(diff) : diff * diff;
                    mad += weights[wo + i] * diff;
                }
                if (mad < bestMad) {
                    System.arraycopy(laux, 0, L, lo, n);
                    bestMad = mad;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin[0] = -min;
        return scale;
    }

    /** make_qp_quants: quantizes non-negative values (sub-block scales/mins) to [0, nmax] with weights. */
    static float makeQpQuants(int n, int nmax, float[] x, int[] L, float[] qw) {
        float max = 0;
        for (int i = 0; i < n; i++) max = Math.max(max, x[i]);
        if (max < GROUP_MAX_EPS) {
            for (int i = 0; i < n; i++) L[i] = 0;
            return 0.f;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; i++) L[i] = nearestInt(iscale * x[i]) & 0xff;
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; i++) {
            float diff = x[i] - scale * L[i];
            bestMse += qw[i] * diff * diff;
        }
        for (int is = -4; is <= 4; is++) {
            if (is == 0) continue;
            float iscaleIs = (0.1f * is + nmax) / max;
            float scaleIs = 1 / iscaleIs;
            float mse = 0;
            for (int i = 0; i < n; i++) {
                int l = nearestInt(iscaleIs * x[i]);
                l = Math.min(nmax, l);
                float diff = x[i] - scaleIs * l;
                mse += qw[i] * diff * diff;
            }
            if (mse < bestMse) {
                bestMse = mse;
                iscale = iscaleIs;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearestInt(iscale * x[i]);
            l = Math.min(nmax, l);
            L[i] = l & 0xff;
            float w = qw[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++) {
            int nChanged = 0;
            for (int i = 0; i < n; i++) {
                float w = qw[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0) {
                    int newL = nearestInt(x[i] * sl2 / slx);
                    newL = Math.min(nmax, newL);
                    if (newL != L[i]) {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = newL & 0xff;
                            sumlx = slx;
                            suml2 = sl2;
                            nChanged++;
                        }
                    }
                }
            }
            if (nChanged == 0) break;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /** Packs 2-bit levels: byte (j/4 + l) of 32 holds elements j+l, j+l+32, j+l+64, j+l+96 (j = 0, 128). */
    private static void pack2Bit(int[] L, byte[] y, int qsOff) {
        for (int j = 0; j < 256; j += 128) {
            for (int l = 0; l < 32; l++) {
                y[qsOff + j / 4 + l] = (byte) (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
            }
        }
    }

    // ================================================================ Q2_K: 0:scales[16] | 16:qs[64] | 80:d | 82:dmin
    // 16 sub-blocks of 16: scales[j] = scale (low nibble) | min (high nibble); w = d*sc*q - dmin*m.
    // qs: 2-bit levels packed by pack2Bit.

    private static final int Q2_K_SCALES = 0, Q2_K_QS = 16, Q2_K_D = 80, Q2_K_DMIN = 82;

    /** quantize_row_q2_K_ref. */
    private static void quantizeQ2_K(float[] x, int xo, byte[] y) {
        int[] L = new int[256], laux = new int[16];
        float[] weights = new float[16], mins = new float[16], scales = new float[16], theMin = new float[1];
        final float q4scale = 15.f;
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = Math.abs(x[xo + 16 * j + l]);
            scales[j] = makeQkx2Quants(16, 3, x, xo + 16 * j, weights, L, 16 * j, theMin, laux, -0.5f, 0.1f, 15, true);
            mins[j] = theMin[0];
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        int[] sc = new int[16];
        if (maxScale > 0) {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < 16; j++) sc[j] = nearestInt(iscale * scales[j]) & 0xff;
            putHalf(y, Q2_K_D, maxScale / q4scale);
        } else {
            putHalf(y, Q2_K_D, 0.f);
        }
        if (maxMin > 0) {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < 16; j++) sc[j] = (sc[j] | (nearestInt(iscale * mins[j]) << 4)) & 0xff;
            putHalf(y, Q2_K_DMIN, maxMin / q4scale);
        } else {
            putHalf(y, Q2_K_DMIN, 0.f);
        }
        float dAll = half(y, Q2_K_D), dminAll = half(y, Q2_K_DMIN);
        for (int j = 0; j < 16; j++) {
            float d = dAll * (sc[j] & 0xF);
            if (d == 0) continue;
            float dm = dminAll * (sc[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                int l = nearestInt((x[xo + 16 * j + ii] + dm) / d);
                L[16 * j + ii] = Math.max(0, Math.min(3, l));
            }
        }
        for (int j = 0; j < 16; j++) y[Q2_K_SCALES + j] = (byte) sc[j];
        pack2Bit(L, y, Q2_K_QS);
    }

    /** quantize_row_q2_K_impl with importance weights. */
    private static void quantizeQ2_K(float[] x, int xo, float[] qw, int wo, byte[] y) {
        int[] L = new int[256], laux = new int[16], ls = new int[16], lm = new int[16];
        float[] mins = new float[16], scales = new float[16], sw = new float[16], weight = new float[16];
        float[] theMin = new float[1];
        float sumx2 = 0;
        for (int j = 0; j < 256; j++) sumx2 += x[xo + j] * x[xo + j];
        float sigma2 = sumx2 / 256;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) {
                float xv = x[xo + 16 * j + l];
                weight[l] = qw[wo + 16 * j + l] * sqrtf(sigma2 + xv * xv);
            }
            for (int l = 0; l < 16; l++) sw[j] += weight[l];
            scales[j] = makeQkx3Quants(16, 3, x, xo + 16 * j, weight, 0, L, 16 * j, theMin, laux, -0.9f, 0.05f, 36, false);
            mins[j] = theMin[0];
        }
        float dm = makeQpQuants(16, 15, scales, ls, sw);
        float mm = makeQpQuants(16, 15, mins, lm, sw);
        putHalf(y, Q2_K_D, dm);
        putHalf(y, Q2_K_DMIN, mm);
        dm = viaHalf(dm);
        mm = viaHalf(mm);
        int[] sc = new int[16];
        for (int j = 0; j < 16; j++) sc[j] = (ls[j] | (lm[j] << 4)) & 0xff;
        for (int j = 0; j < 16; j++) {
            float d = dm * (sc[j] & 0xF);
            if (d == 0) continue;
            float m = mm * (sc[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                int l = nearestInt((x[xo + 16 * j + ii] + m) / d);
                L[16 * j + ii] = Math.max(0, Math.min(3, l));
            }
        }
        for (int j = 0; j < 16; j++) y[Q2_K_SCALES + j] = (byte) sc[j];
        pack2Bit(L, y, Q2_K_QS);
    }

    /** dequantize_row_q2_K. */
    private static void dequantizeQ2_K(byte[] b, float[] y, int yo) {
        float d = half(b, Q2_K_D), min = half(b, Q2_K_DMIN);
        int is = 0, out = yo;
        for (int n = 0, q = Q2_K_QS; n < 256; n += 128, q += 32) {
            for (int j = 0, shift = 0; j < 4; j++, shift += 2) {
                int sc = b[Q2_K_SCALES + is++] & 0xff;
                float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; l++) y[out++] = dl * (((b[q + l] & 0xff) >> shift) & 3) - ml;
                sc = b[Q2_K_SCALES + is++] & 0xff;
                dl = d * (sc & 0xF);
                ml = min * (sc >> 4);
                for (int l = 0; l < 16; l++) y[out++] = dl * (((b[q + l + 16] & 0xff) >> shift) & 3) - ml;
            }
        }
    }

    // ================================================================ Q3_K: 0:hmask[32] | 32:qs[64] | 96:scales[12] | 108:d
    // Level q (0..7) = 2 low bits in qs (pack2Bit order) + 4 * high bit; the high bit of element j is bit (j / 32)
    // of hmask[j % 32]. 16 six-bit scales (biased by 32): low nibbles of scales 0-7 in bytes 0-7, of 8-15 in the
    // high nibbles of bytes 0-7; bits 4-5 of scale j in byte 8 + j%4 at bit 2*(j/4).

    private static final int Q3_K_HMASK = 0, Q3_K_QS = 32, Q3_K_SCALES = 96, Q3_K_D = 108;

    private static void packQ3Scale(byte[] y, int j, int l) {
        if (j < 8) {
            y[Q3_K_SCALES + j] = (byte) (l & 0xF);
        } else {
            y[Q3_K_SCALES + j - 8] |= (byte) ((l & 0xF) << 4);
        }
        l >>= 4;
        y[Q3_K_SCALES + j % 4 + 8] |= (byte) (l << (2 * (j / 4)));
    }

    private static int unpackQ3Scale(byte[] y, int j) {
        int sc = j < 8 ? y[Q3_K_SCALES + j] & 0xF : (y[Q3_K_SCALES + j - 8] & 0xff) >> 4;
        return (byte) ((sc | (((y[Q3_K_SCALES + 8 + j % 4] & 0xff) >> (2 * (j / 4))) & 3) << 4) - 32);
    }

    /** Requantizes with the stored scales, then splits levels into hmask and 2-bit qs. Shared tail of both Q3_K quantizers. */
    private static void finishQ3_K(float[] x, int xo, int[] L, byte[] y) {
        float dAll = half(y, Q3_K_D);
        for (int j = 0; j < 16; j++) {
            int sc = unpackQ3Scale(y, j);
            float d = dAll * sc;
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearestInt(x[xo + 16 * j + ii] / d);
                l = Math.max(-4, Math.min(3, l));
                L[16 * j + ii] = l + 4;
            }
        }
        int m = 0, hm = 1;
        for (int j = 0; j < 256; j++) {
            if (L[j] > 3) {
                y[Q3_K_HMASK + m] |= (byte) hm;
                L[j] -= 4;
            }
            if (++m == 32) {
                m = 0;
                hm <<= 1;
            }
        }
        pack2Bit(L, y, Q3_K_QS);
    }

    /** quantize_row_q3_K_ref. */
    private static void quantizeQ3_K(float[] x, int xo, byte[] y) {
        int[] L = new int[256];
        float[] scales = new float[16];
        float maxScale = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            scales[j] = makeQ3Quants(16, 4, x, xo + 16 * j, L, 16 * j, true);
            float scale = Math.abs(scales[j]);
            if (scale > amax) {
                amax = scale;
                maxScale = scales[j];
            }
        }
        if (maxScale != 0) {
            float iscale = -32.f / maxScale;
            for (int j = 0; j < 16; j++) {
                int l = (byte) nearestInt(iscale * scales[j]);   // int8_t l = nearest_int(...)
                l = (byte) (Math.max(-32, Math.min(31, l)) + 32);
                packQ3Scale(y, j, l);
            }
            putHalf(y, Q3_K_D, 1 / iscale);
        } else {
            putHalf(y, Q3_K_D, 0.f);
        }
        finishQ3_K(x, xo, L, y);
    }

    /** quantize_row_q3_K_impl with importance weights. */
    private static void quantizeQ3_K(float[] x, int xo, float[] qw, int wo, byte[] y) {
        int[] L = new int[256], ls = new int[16];
        float[] scales = new float[16], weight = new float[16], sw = new float[16];
        float sumx2 = 0;
        for (int j = 0; j < 256; j++) sumx2 += x[xo + j] * x[xo + j];
        float sigma2 = 2 * sumx2 / 256;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) {
                float xv = x[xo + 16 * j + l];
                weight[l] = qw[wo + 16 * j + l] * sqrtf(sigma2 + xv * xv);
            }
            float sumw = 0;
            for (int l = 0; l < 16; l++) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = makeQxQuants(16, 4, x, xo + 16 * j, L, 16 * j, 1, weight, 0);
        }
        float dBlock = makeQxQuants(16, 32, scales, 0, ls, 0, 1, sw, 0);
        for (int j = 0; j < 16; j++) packQ3Scale(y, j, ls[j]);
        putHalf(y, Q3_K_D, dBlock);
        finishQ3_K(x, xo, L, y);
    }

    /** dequantize_row_q3_K. */
    private static void dequantizeQ3_K(byte[] b, float[] y, int yo) {
        float dAll = half(b, Q3_K_D);
        int out = yo, is = 0, m = 1;
        for (int n = 0, q = Q3_K_QS; n < 256; n += 128, q += 32) {
            for (int j = 0, shift = 0; j < 4; j++, shift += 2, m <<= 1) {
                float dl = dAll * unpackQ3Scale(b, is++);
                for (int l = 0; l < 16; l++) {
                    y[out++] = dl * ((((b[q + l] & 0xff) >> shift) & 3) - ((b[Q3_K_HMASK + l] & m) != 0 ? 0 : 4));
                }
                dl = dAll * unpackQ3Scale(b, is++);
                for (int l = 0; l < 16; l++) {
                    y[out++] = dl * ((((b[q + l + 16] & 0xff) >> shift) & 3) - ((b[Q3_K_HMASK + l + 16] & m) != 0 ? 0 : 4));
                }
            }
        }
    }

    // ================================================================ Q4_K / Q5_K shared 12-byte scales
    // 8 sub-blocks of 32, each a 6-bit scale and 6-bit min. j < 4: scales[j] = sc, scales[j+4] = m (low 6 bits);
    // j >= 4: scales[j+4] = sc low nibble | m low nibble << 4, top 2 bits of sc in bits 6-7 of scales[j-4],
    // of m in bits 6-7 of scales[j]. (get_scale_min_k4)

    private static final int K_D = 0, K_DMIN = 2, K_SCALES = 4;

    private static void packScaleMinK4(byte[] y, int j, int ls, int lm) {
        if (j < 4) {
            y[K_SCALES + j] = (byte) ls;
            y[K_SCALES + j + 4] = (byte) lm;
        } else {
            y[K_SCALES + j + 4] = (byte) ((ls & 0xF) | ((lm & 0xF) << 4));
            y[K_SCALES + j - 4] |= (byte) ((ls >> 4) << 6);
            y[K_SCALES + j] |= (byte) ((lm >> 4) << 6);
        }
    }

    /** get_scale_min_k4: {scale, min} of sub-block j. */
    private static int scaleK4(byte[] q, int j) {
        if (j < 4) return q[K_SCALES + j] & 63;
        return (q[K_SCALES + j + 4] & 0xF) | (((q[K_SCALES + j - 4] & 0xff) >> 6) << 4);
    }

    private static int minK4(byte[] q, int j) {
        if (j < 4) return q[K_SCALES + j + 4] & 63;
        return ((q[K_SCALES + j + 4] & 0xff) >> 4) | (((q[K_SCALES + j] & 0xff) >> 6) << 4);
    }

    /** The reference Q4_K/Q5_K scale search: make_qkx2_quants per sub-block of 32. */
    private static void fitSubBlocksK(float[] x, int xo, int nmax, float rmin, float rdelta, int nstep, int[] L,
                                      float[] scales, float[] mins) {
        int[] laux = new int[32];
        float[] weights = new float[32], theMin = new float[1];
        for (int j = 0; j < 8; j++) {
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += x[xo + 32 * j + l] * x[xo + 32 * j + l];
            float avX = sqrtf(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + Math.abs(x[xo + 32 * j + l]);
            scales[j] = makeQkx2Quants(32, nmax, x, xo + 32 * j, weights, L, 32 * j, theMin, laux, rmin, rdelta, nstep, false);
            mins[j] = theMin[0];
        }
    }

    /** The reference Q4_K/Q5_K header: 6-bit sub-block scales and mins relative to their maxima. */
    private static void storeScalesRefK(float[] scales, float[] mins, byte[] y) {
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++) {
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63.f / maxScale : 0.f;
        float invMin = maxMin > 0 ? 63.f / maxMin : 0.f;
        for (int j = 0; j < 8; j++) {
            int ls = nearestInt(invScale * scales[j]) & 0xff;
            int lm = nearestInt(invMin * mins[j]) & 0xff;
            packScaleMinK4(y, j, Math.min(63, ls), Math.min(63, lm));
        }
        putHalf(y, K_D, maxScale / 63.f);
        putHalf(y, K_DMIN, maxMin / 63.f);
    }

    /** The importance-weighted Q4_K/Q5_K search (quantize_row_q4_K_impl / q5_K_impl). */
    private static void fitAndStoreWeightedK(float[] x, int xo, float[] qw, int wo, int nmax, int[] L, byte[] y) {
        // Q5_K clamps the 6-bit levels to 63 before packing, Q4_K does not (a wrapped negative level then packs
        // as in C).
        boolean clamp = nmax == 31;
        int[] laux = new int[32], ls = new int[8], lm = new int[8];
        float[] weights = new float[32], sw = new float[8], mins = new float[8], scales = new float[8];
        float[] theMin = new float[1];
        float sumX2 = 0;
        for (int l = 0; l < 256; l++) sumX2 += x[xo + l] * x[xo + l];
        float sigma2 = 2 * sumX2 / 256;
        for (int j = 0; j < 8; j++) {
            for (int l = 0; l < 32; l++) {
                float xv = x[xo + 32 * j + l];
                weights[l] = qw[wo + 32 * j + l] * sqrtf(sigma2 + xv * xv);
            }
            float sumw = 0;
            for (int l = 0; l < 32; l++) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = makeQkx3Quants(32, nmax, x, xo + 32 * j, weights, 0, L, 32 * j, theMin, laux, -0.9f, 0.05f, 36, false);
            mins[j] = theMin[0];
        }
        float dBlock = makeQpQuants(8, 63, scales, ls, sw);
        float mBlock = makeQpQuants(8, 63, mins, lm, sw);
        for (int j = 0; j < 8; j++) {
            packScaleMinK4(y, j, clamp ? Math.min(63, ls[j]) : ls[j], clamp ? Math.min(63, lm[j]) : lm[j]);
        }
        putHalf(y, K_D, dBlock);
        putHalf(y, K_DMIN, mBlock);
    }

    /** Final levels with the stored (6-bit, fp16) scales and mins. */
    private static void requantizeK(float[] x, int xo, int nmax, int[] L, byte[] y) {
        float dAll = half(y, K_D), dminAll = half(y, K_DMIN);
        for (int j = 0; j < 8; j++) {
            float d = dAll * scaleK4(y, j);
            if (d == 0) continue;
            float dm = dminAll * minK4(y, j);
            for (int ii = 0; ii < 32; ii++) {
                int l = nearestInt((x[xo + 32 * j + ii] + dm) / d);
                L[32 * j + ii] = Math.max(0, Math.min(nmax, l));
            }
        }
    }

    // ================================================================ Q4_K: 0:d | 2:dmin | 4:scales[12] | 16:qs[128]
    // qs: 4 chunks of 64 elements, each 32 bytes: low nibble = element l, high nibble = element l + 32.

    private static final int Q4_K_QS = 16;

    /** quantize_row_q4_K_ref. */
    private static void quantizeQ4_K(float[] x, int xo, byte[] y) {
        int[] L = new int[256];
        float[] scales = new float[8], mins = new float[8];
        fitSubBlocksK(x, xo, 15, -1.f, 0.1f, 20, L, scales, mins);
        storeScalesRefK(scales, mins, y);
        requantizeK(x, xo, 15, L, y);
        packQ4_K(L, y);
    }

    /** quantize_row_q4_K_impl with importance weights. */
    private static void quantizeQ4_K(float[] x, int xo, float[] qw, int wo, byte[] y) {
        int[] L = new int[256];
        fitAndStoreWeightedK(x, xo, qw, wo, 15, L, y);
        requantizeK(x, xo, 15, L, y);
        packQ4_K(L, y);
    }

    private static void packQ4_K(int[] L, byte[] y) {
        for (int j = 0, q = Q4_K_QS; j < 256; j += 64, q += 32) {
            for (int l = 0; l < 32; l++) y[q + l] = (byte) (L[j + l] | (L[j + l + 32] << 4));
        }
    }

    /** dequantize_row_q4_K. */
    private static void dequantizeQ4_K(byte[] b, float[] y, int yo) {
        float d = half(b, K_D), min = half(b, K_DMIN);
        int out = yo, is = 0;
        for (int j = 0, q = Q4_K_QS; j < 256; j += 64, q += 32, is += 2) {
            float d1 = d * scaleK4(b, is), m1 = min * minK4(b, is);
            float d2 = d * scaleK4(b, is + 1), m2 = min * minK4(b, is + 1);
            for (int l = 0; l < 32; l++) y[out++] = d1 * (b[q + l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) y[out++] = d2 * ((b[q + l] & 0xff) >> 4) - m2;
        }
    }

    // ================================================================ Q5_K: 0:d | 2:dmin | 4:scales[12] | 16:qh[32] | 48:qs[128]
    // qs as Q4_K (low 4 bits); the 5th bit of element 64*c + l (l < 32) is bit 2c of qh[l], of 64*c + 32 + l bit 2c+1.

    private static final int Q5_K_QH = 16, Q5_K_QS = 48;

    /** quantize_row_q5_K_ref. */
    private static void quantizeQ5_K(float[] x, int xo, byte[] y) {
        int[] L = new int[256];
        float[] scales = new float[8], mins = new float[8];
        fitSubBlocksK(x, xo, 31, -0.5f, 0.1f, 15, L, scales, mins);
        storeScalesRefK(scales, mins, y);
        requantizeK(x, xo, 31, L, y);
        packQ5_K(L, y);
    }

    /** quantize_row_q5_K_impl with importance weights. */
    private static void quantizeQ5_K(float[] x, int xo, float[] qw, int wo, byte[] y) {
        int[] L = new int[256];
        fitAndStoreWeightedK(x, xo, qw, wo, 31, L, y);
        requantizeK(x, xo, 31, L, y);
        packQ5_K(L, y);
    }

    private static void packQ5_K(int[] L, byte[] y) {
        int m1 = 1, m2 = 2;
        for (int n = 0, ql = Q5_K_QS; n < 256; n += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[n + j];
                if (l1 > 15) {
                    l1 -= 16;
                    y[Q5_K_QH + j] |= (byte) m1;
                }
                int l2 = L[n + j + 32];
                if (l2 > 15) {
                    l2 -= 16;
                    y[Q5_K_QH + j] |= (byte) m2;
                }
                y[ql + j] = (byte) (l1 | (l2 << 4));
            }
        }
    }

    /** dequantize_row_q5_K. */
    private static void dequantizeQ5_K(byte[] b, float[] y, int yo) {
        float d = half(b, K_D), min = half(b, K_DMIN);
        int out = yo, is = 0, u1 = 1, u2 = 2;
        for (int j = 0, ql = Q5_K_QS; j < 256; j += 64, ql += 32, is += 2, u1 <<= 2, u2 <<= 2) {
            float d1 = d * scaleK4(b, is), m1 = min * minK4(b, is);
            float d2 = d * scaleK4(b, is + 1), m2 = min * minK4(b, is + 1);
            for (int l = 0; l < 32; l++) y[out++] = d1 * ((b[ql + l] & 0xF) + ((b[Q5_K_QH + l] & u1) != 0 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) y[out++] = d2 * (((b[ql + l] & 0xff) >> 4) + ((b[Q5_K_QH + l] & u2) != 0 ? 16 : 0)) - m2;
        }
    }

    // ================================================================ Q6_K: 0:ql[128] | 128:qh[64] | 192:scales[16] int8 | 208:d
    // Two halves of 128 elements (ql += 64, qh += 32 per half). Within a half, for l < 32: ql[l] = low nibbles of
    // elements l (low) and l+64 (high); ql[l+32] = of l+32 and l+96; qh[l] = high 2 bits of l, l+32, l+64, l+96 at
    // bits 0, 2, 4, 6. Level q in 0..63, w = d * scales[sub-block of 16] * (q - 32).

    private static final int Q6_K_QL = 0, Q6_K_QH = 128, Q6_K_SCALES = 192, Q6_K_D = 208;

    /** quantize_row_q6_K_ref (qw == null) and quantize_row_q6_K_impl. */
    private static void quantizeQ6_K(float[] x, int xo, float[] qw, int wo, byte[] y) {
        int[] L = new int[256];
        float[] scales = new float[16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ib++) {
            float scale = makeQxQuants(16, 32, x, xo + 16 * ib, L, 16 * ib, 1, qw, wo + 16 * ib);
            scales[ib] = scale;
            float absScale = Math.abs(scale);
            if (absScale > maxAbsScale) {
                maxAbsScale = absScale;
                maxScale = scale;
            }
        }
        if (maxAbsScale < GROUP_MAX_EPS) {
            java.util.Arrays.fill(y, (byte) 0);
            return;
        }
        float iscale = -128.f / maxScale;
        putHalf(y, Q6_K_D, 1 / iscale);
        for (int ib = 0; ib < 16; ib++) y[Q6_K_SCALES + ib] = (byte) Math.min(127, nearestInt(iscale * scales[ib]));
        float dAll = half(y, Q6_K_D);
        for (int j = 0; j < 16; j++) {
            float d = dAll * y[Q6_K_SCALES + j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearestInt(x[xo + 16 * j + ii] / d);
                l = Math.max(-32, Math.min(31, l));
                L[16 * j + ii] = l + 32;
            }
        }
        for (int j = 0, ql = Q6_K_QL, qh = Q6_K_QH; j < 256; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                y[ql + l] = (byte) (q1 | (q3 << 4));
                y[ql + l + 32] = (byte) (q2 | (q4 << 4));
                y[qh + l] = (byte) ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4)
                        | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }

    /** dequantize_row_q6_K. */
    private static void dequantizeQ6_K(byte[] b, float[] y, int yo) {
        float d = half(b, Q6_K_D);
        for (int n = 0, ql = Q6_K_QL, qh = Q6_K_QH, sc = Q6_K_SCALES; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int h = b[qh + l] & 0xff;
                int q1 = (byte) ((b[ql + l] & 0xF) | (((h >> 0) & 3) << 4)) - 32;
                int q2 = (byte) ((b[ql + l + 32] & 0xF) | (((h >> 2) & 3) << 4)) - 32;
                int q3 = (byte) (((b[ql + l] & 0xff) >> 4) | (((h >> 4) & 3) << 4)) - 32;
                int q4 = (byte) (((b[ql + l + 32] & 0xff) >> 4) | (((h >> 6) & 3) << 4)) - 32;
                y[yo + n + l] = d * b[sc + is] * q1;
                y[yo + n + l + 32] = d * b[sc + is + 2] * q2;
                y[yo + n + l + 64] = d * b[sc + is + 4] * q3;
                y[yo + n + l + 96] = d * b[sc + is + 6] * q4;
            }
        }
    }

    // ================================================================ Q8_K: 0:d float | 4:qs[256] int8 | 260:bsums[16] int16

    private static final int Q8_K_D = 0, Q8_K_QS = 4;

    /** dequantize_row_q8_K. */
    private static void dequantizeQ8_K(byte[] b, float[] y, int yo) {
        float d = Float.intBitsToFloat(u32(b, Q8_K_D));
        for (int j = 0; j < 256; j++) y[yo + j] = d * b[Q8_K_QS + j];
    }
}
