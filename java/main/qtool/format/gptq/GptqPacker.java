package qtool.format.gptq;

import java.util.stream.IntStream;
import qtool.QtoolException;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.quantize.GptqResult;

/**
 * Packs GPTQ codes, zeros, scales and g_idx into the tensors of {@link GptqLayout} and back, and dequantizes a
 * packed linear to a float weight [out, in] (HF orientation).
 */
public final class GptqPacker {
    private GptqPacker() {}

    /**
     * One linear in checkpoint form, arrays as stored (row-major in the shapes of {@link GptqLayout}).
     *
     * @param qweight        [in·bits/32, out]
     * @param qzeros         [groups, out·bits/32], zero points already in the {@code format}'s convention
     * @param scales         [groups, out] scales, each exactly representable in fp16 (stored as F16)
     * @param gIdx           [in]
     * @param v1WrappedZeros zero points equal to 0 written in v1, which v1 readers take as 2^bits (see
     *                       {@link GptqLayout}); always 0 for v2 and for what was read from disk
     */
    public record PackedLinear(String prefix, int in, int out, int bits, int groups, int[] qweight, int[] qzeros,
                               float[] scales, int[] gIdx, CheckpointFormat format, long v1WrappedZeros) {

        public PackedLinear {
            long[] qw = GptqLayout.qweightShape(in, out, bits, prefix);
            long[] qz = GptqLayout.qzerosShape(groups, out, bits, prefix);
            if (qweight.length != qw[0] * qw[1]) throw new IllegalArgumentException(prefix + ": qweight length " + qweight.length);
            if (qzeros.length != qz[0] * qz[1]) throw new IllegalArgumentException(prefix + ": qzeros length " + qzeros.length);
            if (scales.length != (long) groups * out) throw new IllegalArgumentException(prefix + ": scales length " + scales.length);
            if (gIdx.length != in) throw new IllegalArgumentException(prefix + ": g_idx length " + gIdx.length);
        }

        public long[] qweightShape() {
            return GptqLayout.qweightShape(in, out, bits, prefix);
        }

        public long[] qzerosShape() {
            return GptqLayout.qzerosShape(groups, out, bits, prefix);
        }

        /** Code of input i, output o. */
        public int code(int i, int o) {
            return GptqLayout.getField(qweight, o, out, i, bits);
        }

        /** Zero point of group g, output o, as a reader sees it (v1: field + 1). */
        public int zero(int g, int o) {
            int wordsPerRow = qzeros.length / groups;
            return format.zeroFromStored(GptqLayout.getField(qzeros, g * wordsPerRow, 1, o, bits));
        }

        public float scale(int g, int o) {
            return scales[g * out + o];
        }

        /** The scales as fp16 bit patterns, for writing. */
        public short[] scalesF16() {
            short[] half = new short[scales.length];
            for (int k = 0; k < half.length; k++) half[k] = Float.floatToFloat16(scales[k]);
            return half;
        }
    }

    /** Packs a GPTQ result for checkpoint {@code prefix}. */
    public static PackedLinear pack(String prefix, GptqResult r, CheckpointFormat format) {
        return pack(prefix, r.out(), r.in(), r.params().bits(), r.codes(), r.scales(), r.zeros(), r.gIdx(), format);
    }

