package qtool.backend;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.function.UnaryOperator;
import java.util.stream.IntStream;
import qtool.QtoolException;
import qtool.ffi.qt_qmatrix;
import qtool.format.exl2.Exl2Packer;
import qtool.format.gptq.GptqPacker;
import qtool.load.DType;

/**
 * One quantized linear W [out, in] in the layout the qt_qmatrix kernels read (native/include/qtool.h, where the
 * layout is written down), as Java arrays on the host. GPTQ and EXL2 linears are converted to it once, at load;
 * the one-time reshuffles happen here, so the kernels see one format.
 *
 * <p>Inputs are processed in units of 32 rows. Unit u covers processing rows 32u … 32u + 31, which are the inputs
 * {@code perm[32u + j]} (input 32u + j when perm is null); {@code units[2u]} is the first row of qweight holding
 * its codes, {@code units[2u + 1] = group << 8 | bits}. The unit's codes take {@code bits} consecutive rows of
 * qweight: per output column one little-endian stream of 32 fields, field j at bit j·bits. Then
 * {@code W[o, perm[32u + j]] = scales[g, o] · (q − z)}, z = zeros[g, o], or 2^(bits−1) when zeros is null.
 *
 * @param qweight codes [qrows, out]
 * @param units   [in / 32, 2]
 * @param scales  fp16 bit patterns [groups, out]
 * @param zeros   fp16 bit patterns of integers [groups, out], or null (symmetric: 2^(bits−1))
 * @param perm    input of each processing row [in], or null (identity)
 */
