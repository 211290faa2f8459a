package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.junit.jupiter.api.Test;
import qtool.load.DType;
import qtool.quantize.Awq;
import qtool.quantize.AwqParams;

/** {@link Backend#awqClip} on the CPU backend is {@link Awq#searchClip}, through tensors. */
class AwqClipBackendTest {

    private static float[] gaussian(int n, float scale, long seed) {
        Random r = new Random(seed);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) r.nextGaussian() * scale;
        return v;
    }

    private static Tensor tensor(float[] v, int rows, int cols) {
        return new Tensor(MemorySegment.ofArray(v), DType.F32, new long[] {rows, cols});
    }

    @Test
    void cpuBackendSearchesAsAwq() {
        int out = 24;
        // {in, group, tokens}: groups of 32 with the Gram form, a ragged last group (200 = 3·64 + 8), fewer tokens than
        // a group (the direct form), one group per row
        int[][] shapes = {{96, 32, 64}, {200, 64, 80}, {96, 64, 40}, {72, -1, 100}};
        try (Backend cpu = new CpuBackend()) {
            for (int[] s : shapes) {
                int in = s[0], tokens = s[2];
                float[] w = gaussian(out * in, 0.02f, in), x = gaussian(tokens * in, 1f, in + 1);
                for (int i = 0; i < w.length; i += 29) w[i] *= 6;  // outliers, so that clipping pays
                for (boolean zeroPoint : new boolean[] {true, false}) {
                    for (boolean asymmetric : new boolean[] {true, false}) {
                        AwqParams p = new AwqParams(4, s[1], zeroPoint);
                        float[] want = Awq.searchClip(w, out, in, x, tokens, p, asymmetric);
                        float[] got = cpu.awqClip(cpu.upload(tensor(w, out, in), DType.F32), cpu.upload(tensor(x, tokens, in), DType.F32), p, asymmetric);
                        assertArrayEquals(want, got, "in " + in + " group " + s[1] + " zero point " + zeroPoint + " asymmetric " + asymmetric);
                    }
                }
            }
        }
    }

    @Test
    void rowSlicesAreRefused() {
        float[] w = gaussian(8 * 32, 0.02f, 1), x = gaussian(16 * 32, 1f, 2);
        try (Backend cpu = new CpuBackend()) {
            assertThrows(IllegalArgumentException.class,
                    () -> cpu.awqClip(tensor(w, 8, 32), tensor(x, 16, 32).rowSlice(4, 8), new AwqParams(4, 32, true), true));
        }
    }
}