    /**
     * Packs codes [out, in] (unsigned bytes), scales [groups, out] float, zeros [groups, out], gIdx [in].
     *
     * @throws QtoolException naming the tensor when in or out does not fill whole words at this width, or a scale
     *                        does not fit fp16
     */
    public static PackedLinear pack(String prefix, int out, int in, int bits, byte[] codes, float[] scales, int[] zeros,
                                    int[] gIdx, CheckpointFormat format) {
        int groups = scales.length / out;
        if (codes.length != (long) out * in || scales.length != (long) groups * out || zeros.length != scales.length || gIdx.length != in) {
            throw new IllegalArgumentException(prefix + ": inconsistent sizes for " + out + "×" + in);
        }
        long[] qwShape = GptqLayout.qweightShape(in, out, bits, prefix);
        long[] qzShape = GptqLayout.qzerosShape(groups, out, bits, prefix);
        int maxq = (1 << bits) - 1;

        // qweight: the lines run down the rows (stride out); a line's 32 inputs per `bits` words belong to one task.
        int[] qweight = new int[Math.toIntExact(qwShape[0] * qwShape[1])];
        int inputsPerTask = 32;
        IntStream.range(0, (in + inputsPerTask - 1) / inputsPerTask).parallel().forEach(task -> {
            int i0 = task * inputsPerTask, i1 = Math.min(i0 + inputsPerTask, in);
            for (int o = 0; o < out; o++) {
                for (int i = i0; i < i1; i++) {
                    int q = codes[o * in + i] & 0xFF;
                    if (q > maxq) throw new IllegalArgumentException(prefix + ": code " + q + " exceeds " + bits + " bits");
                    GptqLayout.putField(qweight, o, out, i, bits, q);
                }
            }
        });

        long wrapped = 0;
        for (int z : zeros) {
            if (z < 0 || z > maxq) throw new IllegalArgumentException(prefix + ": zero point " + z + " outside [0, " + maxq + "]");
            if (z == 0 && format == CheckpointFormat.GPTQ) wrapped++;
        }
        int[] qzeros = GptqLayout.packZeros(zeros, groups, out, bits, format, prefix);

        float[] half = new float[scales.length]; // rounded as the F16 tensor will hold them
        for (int k = 0; k < scales.length; k++) {
            half[k] = Float.float16ToFloat(Float.floatToFloat16(scales[k]));
            if (!Float.isFinite(half[k])) {
                throw new QtoolException(prefix + "." + GptqLayout.SCALES + ": scale " + scales[k] + " (group " + k / out
                        + ", output " + k % out + ") does not fit fp16");
            }
        }
        for (int g : gIdx) {
            if (g < 0 || g >= groups) throw new IllegalArgumentException(prefix + ": g_idx value " + g + " outside [0, " + groups + ")");
        }
        return new PackedLinear(prefix, in, out, bits, groups, qweight, qzeros, half, gIdx.clone(), format, wrapped);
    }

    /** The codes as [out, in] (HF orientation). */
    public static int[] unpackCodes(PackedLinear p) {
        int[] codes = new int[p.out() * p.in()];
        IntStream.range(0, p.out()).parallel().forEach(o -> {
            for (int i = 0; i < p.in(); i++) codes[o * p.in() + i] = p.code(i, o);
        });
        return codes;
    }

    /** The zero points as [groups, out], as a reader sees them. */
    public static int[] unpackZeros(PackedLinear p) {
        int[] z = new int[p.groups() * p.out()];
        for (int g = 0; g < p.groups(); g++) {
            for (int o = 0; o < p.out(); o++) z[g * p.out() + o] = p.zero(g, o);
        }
        return z;
    }

    /**
     * The float weight [out, in]: w[o, i] = scales[g, o] · (q[i, o] − z[g, o]), g = g_idx[i], computed in float32
     * from the stored (fp16) scales (GPTQ's torch kernels do the same product in fp16 and round it once more).
     */
    public static float[] dequantize(PackedLinear p) {
        int in = p.in(), out = p.out();
        for (int g : p.gIdx()) {
            if (g < 0 || g >= p.groups()) {
                throw new QtoolException(p.prefix() + "." + GptqLayout.G_IDX + ": group " + g + " outside [0, " + p.groups() + ")");
            }
        }
        float[] scales = p.scales();
        int[] zeros = unpackZeros(p);
        float[] w = new float[out * in];
        // A task per 32 inputs: it walks the packed rows in order and writes 32 consecutive floats per output.
        IntStream.range(0, (in + 31) / 32).parallel().forEach(task -> {
            int i0 = task * 32, i1 = Math.min(i0 + 32, in);
            for (int o = 0; o < out; o++) {
                for (int i = i0; i < i1; i++) {
                    int g = p.gIdx()[i] * out + o;
                    w[o * in + i] = scales[g] * (p.code(i, o) - zeros[g]);
                }
            }
        });
        return w;
    }
}
