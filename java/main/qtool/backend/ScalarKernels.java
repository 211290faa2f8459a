package qtool.backend;

/**
 * {@link CpuKernels} in plain Java, for JVMs started without the Vector API module. Sums of products keep several
 * independent partial sums where order does not matter to the contract (the JIT keeps float adds in program order,
 * so one chain would be bound by the add latency).
 */
final class ScalarKernels implements CpuKernels {
    private static final int PANEL = 8;

    @Override
    public String describe() {
        return "scalar; start java with --add-modules jdk.incubator.vector for SIMD";
    }

    @Override
    public int panelWidth() {
        return PANEL;
    }

    @Override
    public void tile(float[] a, int ao, int lda, int mr, float[] b, int bo, int k, float[] c, int co, int ldc, int nc) {
        for (int r = 0; r < mr; r++) {
            int ar = ao + r * lda;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
            for (int i = 0, bi = bo; i < k; i++, bi += PANEL) {
                float x = a[ar + i];
                s0 += x * b[bi];
                s1 += x * b[bi + 1];
                s2 += x * b[bi + 2];
                s3 += x * b[bi + 3];
                s4 += x * b[bi + 4];
                s5 += x * b[bi + 5];
                s6 += x * b[bi + 6];
                s7 += x * b[bi + 7];
            }
            int cr = co + r * ldc;
            c[cr] = s0;
            if (nc > 1) c[cr + 1] = s1;
            if (nc > 2) c[cr + 2] = s2;
            if (nc > 3) c[cr + 3] = s3;
            if (nc > 4) c[cr + 4] = s4;
            if (nc > 5) c[cr + 5] = s5;
            if (nc > 6) c[cr + 6] = s6;
            if (nc > 7) c[cr + 7] = s7;
        }
    }

    @Override
    public float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 3 < n; i += 4) {
            s0 += a[ao + i] * b[bo + i];
            s1 += a[ao + i + 1] * b[bo + i + 1];
            s2 += a[ao + i + 2] * b[bo + i + 2];
            s3 += a[ao + i + 3] * b[bo + i + 3];
        }
        for (; i < n; i++) s0 += a[ao + i] * b[bo + i];
        return (s0 + s1) + (s2 + s3);
    }

    @Override
    public float sumSquares(float[] x, int xo, int n) {
        return dot(x, xo, x, xo, n);
    }

    @Override
    public void scaleMul(float[] out, int oo, float[] x, int xo, float inv, float[] w, int wo, int n) {
        for (int i = 0; i < n; i++) out[oo + i] = w[wo + i] * (x[xo + i] * inv);
    }

    @Override
    public void add(float[] a, int ao, float[] b, int bo, int n) {
        for (int i = 0; i < n; i++) a[ao + i] += b[bo + i];
    }

    @Override
    public void siluMul(float[] out, int oo, float[] g, int go, float[] u, int uo, int n) {
        for (int i = 0; i < n; i++) {
            float x = g[go + i];
            out[oo + i] = x / (1f + (float) Math.exp(-x)) * u[uo + i];
        }
    }

    @Override
    public float max(float[] a, int ao, int n) {
        float m = Float.NEGATIVE_INFINITY;
        for (int i = 0; i < n; i++) m = Math.max(m, a[ao + i]);
        return m;
    }

    @Override
    public void softmaxColumns(float[] s, int so, int rows, float scale, float[] sums, int sumOff) {
        for (int j = 0; j < PANEL; j++) {
            float max = Float.NEGATIVE_INFINITY;
            for (int p = 0; p < rows; p++) max = Math.max(max, s[so + p * PANEL + j]);
            max *= scale;
            float sum = 0;
            for (int p = 0; p < rows; p++) {
                float e = (float) Math.exp(s[so + p * PANEL + j] * scale - max);
                s[so + p * PANEL + j] = e;
                sum += e;
            }
            sums[sumOff + j] = sum;
        }
    }

    @Override
    public double expSum(float[] a, int ao, int n, float shift) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += Math.exp(a[ao + i] - shift);
        return sum;
    }
}
