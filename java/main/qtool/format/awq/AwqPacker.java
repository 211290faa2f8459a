package qtool.format.awq;

import qtool.QtoolException;
import qtool.quantize.AwqResult;

/** Packs AWQ codes, zeros and scales into the tensors of {@link AwqLayout} and back; dequantizes packed linears. */
public final class AwqPacker {
    private AwqPacker() {}

    /**
     * One linear in checkpoint form, arrays row-major in the shapes of {@link AwqLayout}.
     *
     * @param qweight [in, out/8]
     * @param qzeros  [groups, out/8]
     * @param scales  [groups, out], each exactly representable in fp16
     */
    public record PackedLinear(String prefix, int in, int out, int groups, int[] qweight, int[] qzeros, float[] scales) {
        public PackedLinear {
            if (qweight.length != (long) in * out / AwqLayout.PACK || qzeros.length != (long) groups * out / AwqLayout.PACK
                    || scales.length != (long) groups * out) {
                throw new IllegalArgumentException(prefix + ": packed arrays do not match in=" + in + ", out=" + out + ", groups=" + groups);
            }
        }

        public int groupWidth() {
            return in / groups;
        }

        /** Code of output o, input i. */
        public int code(int o, int i) {
            return get(qweight, i, o);
        }

        public int zero(int g, int o) {
            return get(qzeros, g, o);
        }

        private int get(int[] words, int row, int o) {
            int word = words[row * (out / AwqLayout.PACK) + o / AwqLayout.PACK];
            return AwqLayout.field(word, POSITION[o % AwqLayout.PACK]);
        }

        public short[] scalesF16() {
            short[] h = new short[scales.length];
            for (int k = 0; k < h.length; k++) h[k] = Float.floatToFloat16(scales[k]);
            return h;
        }
    }

    /** POSITION[r]: the field of a word that holds output 8j + r (the inverse of ORDER). */
    private static final int[] POSITION = new int[AwqLayout.PACK];

    static {
        for (int k = 0; k < AwqLayout.PACK; k++) POSITION[AwqLayout.ORDER[k]] = k;
    }

    /** Packs a result; a shape the layout cannot hold is a QtoolException naming the linear. */
    public static PackedLinear pack(String prefix, AwqResult r) {
        String why = AwqLayout.unpackableReason(r.out(), r.in(), r.params().bits(), r.params().groupSize());
        if (why != null) throw new QtoolException(prefix + ": " + why);
        int out = r.out(), in = r.in(), groups = r.numGroups(), words = out / AwqLayout.PACK;
        int[] qweight = new int[in * words], qzeros = new int[groups * words];
        for (int i = 0; i < in; i++) {
            for (int j = 0; j < words; j++) {
                int word = 0;
                for (int k = 0; k < AwqLayout.PACK; k++) word |= r.code(j * AwqLayout.PACK + AwqLayout.ORDER[k], i) << (AwqLayout.BITS * k);
                qweight[i * words + j] = word;
            }
        }
        for (int g = 0; g < groups; g++) {
            for (int j = 0; j < words; j++) {
                int word = 0;
                for (int k = 0; k < AwqLayout.PACK; k++) word |= r.zeros()[g * out + j * AwqLayout.PACK + AwqLayout.ORDER[k]] << (AwqLayout.BITS * k);
                qzeros[g * words + j] = word;
            }
        }
        return new PackedLinear(prefix, in, out, groups, qweight, qzeros, r.scales().clone());
    }

    /** The float weight [out, in]: scales[i / g, o] · (q[o, i] − z[i / g, o]). */
    public static float[] dequantize(PackedLinear p) {
        int in = p.in(), out = p.out(), width = p.groupWidth();
        float[] w = new float[out * in];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                int g = i / width;
                w[o * in + i] = p.scales()[g * out + o] * (p.code(o, i) - p.zero(g, o));
            }
        }
        return w;
    }
}
