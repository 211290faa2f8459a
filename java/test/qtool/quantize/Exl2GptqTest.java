package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

public class Exl2GptqTest {

    /** A random weight [out, in] and a Hessian from correlated inputs with a few strong columns. */
    public static float[][] problem(int out, int in, long seed) {
        Random r = new Random(seed);
        float[] w = new float[out * in];
        for (int k = 0; k < w.length; k++) w[k] = (float) (r.nextGaussian() * 0.05);
        int n = 4 * in;
        float[] x = new float[n * in];
        for (int t = 0; t < n; t++) {
            double common = r.nextGaussian();
            for (int i = 0; i < in; i++) x[t * in + i] = (float) ((r.nextGaussian() + 0.5 * common) * (i % 7 == 0 ? 4 : 1));
        }
        float[] h = new float[in * in];
        Gptq.accumulateHessian(h, x, n, in, 0);
        return new float[][] {w, h};
    }

    /** tr((W − Q) H (W − Q)ᵀ) / tr(W H Wᵀ): the layer's output error on the calibration inputs. */
    static double outputError(float[] w, float[] q, float[] h, int out, int in) {
        double num = 0, den = 0;
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                double di = w[o * in + i] - q[o * in + i], wi = w[o * in + i];
                for (int j = 0; j < in; j++) {
                    num += di * h[i * in + j] * (w[o * in + j] - q[o * in + j]);
                    den += wi * h[i * in + j] * w[o * in + j];
                }
            }
        }
        return num / den;
    }

    @Test
    void errorFallsAsBitsRise() {
        int out = 48, in = 128;
        float[][] p = problem(out, in, 1);
        Exl2Gptq.Prepared prepared = Exl2Gptq.prepare(p[1], in);
        double previous = Double.MAX_VALUE;
        for (String option : new String[] {"1:2b_32g", "1:3b_32g", "1:4b_32g", "1:5b_32g", "1:6b_32g", "1:8b_32g"}) {
            Exl2Tensor t = Exl2Gptq.quantize(prepared, p[0], out, Exl2Params.parse(option));
            double e = outputError(p[0], t.dequantized(), p[1], out, in);
            assertTrue(e < previous, option + ": error " + e + " not below " + previous);
            previous = e;
        }
        assertTrue(previous < 1e-4, "8-bit error " + previous);
    }

    @Test
    void gptqBeatsRoundingAndTheResultIsConsistent() {
        int out = 40, in = 96;
        float[][] p = problem(out, in, 2);
        Exl2Params params = Exl2Params.parse("0.34:4b_32g/0.66:3b_32g");
        Exl2Gptq.Prepared prepared = Exl2Gptq.prepare(p[1], in);
        Exl2Tensor t = Exl2Gptq.quantize(prepared, p[0], out, params);
        // identity Hessian = no error feedback: plain rounding on the same grids
        float[] eye = new float[in * in];
        for (int i = 0; i < in; i++) eye[i * in + i] = 1;
        Exl2Tensor rtn = Exl2Gptq.quantize(Exl2Gptq.prepare(eye, in), p[0], out, params);
        assertTrue(outputError(p[0], t.dequantized(), p[1], out, in) < 0.8 * outputError(p[0], rtn.dequantized(), p[1], out, in));

        // act-order: rows by decreasing diag(H); the strong inputs (i % 7 == 0) come first
        for (int k = 1; k < in; k++) assertTrue(p[1][t.perm()[k - 1] * in + t.perm()[k - 1]] >= p[1][t.perm()[k] * in + t.perm()[k]]);
        assertEquals(0, t.perm()[0] % 7);
        assertEquals(1, t.attempts());
        assertSame(params, t.params());

        var layout = t.layout();
        assertArrayEquals(new int[] {4, 4, 3}, layout.bits()); // 4-bit: ceil(96·0.34/32) = 2 groups
        for (int g = 0; g < layout.count(); g++) {
            int bits = layout.bits()[g];
            assertEquals(t.qscaleMax()[g], Exl2Tensor.fp16(t.qscaleMax()[g]));
            for (int o = 0; o < out; o++) {
                int qs = t.qscale()[g * out + o];
                assertTrue(qs >= 1 && qs <= 16, "qscale " + qs);
                for (int j = 0; j < layout.rows()[g]; j++) {
                    int k = layout.firstRow()[g] + j, code = t.code(k, o);
                    assertTrue(code < 1 << bits);
                    // the dequantized weight is exactly the kernels' arithmetic on codes and scales
                    assertEquals(Exl2Tensor.dequantize(code, bits, t.scale(g, o)), t.dequantized()[o * in + t.perm()[k]]);
                }
            }
        }
    }

    @Test
    void damping() {
        int in = 64;
        float[] h = new float[in * in];
        for (int i = 0; i < in; i++) h[i * in + i] = i < 32 ? 2 : 0; // half the inputs dead: no special case needed
        Exl2Gptq.Prepared p = Exl2Gptq.prepare(h, in);
        assertEquals(0.12 * 1.0, p.damp(), 1e-12);
        assertEquals(1, p.attempts());
        // all-zero H: the 1e-5 floor
        assertEquals(1e-5, Exl2Gptq.prepare(new float[in * in], in).damp(), 0);
    }
}
