package qtool.quantize;

import java.util.Random;

/** Random layers for GPTQ tests: weights, and inputs whose columns are correlated and unevenly scaled as LLM activations are. */
public final class GptqTestData {
    private GptqTestData() {}

    /** Gaussian W [out, in] times 0.02, a typical LLM weight scale. */
    public static float[] weights(int out, int in, long seed) {
        Random rnd = new Random(seed);
        float[] w = new float[out * in];
        for (int k = 0; k < w.length; k++) w[k] = (float) (rnd.nextGaussian() * 0.02);
        return w;
    }

    /**
     * X [rows, in] = Z·M with Z Gaussian and M = I + a dense random mix, columns scaled by log-normal factors: inputs
     * correlated across columns (what GPTQ exploits) with a few loud channels.
     */
    public static float[] correlatedInputs(int rows, int in, long seed) {
        Random rnd = new Random(seed);
        int rank = Math.max(4, in / 8);
        float[] mix = new float[rank * in];
        for (int k = 0; k < mix.length; k++) mix[k] = (float) rnd.nextGaussian();
        float[] colScale = new float[in];
        for (int i = 0; i < in; i++) colScale[i] = (float) Math.exp(rnd.nextGaussian() * 0.7);
        float[] x = new float[rows * in];
        float[] z = new float[rank];
        for (int t = 0; t < rows; t++) {
            for (int k = 0; k < rank; k++) z[k] = (float) rnd.nextGaussian();
            for (int i = 0; i < in; i++) {
                double v = 0.3 * rnd.nextGaussian();
                for (int k = 0; k < rank; k++) v += z[k] * mix[k * in + i] / Math.sqrt(rank);
                x[t * in + i] = (float) (v * colScale[i]);
            }
        }
        return x;
    }

    /** H = 2/rows · XᵀX through the running average. */
    public static float[] hessian(float[] x, int rows, int in) {
        float[] h = new float[in * in];
        Gptq.accumulateHessian(h, x, rows, in, 0);
        return h;
    }

    /** ‖(W − Q)·Xᵀ‖² over all rows, in double. */
    public static double proxyError(float[] w, float[] q, float[] x, int out, int in, int rows) {
        double total = 0;
        double[] d = new double[in];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) d[i] = (double) w[o * in + i] - q[o * in + i];
            for (int t = 0; t < rows; t++) {
                double s = 0;
                for (int i = 0; i < in; i++) s += d[i] * x[t * in + i];
                total += s * s;
            }
        }
        return total;
    }
}
