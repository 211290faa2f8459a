package qtool.backend;

import java.util.Random;
import java.util.stream.IntStream;
import qtool.format.exl2.Exl2Packer;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;

/**
 * A random EXL2 linear for kernel checks, packed as ExLlamaV2 stores it: random codes at each group's width, sub-scales,
 * super-scales and a random act-order permutation, under one option's group layout (mixed widths).
 */
final class RandomExl2 {
    private RandomExl2() {}

    static Exl2Packer.PackedLinear of(Random random, int out, int in, String option) {
        Exl2Params params = Exl2Params.parse(option);
        Exl2Params.GroupLayout layout = params.layout(in);
        int groups = layout.count();
        int[] perm = IntStream.range(0, in).toArray();
        for (int i = in - 1; i > 0; i--) {
            int j = random.nextInt(i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        byte[] codes = new byte[in * out], qscale = new byte[groups * out];
        float[] qscaleMax = new float[groups];
        for (int g = 0; g < groups; g++) {
            qscaleMax[g] = Exl2Tensor.fp16((float) (0.05 * (0.5 + random.nextDouble())));
            for (int o = 0; o < out; o++) qscale[g * out + o] = (byte) (1 + random.nextInt(16));
            for (int k = layout.firstRow()[g]; k < layout.firstRow()[g] + layout.rows()[g]; k++) {
                for (int o = 0; o < out; o++) codes[k * out + o] = (byte) random.nextInt(1 << layout.bits()[g]);
            }
        }
        float[] dequantized = new float[out * in];
        for (int g = 0; g < groups; g++) {
            for (int k = layout.firstRow()[g]; k < layout.firstRow()[g] + layout.rows()[g]; k++) {
                for (int o = 0; o < out; o++) {
                    float scale = Exl2Tensor.subScale(qscale[g * out + o], qscaleMax[g]);
                    dequantized[o * in + perm[k]] = Exl2Tensor.dequantize(codes[k * out + o] & 0xFF, layout.bits()[g], scale);
                }
            }
        }
        Exl2Tensor t = new Exl2Tensor(out, in, params, layout, perm, codes, qscale, qscaleMax, dequantized, 0, 1);
        return Exl2Packer.pack("random", t, null);
    }
}
