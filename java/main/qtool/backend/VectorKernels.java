package qtool.backend;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * {@link CpuKernels} with the Vector API at the machine's preferred width (8 floats with AVX2, 16 with AVX-512).
 * Only {@link CpuKernels#load} names this class, and only when {@code jdk.incubator.vector} is in the boot layer:
 * loading it without the module would fail.
 *
 * <p>No vector crosses a method boundary here: every method takes arrays and returns scalars. A vector passed to a
 * method the JIT did not inline is boxed on the heap (tens of times slower), and the JIT stops inlining once a
 * compiled method grows large, which the Vector API's deep call trees make happen early.
 */
final class VectorKernels implements CpuKernels {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final int L = S.length();
    /** Two vectors of columns per micro-tile: 4 rows × 2 vectors = 8 accumulators, 4 broadcasts + 2 loads per step. */
    private static final int PANEL = 2 * L;

    @Override
    public String describe() {
        return "vector " + S.vectorBitSize() + "-bit";
    }

    @Override
    public int panelWidth() {
        return PANEL;
    }

    @Override
    public void tile(float[] a, int ao, int lda, int mr, float[] b, int bo, int k, float[] c, int co, int ldc, int nc) {
        if (mr == 4) {
            tile4(a, ao, lda, b, bo, k, c, co, ldc, nc);
        } else {
            for (int r = 0; r < mr; r++) tile1(a, ao + r * lda, b, bo, k, c, co + r * ldc, nc);
        }
    }

    /** The micro-kernel proper: 4 rows × PANEL columns held in 8 vector registers over the whole k loop. */
    private static void tile4(float[] a, int ao, int lda, float[] b, int bo, int k, float[] c, int co, int ldc, int nc) {
        FloatVector c00 = FloatVector.zero(S), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        int a0 = ao, a1 = ao + lda, a2 = a1 + lda, a3 = a2 + lda;
        for (int i = 0, bi = bo; i < k; i++, bi += PANEL) {
            FloatVector b0 = FloatVector.fromArray(S, b, bi), b1 = FloatVector.fromArray(S, b, bi + L);
            FloatVector x = FloatVector.broadcast(S, a[a0 + i]);
            c00 = b0.fma(x, c00);
            c01 = b1.fma(x, c01);
            x = FloatVector.broadcast(S, a[a1 + i]);
            c10 = b0.fma(x, c10);
            c11 = b1.fma(x, c11);
            x = FloatVector.broadcast(S, a[a2 + i]);
            c20 = b0.fma(x, c20);
            c21 = b1.fma(x, c21);
            x = FloatVector.broadcast(S, a[a3 + i]);
            c30 = b0.fma(x, c30);
            c31 = b1.fma(x, c31);
        }
        // Stores stay in this method: a helper taking vectors as arguments would not always be inlined, and then
        // every vector would be boxed on the heap.
        if (nc == PANEL) {
            c00.intoArray(c, co);
            c01.intoArray(c, co + L);
            c10.intoArray(c, co + ldc);
            c11.intoArray(c, co + ldc + L);
            c20.intoArray(c, co + 2 * ldc);
            c21.intoArray(c, co + 2 * ldc + L);
            c30.intoArray(c, co + 3 * ldc);
            c31.intoArray(c, co + 3 * ldc + L);
        } else { // a partial panel: whole vectors into a small array, then the columns that exist (masked stores are slow)
            float[] t = new float[4 * PANEL];
            c00.intoArray(t, 0);
            c01.intoArray(t, L);
            c10.intoArray(t, PANEL);
            c11.intoArray(t, PANEL + L);
            c20.intoArray(t, 2 * PANEL);
            c21.intoArray(t, 2 * PANEL + L);
            c30.intoArray(t, 3 * PANEL);
            c31.intoArray(t, 3 * PANEL + L);
            for (int r = 0; r < 4; r++) System.arraycopy(t, r * PANEL, c, co + r * ldc, nc);
        }
    }

    /** One row of a tile (the rows left over below a multiple of 4). */
    private static void tile1(float[] a, int ao, float[] b, int bo, int k, float[] c, int co, int nc) {
        FloatVector c0 = FloatVector.zero(S), c1 = c0;
        for (int i = 0, bi = bo; i < k; i++, bi += PANEL) {
            FloatVector x = FloatVector.broadcast(S, a[ao + i]);
            c0 = FloatVector.fromArray(S, b, bi).fma(x, c0);
            c1 = FloatVector.fromArray(S, b, bi + L).fma(x, c1);
        }
        if (nc == PANEL) {
            c0.intoArray(c, co);
            c1.intoArray(c, co + L);
        } else {
            float[] t = new float[PANEL];
            c0.intoArray(t, 0);
            c1.intoArray(t, L);
            System.arraycopy(t, 0, c, co, nc);
        }
    }

    @Override
    public float dot(float[] a, int ao, float[] b, int bo, int n) {
        FloatVector s0 = FloatVector.zero(S), s1 = s0, s2 = s0, s3 = s0;
        int i = 0;
        for (; i <= n - 4 * L; i += 4 * L) {
            s0 = FloatVector.fromArray(S, a, ao + i).fma(FloatVector.fromArray(S, b, bo + i), s0);
            s1 = FloatVector.fromArray(S, a, ao + i + L).fma(FloatVector.fromArray(S, b, bo + i + L), s1);
            s2 = FloatVector.fromArray(S, a, ao + i + 2 * L).fma(FloatVector.fromArray(S, b, bo + i + 2 * L), s2);
            s3 = FloatVector.fromArray(S, a, ao + i + 3 * L).fma(FloatVector.fromArray(S, b, bo + i + 3 * L), s3);
        }
        for (; i <= n - L; i += L) s0 = FloatVector.fromArray(S, a, ao + i).fma(FloatVector.fromArray(S, b, bo + i), s0);
        float[] lanes = new float[L];
        s0.add(s1).add(s2.add(s3)).intoArray(lanes, 0);
        float s = sumInOrder(lanes);
        for (; i < n; i++) s += a[ao + i] * b[bo + i];
        return s;
    }

    @Override
    public float sumSquares(float[] x, int xo, int n) {
        return dot(x, xo, x, xo, n);
    }

    @Override
    public void scaleMul(float[] out, int oo, float[] x, int xo, float inv, float[] w, int wo, int n) {
        int i = 0;
        for (; i <= n - L; i += L) {
            FloatVector.fromArray(S, x, xo + i).mul(inv).mul(FloatVector.fromArray(S, w, wo + i)).intoArray(out, oo + i);
        }
        for (; i < n; i++) out[oo + i] = w[wo + i] * (x[xo + i] * inv);
    }

    @Override
    public void add(float[] a, int ao, float[] b, int bo, int n) {
        int i = 0;
        for (; i <= n - L; i += L) {
            FloatVector.fromArray(S, a, ao + i).add(FloatVector.fromArray(S, b, bo + i)).intoArray(a, ao + i);
        }
        for (; i < n; i++) a[ao + i] += b[bo + i];
    }

    @Override
    public void siluMul(float[] out, int oo, float[] g, int go, float[] u, int uo, int n) {
        float[] e = new float[Math.min(n, CHUNK)];
        int i = 0;
        for (int m; (m = Math.min(CHUNK, (n - i) / L * L)) > 0; i += m) {
            exp(g, go + i, -1f, 0f, e, 0, m); // e^-x
            for (int j = 0; j < m; j += L) {
                FloatVector x = FloatVector.fromArray(S, g, go + i + j);
                x.div(FloatVector.fromArray(S, e, j).add(1f)).mul(FloatVector.fromArray(S, u, uo + i + j)).intoArray(out, oo + i + j);
            }
        }
        for (; i < n; i++) {
            float x = g[go + i];
            out[oo + i] = x / (1f + (float) Math.exp(-x)) * u[uo + i];
        }
    }

    @Override
    public float max(float[] a, int ao, int n) {
        float m = Float.NEGATIVE_INFINITY;
        int i = 0;
        if (n >= L) {
            FloatVector v = FloatVector.fromArray(S, a, ao);
            for (i = L; i <= n - L; i += L) v = v.max(FloatVector.fromArray(S, a, ao + i));
            m = v.reduceLanes(VectorOperators.MAX);
        }
        for (; i < n; i++) m = Math.max(m, a[ao + i]);
        return m;
    }

    @Override
    public void softmaxColumns(float[] s, int so, int rows, float scale, float[] sums, int sumOff) {
        FloatVector m0 = FloatVector.broadcast(S, Float.NEGATIVE_INFINITY), m1 = m0;
        for (int p = 0, i = so; p < rows; p++, i += PANEL) {
            m0 = m0.max(FloatVector.fromArray(S, s, i));
            m1 = m1.max(FloatVector.fromArray(S, s, i + L));
        }
        m0 = m0.mul(scale);
        m1 = m1.mul(scale);
        for (int p = 0, i = so; p < rows; p++, i += PANEL) {
            FloatVector.fromArray(S, s, i).mul(scale).sub(m0).intoArray(s, i);
            FloatVector.fromArray(S, s, i + L).mul(scale).sub(m1).intoArray(s, i + L);
        }
        exp(s, so, 1f, 0f, s, so, rows * PANEL);
        FloatVector s0 = FloatVector.zero(S), s1 = s0;
        for (int p = 0, i = so; p < rows; p++, i += PANEL) {
            s0 = s0.add(FloatVector.fromArray(S, s, i));
            s1 = s1.add(FloatVector.fromArray(S, s, i + L));
        }
        s0.intoArray(sums, sumOff);
        s1.intoArray(sums, sumOff + L);
    }

    /** Float sums per lane over chunks of {@link #CHUNK}, the chunks' totals added in double. */
    @Override
    public double expSum(float[] a, int ao, int n, float shift) {
        float[] e = new float[Math.min(n, CHUNK)];
        double sum = 0;
        int i = 0;
        for (int m; (m = Math.min(CHUNK, (n - i) / L * L)) > 0; i += m) {
            sum += exp(a, ao + i, 1f, shift, e, 0, m);
        }
        for (; i < n; i++) sum += Math.exp(a[ao + i] - shift);
        return sum;
    }

    /** Elements per pass of the kernels that go through {@link #exp} (a small array of them stays in L1). */
    private static final int CHUNK = 1024;
    private static final float LOG2E = 1.44269504f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
    /** 1.5 · 2^23: adding it rounds a float below 2^22 to an integer, left in the low mantissa bits. */
    private static final float ROUNDER = 12582912f;

    /**
     * dst[d + i] = e^(src[so + i] · scale − shift) for i < n, a multiple of the vector length; dst may be src.
     * Returns the sum of the values written (per lane in float over n / L terms, then across lanes). Within
     * 2 ulp: y = n·ln2 + r with |r| ≤ ln2/2, e^r by Cephes' degree-6 polynomial, 2^n built in the exponent bits.
     * Below −87.3 (−inf included) it gives 0; above 88 it saturates at e^88 (1.7e38). Inline arithmetic rather than
     * the JDK's EXP, which calls out to a library per vector and takes a slow path, ten times slower, for lanes that
     * underflow (attention's masked and far-off scores, most of a vocabulary's logits).
     */
    private static float exp(float[] src, int so, float scale, float shift, float[] dst, int d, int n) {
        FloatVector sum = FloatVector.zero(S);
        for (int i = 0; i < n; i += L) {
            FloatVector x = FloatVector.fromArray(S, src, so + i).mul(scale).sub(shift);
            FloatVector xc = x.min(88f).max(-87.33654f); // n stays within the normal exponents [-126, 127]
            FloatVector t = xc.fma(LOG2E, ROUNDER); // n + ROUNDER, n = round(x · log2 e)
            FloatVector nf = t.sub(ROUNDER);
            FloatVector r = xc.sub(nf.mul(LN2_HI)).sub(nf.mul(LN2_LO)); // nf · LN2_HI is exact
            FloatVector p = r.fma(1.9875691500e-4f, 1.3981999507e-3f)
                    .fma(r, FloatVector.broadcast(S, 8.3334519073e-3f))
                    .fma(r, FloatVector.broadcast(S, 4.1665795894e-2f))
                    .fma(r, FloatVector.broadcast(S, 1.6666665459e-1f))
                    .fma(r, FloatVector.broadcast(S, 5.0000001201e-1f));
            FloatVector er = p.mul(r).fma(r, r).add(1f); // 1 + r + r^2 · p(r)
            IntVector bits = t.reinterpretAsInts().add(127).lanewise(VectorOperators.LSHL, 23); // (n + 127) << 23
            FloatVector y = er.mul(bits.reinterpretAsFloats()).blend(0f, x.lt(-87.33654f));
            y.intoArray(dst, d + i);
            sum = sum.add(y);
        }
        float[] lanes = new float[L];
        sum.intoArray(lanes, 0);
        return sumInOrder(lanes);
    }

    /**
     * Lanes added first to last. reduceLanes(ADD) would add them in a different order compiled than interpreted,
     * and results would then depend on when the JIT got to a method.
     */
    private static float sumInOrder(float[] lanes) {
        float s = 0;
        for (float x : lanes) s += x;
        return s;
    }
}
