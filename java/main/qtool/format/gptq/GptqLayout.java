package qtool.format.gptq;

import qtool.QtoolException;

/**
 * The GPTQ checkpoint layout of AutoGPTQ / GPTQModel (their {@code qlinear} {@code pack()}), written down in one
 * place. Each quantized linear {@code prefix} (e.g. {@code model.layers.0.self_attn.q_proj}, W of HF shape
 * [out, in]) is stored as:
 *
 * <table>
 *   <caption>Tensors of one GPTQ linear</caption>
 *   <tr><th>tensor</th><th>dtype</th><th>shape</th><th>content</th></tr>
 *   <tr><td>{@code prefix.qweight}</td><td>I32</td><td>[in·bits/32, out]</td>
 *       <td>codes q[i, o] packed along the INPUT dim: column o is a little-endian bit stream of in fields of
 *       {@code bits} bits, input i at stream bits [i·bits, i·bits + bits). 2/4/8-bit: 32/bits inputs per word, input
 *       i in word i·bits/32 at bit (i·bits) mod 32. 3-bit: 32 inputs per 3 words (a 96-bit stream); inputs 10 and 21
 *       straddle words (bits 30–31 | 0 and bit 31 | 1–2).</td></tr>
 *   <tr><td>{@code prefix.qzeros}</td><td>I32</td><td>[groups, out·bits/32]</td>
 *       <td>zero points z[g, o] packed the same way along the OUTPUT dim of each group row. v1 ({@code "gptq"})
 *       stores (z − 1) mod 2^bits per field and readers add 1 back; v2 ({@code "gptq_v2"}) stores z.</td></tr>
 *   <tr><td>{@code prefix.scales}</td><td>F16</td><td>[groups, out]</td><td>scale s[g, o]</td></tr>
 *   <tr><td>{@code prefix.g_idx}</td><td>I32</td><td>[in]</td>
 *       <td>group of each input; i / group_size without act-order (or with static groups); with act-order the
 *       group follows the quantization order. Absent in some old checkpoints: then i / group_size.</td></tr>
 *   <tr><td>{@code prefix.bias}</td><td>F16</td><td>[out]</td><td>optional, unquantized</td></tr>
 * </table>
 *
 * Dequantized weight: w[o, i] = s[g, o] · (q[i, o] − z[g, o]) with g = g_idx[i]; groups = ceil(in / group_size)
 * (1 for group_size −1, the last group ragged when in is not a multiple).
 *
 * <p>Constraint: the packed dims must fill whole words, i.e. in·bits and out·bits multiples of 32: in and out
 * multiples of 16 (2-bit), 32 (3-bit), 8 (4-bit), 4 (8-bit). (Most inference kernels want in % 32 == 0 at every
 * width, and some more; that is theirs to check.)
 *
 * <p>v1 and zero = 0: a v1 field cannot hold z = 0 (it stores 2^bits − 1, which kernels read back as 2^bits).
 * AutoGPTQ's packer even ORs the unmasked −1 into the word, setting every higher field of that word too; here the
 * field alone wraps. It happens only with asymmetric grids (symmetric zeros are 2^(bits−1)); v2 has no such case,
 * which is why it exists. {@link GptqPacker.PackedLinear#v1WrappedZeros} counts them.
 */
public final class GptqLayout {
    public static final String QWEIGHT = "qweight";
    public static final String QZEROS = "qzeros";
    public static final String SCALES = "scales";
    public static final String G_IDX = "g_idx";
    public static final String BIAS = "bias";

    private GptqLayout() {}

    /** The {@code checkpoint_format} of a GPTQ checkpoint: how qzeros hold the zero points. */
    public enum CheckpointFormat {
        /** v1, AutoGPTQ's original: each field holds z − 1. */
        GPTQ("gptq"),
        /** v2, GPTQModel's: each field holds z. */
        GPTQ_V2("gptq_v2");

        public final String configName;

        CheckpointFormat(String configName) {
            this.configName = configName;
        }

        /** From a config's {@code checkpoint_format} (absent: v1, the format of every checkpoint before v2). */
        public static CheckpointFormat fromConfig(String name, String where) {
            if (name == null) return GPTQ;
            for (CheckpointFormat f : values()) {
                if (f.configName.equalsIgnoreCase(name.trim())) return f;
            }
            throw new QtoolException(where + ": checkpoint_format '" + name + "' is not supported (qtool reads \"gptq\" and \"gptq_v2\")");
        }

