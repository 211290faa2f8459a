package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import qtool.QtoolException;

class QuantizerTest {

    private static Quantizer.Grid grid(int bits, boolean sym, float... x) {
        return new Quantizer(bits, sym, false).findParams(x, 0, x.length);
    }

    @Test
    void asymmetricGridFromMinAndMax() {
        Quantizer.Grid g = grid(4, false, -1f, 0.5f, 2f);
        assertEquals(3f / 15, g.scale()); // (xmax - xmin) / maxq in float
        assertEquals(5f, g.zero()); // round(1 / 0.2)
        // 0.5 / 0.2 = 2.5 rounds half to even: 2, + zero 5 = code 7, value 0.2 * 2
        assertEquals(7, Quantizer.code(0.5f, g.scale(), g.zero(), 15));
        assertEquals(g.scale() * 2, Quantizer.quantize(0.5f, g.scale(), g.zero(), 15));
        assertEquals(15, Quantizer.code(2f, g.scale(), g.zero(), 15));
        assertEquals(0, Quantizer.code(-1f, g.scale(), g.zero(), 15));
        assertEquals(0, Quantizer.code(-5f, g.scale(), g.zero(), 15), "clamped below");
        assertEquals(15, Quantizer.code(9f, g.scale(), g.zero(), 15), "clamped above");
    }

    @Test
    void rangeAlwaysContainsZero() {
        Quantizer.Grid g = grid(4, false, 1f, 2f); // xmin = min(1, 0) = 0
        assertEquals(2f / 15, g.scale());
        assertEquals(0, (int) g.zero()); // -0.0 as torch.round(-0.0): the same integer
        Quantizer.Grid n = grid(4, false, -2f, -1f); // xmax = 0
        assertEquals(2f / 15, n.scale());
        assertEquals(15f, n.zero());
    }

    /** A v1 checkpoint stores z − 1: with v1Zeros an all-positive row gets zero 1, one step below 0 to spare. */
    @Test
    void v1ZerosKeepTheZeroPointAtOneOrMore() {
        float[] x = {1f, 2f};
        assertEquals(0f, new Quantizer(4, false, false).findParams(x, 0, 2).zero());
        Quantizer.Grid g = new Quantizer(4, false, false, true).findParams(x, 0, 2);
        assertEquals(1f, g.zero());
        assertEquals(2f / 15, g.scale());
        // the grid now runs from −scale to 14·scale: 2 clamps to the top code, 1 stays exact
        assertEquals(14 * g.scale(), Quantizer.quantize(2f, g.scale(), g.zero(), 15), 1e-6f);
        assertEquals(7.5f * g.scale(), 1f, 1e-6f);
        for (boolean mse : new boolean[] {false, true}) {
            assertTrue(new Quantizer(3, false, mse, true).findParams(new float[] {0.1f, 0.3f, 0.7f, -0.01f}, 0, 4).zero() >= 1);
        }
        assertEquals(8f, new Quantizer(4, true, false, true).findParams(x, 0, 2).zero(), "symmetric zeros are untouched");
    }

    @Test
    void symmetricGridCentresTheZero() {
        Quantizer.Grid g = grid(4, true, -1f, 0.5f, 2f); // xmax = max(|-1|, 2) = 2, xmin = -2
        assertEquals(4f / 15, g.scale());
        assertEquals(8f, g.zero()); // (maxq + 1) / 2
        assertEquals(4f, grid(3, true, -1f, 1f).zero());
        assertEquals(2f, grid(2, true, -1f, 1f).zero());
        assertEquals(128f, grid(8, true, -1f, 1f).zero());
        assertEquals(2f / 7, grid(3, true, -1f, 1f).scale());
    }

    @Test
    void symmetricRowWithoutNegativesKeepsXminZero() {
        // gptq.py only mirrors xmin when it is negative: [0.5, 1] gets scale 1/15 with zero 8, so 1.0 clamps to 7 steps.
        Quantizer.Grid g = grid(4, true, 0.5f, 1f);
        assertEquals(1f / 15, g.scale());
        assertEquals(8f, g.zero());
        assertEquals(15, Quantizer.code(1f, g.scale(), g.zero(), 15));
        assertEquals(g.scale() * 7, Quantizer.quantize(1f, g.scale(), g.zero(), 15));
    }

    @Test
    void allZeroRowGetsUnitRange() {
        Quantizer.Grid a = grid(4, false, 0f, 0f, 0f);
        assertEquals(2f / 15, a.scale());
        // -(-1) / (2/15 in float) is 7.4999995 in float, which rounds to 7 (torch computes the same in fp32).
        assertEquals(7f, a.zero());
        assertEquals(0f, Quantizer.quantize(0f, a.scale(), a.zero(), 15));
        Quantizer.Grid s = grid(4, true, 0f, 0f);
        assertEquals(2f / 15, s.scale());
        assertEquals(8f, s.zero());
    }

