package qtool.format.exl2;

import java.util.SplittableRandom;
import java.util.stream.IntStream;
import qtool.format.gptq.RandomGptqLinear;
import qtool.quantize.Exl2Params;

/**
 * A random EXL2 linear for speed tests ({@code qtool synth --format exl2}): the tensors of {@link Exl2Layout} shaped
 * exactly as {@link Exl2Packer} writes a real quantization with the same option, without a float weight or
 * calibration. Codes are uniform over each group's grid, so q_weight is drawn as uniform random words; q_invperm is a
 * random permutation (act-order) drawn from {@code permSeed}, which linears reading one input share (in a real conversion
 * they share the Hessian the order comes from); sub-scales are random in 9..16 (padded columns 1, as ExLlamaV2 writes them) and each
 * group's super-scale makes a weight of sub-scale 13 have standard deviation {@code std} at the group's width.
 */
public final class RandomExl2Linear {
    private static final int TYPICAL_SUB_SCALE = 13;

    private RandomExl2Linear() {}

    /**
     * Linear {@code key} [out, in] quantized with {@code option}; {@code bias} ([out] floats) or null; {@code permSeed}
     * draws the input order.
     *
     * @throws qtool.QtoolException when the shape does not fit the layout (see {@link Exl2Params#requireStorable})
     */
    public static Exl2Packer.PackedLinear of(String key, int out, int in, Exl2Params option, double std, float[] bias, long seed,
                                            long permSeed) {
        option.requireStorable(in, out, key);
        int columns = Exl2Layout.paddedColumns(out);
        Exl2Params.GroupLayout layout = option.layout(in);
        int groups = layout.count();
        short[] qGroups = new short[2 * groups];
        short[] qScaleMax = new short[groups];
        for (int g = 0; g < groups; g++) {
            int bits = layout.bits()[g];
            qGroups[2 * g] = (short) bits;
            qGroups[2 * g + 1] = (short) layout.firstPackedRow(g);
            // w = (q − 2^(bits−1))·scale, q uniform: standard deviation scale·√((4^bits − 1)/12); scale = sub² · max/256
            double scale = std / Math.sqrt(((1L << (2 * bits)) - 1) / 12.0);
            qScaleMax[g] = Float.floatToFloat16((float) (scale * 256 / (TYPICAL_SUB_SCALE * TYPICAL_SUB_SCALE)));
        }
        int[] qWeight = RandomGptqLinear.randomWords((long) layout.totalPackedRows() * columns, seed);
        // stored sub-scale minus one: 8 | 3 random bits gives 9..16; nibbles of padded columns stay 0 (sub-scale 1)
        int[] qScale = RandomGptqLinear.randomWords((long) groups * columns / 8, ~seed);
        IntStream.range(0, groups).parallel().forEach(g -> {
            for (int w = 0; w < columns / 8; w++) {
                int word = 0x88888888 | (qScale[g * columns / 8 + w] & 0x77777777);
                int live = Math.min(8, Math.max(0, out - 8 * w));
                qScale[g * columns / 8 + w] = live == 8 ? word : word & ((1 << (4 * live)) - 1);
            }
        });
        int[] invperm = IntStream.range(0, in).toArray();
        RandomGptqLinear.shuffle(invperm, new SplittableRandom(permSeed));
        short[] b = null;
        if (bias != null) {
            b = new short[columns];
            for (int c = 0; c < out; c++) b[c] = Float.floatToFloat16(bias[c]);
        }
        return new Exl2Packer.PackedLinear(key, in, columns, qWeight, qScale, qScaleMax, qGroups, invperm, b);
    }
}
