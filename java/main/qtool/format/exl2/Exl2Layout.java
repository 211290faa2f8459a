package qtool.format.exl2;

/**
 * The EXL2 tensors of one quantized linear {@code key}, as ExLlamaV2 0.3.2 writes them (conversion/adaptivegptq.py
 * {@code pack}, ext {@code pack_rows_4} / {@code pack_columns}) and reads them (ext.py {@code make_q_matrix},
 * cuda/q_matrix.cu). The one place this layout is written down.
 *
 * <p>ExLlamaV2 sees the weight transposed: rows = input features in act-order (processing) order, columns = output
 * features padded to a multiple of 32 ({@code P = out + (−out mod 32)}; ExLlamaV2Linear pads the layer with zero
 * rows before quantizing, so a padded column quantizes to sub-scale 1 and code 2^(b−1), its bias value to 0). The
 * rows are split into groups (see {@link qtool.quantize.Exl2Params#layout}), stored in decreasing bit width.
 * <pre>
 *   key.q_invperm   I32 [in]            input feature i is processing row q_invperm[i] (the kernels use its inverse
 *                                       q_perm = argsort(q_invperm): processing row k is input q_perm[k]); 16-bit
 *                                       on load, so in ≤ 65536
 *   key.q_scale_max F16 [groups]        per-group super-scale; the loader multiplies it by 1/256 (in fp16)
 *   key.q_scale     I32 [groups, P/8]   4-bit sub-scales minus one, 8 columns per word, column c at bits 4·(c mod 8)
 *   key.q_groups    I16 [2·groups]      (bits, first packed row in q_weight) per group
 *   key.q_weight    I32 [packed, P]     codes, per column one little-endian bit stream per group: the group's row j
 *                                       at bit j·bits from its first packed row, so 2-bit: 16 rows a word, 3-bit: 32
 *                                       rows in 3 words, 4-bit: 8 a word, 5-bit: 32 in 5, 6-bit: 16 in 3, 8-bit: 4
 *   key.bias        F16 [P]             optional, zero-padded
 * </pre>
 * Reading: group g spans {@code (q_groups[2g+3] − q_groups[2g+1])·32/bits} rows, the last one the rows left;
 * {@code scale = fp16(fp16((q_scale + 1)²) · fp16(q_scale_max / 256))}, {@code w = fp16((q − 2^(bits−1)) · scale)}.
 * The kernels switch groups every 32 rows (2-bit: 16), so every group's rows are a multiple of that. On load the
 * kernels shuffle the words of q_weight into their own order; files hold the order above.
 */
public final class Exl2Layout {
    public static final String Q_WEIGHT = "q_weight";
    public static final String Q_INVPERM = "q_invperm";
    public static final String Q_SCALE = "q_scale";
    public static final String Q_SCALE_MAX = "q_scale_max";
    public static final String Q_GROUPS = "q_groups";
    public static final String BIAS = "bias";

    private Exl2Layout() {}

    /** Columns as stored: out padded to a multiple of 32. */
    public static int paddedColumns(int out) {
        return qtool.quantize.Exl2Params.paddedColumns(out);
    }

    /** Stores {@code code} as row {@code j} of a group stream starting at packed row {@code firstPacked}, column c. */
    static void put(int[] qWeight, int columns, int firstPacked, int j, int c, int bits, int code) {
        long bit = (long) j * bits;
        int word = firstPacked + (int) (bit >>> 5), shift = (int) (bit & 31);
        qWeight[word * columns + c] |= code << shift;
        if (shift + bits > 32) qWeight[(word + 1) * columns + c] |= code >>> (32 - shift);
    }

    /** Reads row {@code j} of a group stream (the inverse of {@link #put}). */
    static int get(int[] qWeight, int columns, int firstPacked, int j, int c, int bits) {
        long bit = (long) j * bits;
        int word = firstPacked + (int) (bit >>> 5), shift = (int) (bit & 31);
        long v = Integer.toUnsignedLong(qWeight[word * columns + c]) >>> shift;
        if (shift + bits > 32) v |= Integer.toUnsignedLong(qWeight[(word + 1) * columns + c]) << (32 - shift);
        return (int) (v & ((1L << bits) - 1));
    }
}
