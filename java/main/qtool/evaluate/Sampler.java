package qtool.evaluate;

import java.util.Arrays;
import java.util.SplittableRandom;

/** Picks the next token from logits: greedy (argmax), or temperature with nucleus (top-p) sampling. */
public final class Sampler {
    private final float temperature, topP;
    private final SplittableRandom random;

    public Sampler(float temperature, float topP, long seed) {
        this.temperature = temperature;
        this.topP = topP;
        this.random = new SplittableRandom(seed);
    }

    public static Sampler greedy() {
        return new Sampler(0, 1, 0);
    }

    public int sample(float[] logits) {
        if (temperature <= 0) return argmax(logits);
        int n = logits.length;
        float max = logits[argmax(logits)];
        double[] p = new double[n];
        double sum = 0;
        for (int i = 0; i < n; i++) sum += p[i] = Math.exp((logits[i] - max) / temperature);
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> Double.compare(p[b], p[a]));
        double kept = 0;
        int cut = 0;
        while (cut < n && kept < topP * sum) kept += p[order[cut++]];
        double r = random.nextDouble() * kept;
        for (int i = 0; i < cut; i++) {
            r -= p[order[i]];
            if (r <= 0) return order[i];
        }
        return order[cut - 1];
    }

    public static int argmax(float[] x) {
        int best = 0;
        for (int i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
        return best;
    }
}