        /** The field value stored for zero point z: (z − 1) mod 2^bits for v1, z for v2. */
        public int storedZero(int z, int bits) {
            return this == GPTQ ? (z - 1) & ((1 << bits) - 1) : z;
        }

        /** The zero point a reader takes from a field: field + 1 for v1 (as GPTQ kernels do), the field for v2. */
        public int zeroFromStored(int field) {
            return this == GPTQ ? field + 1 : field;
        }
    }

    /** Words per packed line of n fields, or a QtoolException naming the tensor when n fields do not fill words. */
    public static int packedWords(int n, int bits, String tensor, String dim) {
        if ((long) n * bits % 32 != 0) {
            throw new QtoolException(tensor + ": " + dim + " = " + n + " cannot be packed at " + bits + " bits: GPTQ packs "
                    + dim + " into whole 32-bit words, so " + dim + " must be a multiple of " + 32 / gcd(32, bits));
        }
        return (int) ((long) n * bits / 32);
    }

    /** Whether a linear [out, in] packs at this width (in·bits and out·bits fill whole words). */
    public static boolean packable(int in, int out, int bits) {
        return (long) in * bits % 32 == 0 && (long) out * bits % 32 == 0;
    }

    /**
     * Bits a linear [out, in] takes in a checkpoint at this width, bias aside: qweight, qzeros, scales and g_idx, or,
     * where the shape does not pack, its fp16 weight (how the converters store such a linear).
     */
    public static long checkpointBits(int in, int out, int bits, int groups) {
        if (!packable(in, out, bits)) return 16L * in * out;
        return (long) in * out * bits + (long) groups * out * bits + 16L * groups * out + 32L * in;
    }

    /** Shape of {@code qweight}: [in·bits/32, out]. */
    public static long[] qweightShape(int in, int out, int bits, String prefix) {
        return new long[] {packedWords(in, bits, prefix + "." + QWEIGHT, "in_features"), out};
    }

    /** Shape of {@code qzeros}: [groups, out·bits/32]. */
    public static long[] qzerosShape(int groups, int out, int bits, String prefix) {
        return new long[] {groups, packedWords(out, bits, prefix + "." + QZEROS, "out_features")};
    }

    /**
     * The {@code qzeros} words [groups, out·bits/32] holding zero points {@code zeros} [groups, out] in {@code format}'s
     * convention (each already valid for it: 1..2^bits for v1, 0..2^bits − 1 for v2); a QtoolException naming the
     * tensor when out does not fill whole words.
     */
    public static int[] packZeros(int[] zeros, int groups, int out, int bits, CheckpointFormat format, String prefix) {
        int wordsPerRow = (int) qzerosShape(groups, out, bits, prefix)[1];
        int[] qzeros = new int[groups * wordsPerRow];
        for (int g = 0; g < groups; g++) {
            for (int o = 0; o < out; o++) putField(qzeros, g * wordsPerRow, 1, o, bits, format.storedZero(zeros[g * out + o], bits));
        }
        return qzeros;
    }

    /** g_idx of a checkpoint without one: i / groupSize (all 0 for −1). */
    public static int[] defaultGIdx(int in, int groupSize) {
        int[] g = new int[in];
        if (groupSize > 0) for (int i = 0; i < in; i++) g[i] = i / groupSize;
        return g;
    }

    /**
     * Writes field {@code index} of a packed line: the line's words are {@code words[base + k·stride]}, k = 0, 1, …
     * (stride = out for qweight, whose lines run down the rows; 1 for qzeros). The field must be zero before.
     */
    static void putField(int[] words, int base, int stride, int index, int bits, int value) {
        long bit = (long) index * bits;
        int word = (int) (bit >>> 5), shift = (int) (bit & 31);
        words[base + word * stride] |= value << shift;
        if (shift + bits > 32) words[base + (word + 1) * stride] |= value >>> (32 - shift);
    }

    /** Reads field {@code index} of a packed line laid out as in {@link #putField}. */
    static int getField(int[] words, int base, int stride, int index, int bits) {
        long bit = (long) index * bits;
        int word = (int) (bit >>> 5), shift = (int) (bit & 31);
        int v = words[base + word * stride] >>> shift;
        if (shift + bits > 32) v |= words[base + (word + 1) * stride] << (32 - shift);
        return v & ((1 << bits) - 1);
    }

    private static int gcd(int a, int b) {
        return b == 0 ? a : gcd(b, a % b);
    }
}