    @Test
    void rowsOfAMatrixAndColumnRanges() {
        float[] w = {-1f, 0.5f, 2f, 9f, /* row 1 */ 3f, -3f, 0f, 0f};
        Quantizer.Grid[] grids = new Quantizer(4, false, false).findParams(w, 2, 4, 0, 3);
        assertEquals(3f / 15, grids[0].scale()); // the 9 is outside the column range
        assertEquals(6f / 15, grids[1].scale());
        assertEquals(8f, grids[1].zero()); // round(3 / 0.4) = round(7.5) = 8
    }

    @Test
    void mseSearchShrinksAroundAnOutlierAndNeverDoesWorse() {
        float[] x = new float[64];
        java.util.Random rnd = new java.util.Random(3);
        for (int i = 0; i < x.length; i++) x[i] = (float) (rnd.nextGaussian() * 0.1);
        x[17] = 1.5f;
        for (boolean sym : new boolean[] {true, false}) {
            for (int bits : new int[] {2, 3, 4, 8}) {
                Quantizer.Grid plain = new Quantizer(bits, sym, false).findParams(x, 0, x.length);
                Quantizer.Grid searched = new Quantizer(bits, sym, true).findParams(x, 0, x.length);
                int maxq = (1 << bits) - 1;
                assertTrue(searched.scale() <= plain.scale(), "bits " + bits + " sym " + sym);
                assertTrue(normError(x, searched, maxq) <= normError(x, plain, maxq), "bits " + bits + " sym " + sym);
                if (sym) assertEquals(plain.zero(), searched.zero(), "symmetric zero stays (maxq + 1) / 2");
                // The chosen grid is the best of gptq.py's 80 candidates p = 1, 0.99, ..., 0.21.
                for (int i = 0; i < 80; i++) {
                    float p = (float) (1 - i / 100.0);
                    float xmin = Math.min(0f, min(x)), xmax = Math.max(0f, max(x));
                    if (sym) {
                        xmax = Math.max(Math.abs(xmin), xmax);
                        if (xmin < 0) xmin = -xmax;
                    }
                    float s = (p * xmax - p * xmin) / maxq;
                    float z = sym ? plain.zero() : (float) Math.rint(-(p * xmin) / s);
                    assertTrue(normError(x, searched, maxq) <= normError(x, new Quantizer.Grid(s, z), maxq) + 1e-12);
                }
            }
        }
    }

    @Test
    void mseSearchClipsAGaussianRowAtTwoBits() {
        // For Gaussian weights the |e|^2.4-optimal 2-bit grid clips well inside the max (about 2σ of a 3σ range).
        float[] x = new float[256];
        java.util.Random rnd = new java.util.Random(4);
        for (int i = 0; i < x.length; i++) x[i] = (float) rnd.nextGaussian();
        Quantizer.Grid plain = new Quantizer(2, false, false).findParams(x, 0, x.length);
        Quantizer.Grid searched = new Quantizer(2, false, true).findParams(x, 0, x.length);
        assertTrue(searched.scale() < 0.9f * plain.scale(), searched + " vs " + plain);
        assertTrue(normError(x, searched, 3) < normError(x, plain, 3));
    }

    private static double normError(float[] x, Quantizer.Grid g, int maxq) {
        double e = 0;
        for (float v : x) e += Math.pow(Math.abs(Quantizer.quantize(v, g.scale(), g.zero(), maxq) - v), 2.4);
        return e;
    }

    private static float min(float[] x) {
        float m = Float.POSITIVE_INFINITY;
        for (float v : x) m = Math.min(m, v);
        return m;
    }

    private static float max(float[] x) {
        float m = Float.NEGATIVE_INFINITY;
        for (float v : x) m = Math.max(m, v);
        return m;
    }

    @Test
    void paramsValidation() {
        assertTrue(assertThrows(QtoolException.class, () -> GptqParams.of(5)).getMessage().contains("2, 3, 4 or 8"));
        assertTrue(assertThrows(QtoolException.class, () -> GptqParams.of(4).withGroupSize(0)).getMessage().contains("group size"));
        assertThrows(QtoolException.class, () -> GptqParams.of(4).withGroupSize(-2));
        assertTrue(assertThrows(QtoolException.class, () -> GptqParams.of(4).withDamp(-0.1)).getMessage().contains("damp"));
        assertThrows(QtoolException.class, () -> GptqParams.of(4).withDamp(Double.NaN));
        assertThrows(QtoolException.class, () -> GptqParams.of(4).withDamp(1.5));
        assertTrue(assertThrows(QtoolException.class, () -> GptqParams.of(4).withBlockSize(0)).getMessage().contains("block size"));
        assertTrue(assertThrows(QtoolException.class, () -> GptqParams.of(4).withGroupSize(-1).withStaticGroups(true))
                .getMessage().contains("static groups"));
        GptqParams p = GptqParams.of(3);
        assertEquals(7, p.maxq());
        assertEquals(5, p.numGroups(576));
        assertEquals(1, p.withGroupSize(-1).numGroups(576));
        assertEquals(576, p.withGroupSize(-1).groupWidth(576));
        assertEquals(0.01, p.damp());
        assertEquals(128, p.blockSize());
    }
}
