package qtool.backend;

import java.util.Random;
import java.util.stream.IntStream;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker;
import qtool.format.gptq.GptqPacker.PackedLinear;

/**
 * A random GPTQ linear for kernel checks: its unpacked parts and the packed form, with act-order (a random processing
 * order, g_idx following it) or without.
 *
 * @param codes  [out, in]
 * @param scales [groups, out], fp16 values
 * @param zeros  [groups, out] as readers see them
 */
record RandomGptq(int out, int in, byte[] codes, float[] scales, int[] zeros, int[] gIdx, PackedLinear packed) {

    static RandomGptq of(Random random, int out, int in, int bits, int groupSize, boolean actOrder, CheckpointFormat format) {
        int maxq = (1 << bits) - 1, size = groupSize > 0 ? groupSize : in, groups = (in + size - 1) / size;
        byte[] codes = new byte[out * in];
        for (int k = 0; k < codes.length; k++) codes[k] = (byte) random.nextInt(maxq + 1);
        float[] scales = new float[groups * out];
        int[] zeros = new int[groups * out];
        for (int k = 0; k < scales.length; k++) {
            scales[k] = Float.float16ToFloat(Float.floatToFloat16((float) (0.02 * (0.5 + random.nextDouble()))));
            zeros[k] = format == CheckpointFormat.GPTQ ? 1 + random.nextInt(maxq) : random.nextInt(maxq + 1);  // v1 holds 1..maxq
        }
        int[] order = new int[in];
        for (int i = 0; i < in; i++) order[i] = i;
        if (actOrder) {
            for (int i = in - 1; i > 0; i--) {
                int j = random.nextInt(i + 1), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        int[] gIdx = new int[in];
        for (int k = 0; k < in; k++) gIdx[order[k]] = k / size;
        PackedLinear packed = GptqPacker.pack("random", out, in, bits, codes, scales, zeros, gIdx, format);
        return new RandomGptq(out, in, codes, scales, zeros, gIdx, packed);
    }

    /** y [rows, out] = x [rows, in] · Wᵀ in double, W from the unpacked parts. */
    double[] reference(float[] x, int rows) {
        double[] y = new double[rows * out];
        IntStream.range(0, out).parallel().forEach(o -> {
            double[] w = new double[in];
            for (int i = 0; i < in; i++) {
                int g = gIdx[i] * out + o;
                w[i] = (double) scales[g] * ((codes[o * in + i] & 0xFF) - zeros[g]);
            }
            for (int r = 0; r < rows; r++) {
                double acc = 0;
                for (int i = 0; i < in; i++) acc += x[r * in + i] * w[i];
                y[r * out + o] = acc;
            }
        });
        return y;
    }
}
