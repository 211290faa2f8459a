package qtool.quantize;

import java.util.Random;

/**
 * Timing of the CPU GPTQ on layer shapes, not a unit test:
 * {@code java -cp target/classes:target/test-classes qtool.quantize.GptqBench OUT IN [REPEATS]}.
 * H is a random SPD matrix made cheaply (no calibration pass), which is all the timing needs.
 */
public final class GptqBench {
    public static void main(String[] args) {
        int out = Integer.parseInt(args[0]), in = Integer.parseInt(args[1]);
        int repeats = args.length > 2 ? Integer.parseInt(args[2]) : 3;
        float[] w = GptqTestData.weights(out, in, 1);
        float[] h = randomSpd(in, 2);
        GptqParams p = GptqParams.of(4).withActOrder(true);
        for (int rep = 0; rep < repeats; rep++) {
            long t0 = System.nanoTime();
            float[] u = Gptq.upperFactorOfInverse(h, in, identity(in), new boolean[in], 0.01);
            long t1 = System.nanoTime();
            GptqResult r = Gptq.quantize(w, out, in, h, p);
            long t2 = System.nanoTime();
            System.out.printf("%d×%d: U %.3f s, whole GPTQ %.3f s (loss %.4g, %d threads)%n", out, in, (t1 - t0) / 1e9,
                    (t2 - t1) / 1e9, r.loss(), Runtime.getRuntime().availableProcessors());
            if (u[0] == 0) throw new AssertionError();
        }
    }

    static int[] identity(int n) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        return p;
    }

    /** A = B·Bᵀ/k + I/2 for a Gaussian B [n, k] with k = 64: SPD with a spread spectrum, built in O(n²k). */
    static float[] randomSpd(int n, long seed) {
        int k = 64;
        Random rnd = new Random(seed);
        float[] b = new float[n * k];
        for (int i = 0; i < b.length; i++) b[i] = (float) rnd.nextGaussian();
        float[] a = new float[n * n];
        java.util.stream.IntStream.range(0, n).parallel().forEach(i -> {
            for (int j = 0; j < n; j++) {
                float s = 0;
                for (int m = 0; m < k; m++) s += b[i * k + m] * b[j * k + m];
                a[i * n + j] = s / k + (i == j ? 0.5f : 0);
            }
        });
        return a;
    }
}
