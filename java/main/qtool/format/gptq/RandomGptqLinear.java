package qtool.format.gptq;

import java.util.SplittableRandom;
import java.util.stream.IntStream;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.quantize.GptqParams;

/**
 * A random GPTQ linear in checkpoint form, for speed tests of shapes nobody ships small ({@code qtool synth --format
 * gptq}): tensors shaped exactly as a real quantization with the same settings writes them, without a float weight
 * or calibration. Codes are uniform over the grid, so the packed words are uniform random bits and are drawn as such
 * (no per-code packing); the grid is symmetric (zero 2^(bits−1)), each group's scale random within ±25% of what
 * gives the weights standard deviation {@code std}; with act-order, g_idx follows a random processing order.
 */
public final class RandomGptqLinear {
    private static final int CHUNK = 1 << 16;

    private RandomGptqLinear() {}

    /** Linear {@code prefix} [out, in] at {@code p}'s bits, group size and act-order, stored in {@code format}. */
    public static GptqPacker.PackedLinear of(String prefix, int out, int in, GptqParams p, CheckpointFormat format, double std, long seed) {
        int bits = p.bits(), size = p.groupSize() > 0 ? p.groupSize() : in, groups = (in + size - 1) / size;
        long[] qweightShape = GptqLayout.qweightShape(in, out, bits, prefix);
        int[] qweight = randomWords(qweightShape[0] * qweightShape[1], seed);
        SplittableRandom rnd = new SplittableRandom(seed ^ 0x5DEECE66DL);
        // (code − z)·s with code uniform on 0..2^bits − 1 has standard deviation s·√((4^bits − 1)/12)
        double scale = std / Math.sqrt(((1L << (2 * bits)) - 1) / 12.0);
        float[] scales = new float[groups * out];
        for (int k = 0; k < scales.length; k++) scales[k] = Float.float16ToFloat(Float.floatToFloat16((float) (scale * (0.75 + 0.5 * rnd.nextDouble()))));
        int[] zeros = new int[groups * out];
        java.util.Arrays.fill(zeros, 1 << (bits - 1));
        int[] qzeros = GptqLayout.packZeros(zeros, groups, out, bits, format, prefix);
        int[] order = IntStream.range(0, in).toArray();
        if (p.actOrder()) shuffle(order, rnd);
        int[] gIdx = new int[in];
        for (int k = 0; k < in; k++) gIdx[order[k]] = k / size;
        return new GptqPacker.PackedLinear(prefix, in, out, bits, groups, qweight, qzeros, scales, gIdx, format, 0);
    }

    /** {@code n} uniformly random ints, filled in parallel chunks each seeded from {@code seed} and its index. */
    public static int[] randomWords(long n, long seed) {
        int[] words = new int[Math.toIntExact(n)];
        IntStream.range(0, (words.length + CHUNK - 1) / CHUNK).parallel().forEach(c -> {
            SplittableRandom rnd = new SplittableRandom(seed + 0x9E3779B97F4A7C15L * (c + 1));
            for (int i = c * CHUNK, end = Math.min(words.length, i + CHUNK); i < end; i++) words[i] = rnd.nextInt();
        });
        return words;
    }

    /** Fisher–Yates shuffle in place. */
    public static void shuffle(int[] a, SplittableRandom rnd) {
        for (int i = a.length - 1; i > 0; i--) {
            int j = rnd.nextInt(i + 1), t = a[i];
            a[i] = a[j];
            a[j] = t;
        }
    }
}
