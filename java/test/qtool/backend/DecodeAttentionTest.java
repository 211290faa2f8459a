package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;
import qtool.load.DType;

/** Decoding one token at a time with the position in a tensor gives what attention over the whole sequence gives. */
class DecodeAttentionTest {

    @Test
    void stepByStepEqualsTheWholeSequence() {
        int batch = 2, len = 5, heads = 4, kvHeads = 2, headDim = 8, maxSeq = 7;
        int qDim = heads * headDim, kvDim = kvHeads * headDim;
        Random random = new Random(1);
        float[] q = randn(random, batch * len * qDim), k = randn(random, batch * len * kvDim), v = randn(random, batch * len * kvDim);
        float[] inv = new float[headDim / 2];
        for (int j = 0; j < inv.length; j++) inv[j] = (float) Math.pow(10000, -2.0 * j / headDim);
        try (CpuBackend cpu = new CpuBackend()) {
            Tensor invFreq = tensor(inv, inv.length);
            Tensor whole = cpu.allocate(DType.F32, batch * len, qDim);
            Tensor tq = tensor(q.clone(), batch * len, qDim), tk = tensor(k.clone(), batch * len, kvDim);
            cpu.rope(tq, heads, headDim, len, 0, invFreq);
            cpu.rope(tk, kvHeads, headDim, len, 0, invFreq);
            cpu.attention(whole, tq, tk, tensor(v, batch * len, kvDim), cpu.allocate(DType.F32, batch, maxSeq, kvDim),
                    cpu.allocate(DType.F32, batch, maxSeq, kvDim), batch, len, 0, heads, kvHeads, headDim);
            float[] expected = whole.toFloatArray();

            Tensor kCache = cpu.allocate(DType.F32, batch, maxSeq, kvDim), vCache = cpu.allocate(DType.F32, batch, maxSeq, kvDim);
            Tensor pos = cpu.allocate(DType.I32, 1);
            cpu.prepareDecode(batch, maxSeq, heads, kvHeads, headDim);
            for (int t = 0; t < len; t++) {
                float[] qt = new float[batch * qDim], kt = new float[batch * kvDim], vt = new float[batch * kvDim];
                for (int b = 0; b < batch; b++) {
                    System.arraycopy(q, (b * len + t) * qDim, qt, b * qDim, qDim);
                    System.arraycopy(k, (b * len + t) * kvDim, kt, b * kvDim, kvDim);
                    System.arraycopy(v, (b * len + t) * kvDim, vt, b * kvDim, kvDim);
                }
                cpu.copyFromHost(MemorySegment.ofArray(new int[] {t}), pos);
                Tensor out = cpu.allocate(DType.F32, batch, qDim);
                cpu.decodeAttention(out, tensor(qt, batch, qDim), tensor(kt, batch, kvDim), tensor(vt, batch, kvDim), kCache, vCache,
                        batch, heads, kvHeads, headDim, pos, invFreq);
                float[] got = out.toFloatArray();
                for (int b = 0; b < batch; b++) {
                    float[] want = Arrays.copyOfRange(expected, (b * len + t) * qDim, (b * len + t + 1) * qDim);
                    for (int d = 0; d < qDim; d++) assertEquals(want[d], got[b * qDim + d], 1e-5f, "step " + t + ", sequence " + b);
                }
            }
        }
    }

    private static float[] randn(Random random, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) random.nextGaussian();
        return a;
    }

    private static Tensor tensor(float[] a, long... shape) {
        return new Tensor(MemorySegment.ofArray(a), DType.F32, shape);
    }
}