public record QMatrix(int in, int out, int groups, int qrows, int[] qweight, int[] units, short[] scales, short[] zeros,
                      int[] perm) {

    public QMatrix {
        requireShape(in, out);
        if (qweight.length != (long) qrows * out || units.length != in / 16 || scales.length != (long) groups * out
                || zeros != null && zeros.length != scales.length || perm != null && perm.length != in) {
            throw new IllegalArgumentException("inconsistent QMatrix arrays for " + out + "×" + in + ", " + groups + " groups, "
                    + qrows + " packed rows");
        }
    }

    /**
     * From a GPTQ linear. Without act-order (g_idx non-decreasing) qweight is kept as stored; with act-order the
     * inputs are sorted stably by g_idx (perm) and their codes repacked in that order. Zero points become fp16
     * integers as a reader sees them (v1: field + 1), or null when all equal 2^(bits−1).
     *
     * @throws IllegalArgumentException when the linear does not fit the kernel layout (in not a multiple of 32, out not
     *                                  a multiple of 8, or a unit of 32 processing rows spanning two groups): the
     *                                  caller dequantizes it instead
     */
    public static QMatrix fromGptq(GptqPacker.PackedLinear p) {
        int in = p.in(), out = p.out(), bits = p.bits();
        requireShape(in, out);
        int[] gIdx = p.gIdx();
        int[] order = IntStream.range(0, in).boxed().sorted((a, b) -> Integer.compare(gIdx[a], gIdx[b]))
                .mapToInt(Integer::intValue).toArray();  // a stable sort: ties keep input order
        boolean identity = true;
        for (int k = 0; k < in; k++) identity &= order[k] == k;
        int[] units = new int[in / 16];
        for (int u = 0; u < in / 32; u++) {
            int g = gIdx[order[32 * u]];
            for (int j = 1; j < 32; j++) {
                if (gIdx[order[32 * u + j]] != g) {
                    throw new IllegalArgumentException("inputs " + 32 * u + ".." + (32 * u + 31) + " (in group order) span groups " + g
                            + " and " + gIdx[order[32 * u + j]] + "; the kernels take one group per 32 inputs");
                }
            }
            units[2 * u] = u * bits;
            units[2 * u + 1] = g << 8 | bits;
        }
        int qrows = in * bits / 32;
        int[] qweight;
        if (identity) {
            qweight = p.qweight().clone();
        } else {
            qweight = new int[qrows * out];
            IntStream.range(0, in / 32).parallel().forEach(u -> {
                for (int o = 0; o < out; o++) {
                    for (int j = 0; j < 32; j++) put(qweight, out, u * bits, j, o, bits, p.code(order[32 * u + j], o));
                }
            });
        }
        short[] scales = new short[p.groups() * out];
        short[] zeros = new short[scales.length];
        boolean symmetric = true;
        for (int g = 0; g < p.groups(); g++) {
            for (int o = 0; o < out; o++) {
                int z = p.zero(g, o);
                symmetric &= z == 1 << (bits - 1);
                scales[g * out + o] = Float.floatToFloat16(p.scale(g, o));
                zeros[g * out + o] = Float.floatToFloat16(z);
            }
        }
        return new QMatrix(in, out, p.groups(), qrows, qweight, units, scales, symmetric ? null : zeros, identity ? null : order);
    }

    /**
     * From an EXL2 linear with {@code out} real outputs: q_weight as stored; each 32-row unit of group g at g's first
     * packed row + k·bits for its k-th unit; scales fp16(fp16((q_scale + 1)²) · fp16(q_scale_max / 256)) as
     * ExLlamaV2 makes them; no zeros (2^(bits−1)); perm = argsort(q_invperm) (null when that is the identity).
     *
     * @throws IllegalArgumentException when the linear does not fit the kernel layout (out is not the stored, padded
     *                                  width; a group of 16 rows, which 2-bit EXL2 allows), so the caller dequantizes
     * @throws QtoolException           when the tensors are malformed (as {@link Exl2Packer#dequantize} checks them)
     */
    public static QMatrix fromExl2(Exl2Packer.PackedLinear p, int out) {
        int in = p.in(), columns = p.columns();
        if (out != columns) {
            throw new IllegalArgumentException(out + " outputs are stored padded to " + columns + " columns; the kernels take unpadded matrices");
        }
        requireShape(in, out);
        int[] rows = Exl2Packer.groupRows(p);
        int groups = rows.length;
        int[] units = new int[in / 16];
        int u = 0;
        for (int g = 0; g < groups; g++) {
            int bits = p.qGroups()[2 * g], first = p.qGroups()[2 * g + 1] & 0xFFFF;
            if (rows[g] % 32 != 0) {
                throw new IllegalArgumentException("group " + g + " (" + bits + "-bit) has " + rows[g] + " rows; the kernels take one group per 32 rows");
            }
            for (int k = 0; k < rows[g] / 32; k++, u++) {
                units[2 * u] = first + k * bits;
                units[2 * u + 1] = g << 8 | bits;
            }
        }
        short[] scales = new short[groups * out];
        for (int g = 0; g < groups; g++) {
            float scaleMax = Float.float16ToFloat(p.qScaleMax()[g]);
            for (int c = 0; c < out; c++) {
                int qs = ((p.qScale()[(g * columns + c) / 8] >>> (4 * (c & 7))) & 15) + 1;
                scales[g * out + c] = Float.floatToFloat16(qtool.quantize.Exl2Tensor.subScale(qs, scaleMax));
            }
        }
        int[] perm = new int[in];
        java.util.Arrays.fill(perm, -1);
        boolean identity = true;
        for (int i = 0; i < in; i++) {
            int k = p.qInvperm()[i];
            if (k < 0 || k >= in || perm[k] != -1) throw new QtoolException(p.key() + ": q_invperm is not a permutation of 0.." + (in - 1));
            perm[k] = i;
            identity &= k == i;
        }
        return new QMatrix(in, out, groups, p.packedRows(), p.qWeight().clone(), units, scales, null, identity ? null : perm);
    }

    private static void requireShape(int in, int out) {
        if (in <= 0 || in % 32 != 0) throw new IllegalArgumentException("in_features " + in + " is not a positive multiple of 32");
        if (out <= 0 || out % 8 != 0) throw new IllegalArgumentException("out_features " + out + " is not a positive multiple of 8");
    }

    /**
     * W [out, in] in the original input order, each value scales · (q − z) in F32 (what qt_qmatrix_dequant rounds
     * once to F16): the reference of the kernel layout.
     */
    public float[] dequantize() {
        float[] w = new float[out * in];
        IntStream.range(0, in / 32).parallel().forEach(u -> {
            int first = units[2 * u], g = units[2 * u + 1] >>> 8, bits = units[2 * u + 1] & 0xFF;
            for (int o = 0; o < out; o++) {
                float s = Float.float16ToFloat(scales[g * out + o]);
                float z = zeros == null ? 1 << (bits - 1) : Float.float16ToFloat(zeros[g * out + o]);
                for (int j = 0; j < 32; j++) {
                    int row = 32 * u + j, input = perm == null ? row : perm[row];
                    w[o * in + input] = s * (get(qweight, out, first, j, o, bits) - z);
                }
            }
        });
        return w;
    }

    /**
     * The same matrix with its outputs reordered: output o of the result is output {@code rows[o]} of this one (the
     * qweight, scale and zero columns moved; a one-time reshuffle at load, see {@code LlamaModel.layer}).
     */
    public QMatrix withOutputOrder(int[] rows) {
        if (rows.length != out) throw new IllegalArgumentException(rows.length + " output rows for " + out + " outputs");
        boolean[] seen = new boolean[out];
        for (int r : rows) {
            if (r < 0 || r >= out || seen[r]) throw new IllegalArgumentException("output order is not a permutation of 0.." + (out - 1));
            seen[r] = true;
        }
        return new QMatrix(in, out, groups, qrows, columns(qweight, rows), units, columns(scales, rows),
                zeros == null ? null : columns(zeros, rows), perm);
    }

    /** The same codes taking their inputs already in processing order: perm dropped (x must come gathered by it). */
    public QMatrix withoutPerm() {
        return new QMatrix(in, out, groups, qrows, qweight, units, scales, zeros, null);
    }

    private static int[] columns(int[] a, int[] order) {
        int n = order.length;
        int[] r = new int[a.length];
        for (int row = 0; row < a.length / n; row++) for (int c = 0; c < n; c++) r[row * n + c] = a[row * n + order[c]];
        return r;
    }

    private static short[] columns(short[] a, int[] order) {
        int n = order.length;
        short[] r = new short[a.length];
        for (int row = 0; row < a.length / n; row++) for (int c = 0; c < n; c++) r[row * n + c] = a[row * n + order[c]];
        return r;
    }

    /** Bytes a product reads: every array. */
    public long bytes() {
        return 4L * qweight.length + 4L * units.length + 2L * scales.length + (zeros == null ? 0 : 2L * zeros.length)
                + (perm == null ? 0 : 4L * perm.length);
    }

    /** A host {@link DType#QMATRIX} tensor [out, in]: a qt_qmatrix in {@code arena} pointing at arena copies of the arrays. */
    public Tensor toTensor(Arena arena) {
        UnaryOperator<MemorySegment> place = array -> arena.allocate(array.byteSize(), 16).copyFrom(array);
        MemorySegment s = qt_qmatrix.allocate(arena);
        qt_qmatrix.qweight(s, place.apply(MemorySegment.ofArray(qweight)));
        qt_qmatrix.units(s, place.apply(MemorySegment.ofArray(units)));
        qt_qmatrix.scales(s, place.apply(MemorySegment.ofArray(scales)));
        qt_qmatrix.zeros(s, zeros == null ? MemorySegment.NULL : place.apply(MemorySegment.ofArray(zeros)));
        qt_qmatrix.perm(s, perm == null ? MemorySegment.NULL : place.apply(MemorySegment.ofArray(perm)));
        qt_qmatrix.in(s, in);
        qt_qmatrix.out(s, out);
        qt_qmatrix.groups(s, groups);
        qt_qmatrix.qrows(s, qrows);
        qt_qmatrix.uniform_bits(s, uniformBits());
        return new Tensor(s, DType.QMATRIX, new long[] {out, in});
    }

    /** Every unit's width when all units have the same one (GPTQ always), else 0: only mixed widths split the GEMV's inputs. */
    int uniformBits() {
        int bits = units[1] & 0xFF;
        for (int u = 1; u < in / 32; u++) if ((units[2 * u + 1] & 0xFF) != bits) return 0;
        return bits;
    }

    /** Bytes of a QMATRIX tensor's arrays (host or device), read from its struct. */
    public static long bytes(Tensor t) {
        long[] sizes = arrayBytes(t.data().reinterpret(qt_qmatrix.sizeof()));
        return java.util.Arrays.stream(sizes).sum();
    }

    /** Bytes of each array a qt_qmatrix struct points at, in field order (qweight, units, scales, zeros, perm); 0 for NULL. */
    static long[] arrayBytes(MemorySegment s) {
        long in = qt_qmatrix.in(s), out = qt_qmatrix.out(s), groups = qt_qmatrix.groups(s);
        return new long[] {qt_qmatrix.qrows(s) * out * 4, in / 32 * 8, groups * out * 2,
                qt_qmatrix.zeros(s).address() == 0 ? 0 : groups * out * 2, qt_qmatrix.perm(s).address() == 0 ? 0 : in * 4};
    }

    /**
     * Copies the struct {@code src} into {@code dst}, each non-NULL array replaced by {@code place(array, bytes)}: where
     * a copy of it lies (device memory, page-locked host memory).
     */
    static void copyStruct(MemorySegment src, MemorySegment dst, java.util.function.BiFunction<MemorySegment, Long, MemorySegment> place) {
        long[] sizes = arrayBytes(src);
        dst.copyFrom(src);
        MemorySegment[] arrays = {qt_qmatrix.qweight(src), qt_qmatrix.units(src), qt_qmatrix.scales(src), qt_qmatrix.zeros(src), qt_qmatrix.perm(src)};
        MemorySegment[] placed = new MemorySegment[arrays.length];
        for (int k = 0; k < arrays.length; k++) {
            placed[k] = arrays[k].address() == 0 ? MemorySegment.NULL : place.apply(arrays[k].reinterpret(sizes[k]), sizes[k]);
        }
        qt_qmatrix.qweight(dst, placed[0]);
        qt_qmatrix.units(dst, placed[1]);
        qt_qmatrix.scales(dst, placed[2]);
        qt_qmatrix.zeros(dst, placed[3]);
        qt_qmatrix.perm(dst, placed[4]);
    }

    /** The arrays of a host QMATRIX tensor (one whose struct points at host memory, as {@link #toTensor(Arena)} makes). */
    public static QMatrix read(Tensor host) {
        if (host.dtype() != DType.QMATRIX) throw new IllegalArgumentException("not a QMATRIX tensor: " + host);
        MemorySegment s = host.data().reinterpret(qt_qmatrix.sizeof());
        int in = qt_qmatrix.in(s), out = qt_qmatrix.out(s), groups = qt_qmatrix.groups(s), qrows = qt_qmatrix.qrows(s);
        MemorySegment zeros = qt_qmatrix.zeros(s), perm = qt_qmatrix.perm(s);
        return new QMatrix(in, out, groups, qrows,
                ints(qt_qmatrix.qweight(s), (long) qrows * out), ints(qt_qmatrix.units(s), in / 16),
                shorts(qt_qmatrix.scales(s), (long) groups * out),
                zeros.equals(MemorySegment.NULL) ? null : shorts(zeros, (long) groups * out),
                perm.equals(MemorySegment.NULL) ? null : ints(perm, in));
    }

    private static int[] ints(MemorySegment p, long n) {
        return p.reinterpret(4 * n).toArray(ValueLayout.JAVA_INT);
    }

    private static short[] shorts(MemorySegment p, long n) {
        return p.reinterpret(2 * n).toArray(ValueLayout.JAVA_SHORT);
    }

    /** Field j of the stream of column c that starts at row {@code firstRow} of a [rows, columns] word array. */
    static int get(int[] words, int columns, int firstRow, int j, int c, int bits) {
        int bit = j * bits, word = firstRow + (bit >>> 5), shift = bit & 31;
        long v = Integer.toUnsignedLong(words[word * columns + c]) >>> shift;
        if (shift + bits > 32) v |= Integer.toUnsignedLong(words[(word + 1) * columns + c]) << (32 - shift);
        return (int) (v & ((1L << bits) - 1));
    }

    /** Stores field j (zero before) of the stream of column c that starts at row {@code firstRow}. */
    private static void put(int[] words, int columns, int firstRow, int j, int c, int bits, int value) {
        int bit = j * bits, word = firstRow + (bit >>> 5), shift = bit & 31;
        words[word * columns + c] |= value << shift;
        if (shift + bits > 32) words[(word + 1) * columns + c] |= value >>> (32 - shift);
    }
}
