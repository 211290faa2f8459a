package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;
import qtool.backend.CpuBackend;
import qtool.backend.Tensor;
import qtool.load.DType;

class ReconstructionErrorTest {

    /** The figure from H = XᵀX equals ‖(W − Q)Xᵀ‖² / ‖WXᵀ‖² summed over the inputs themselves, in blocks or not. */
    @Test
    void fromTheGramMatrixEqualsTheDirectSum() {
        int out = 300, in = 64, rows = 200;
        float[] w = GptqTestData.weights(out, in, 1);
        float[] x = GptqTestData.correlatedInputs(rows, in, 2);
        float[] h = GptqTestData.hessian(x, rows, in); // 2/rows · XᵀX: the scale cancels
        GptqResult r = Gptq.quantize(w, out, in, h, GptqParams.of(3).withGroupSize(32).withActOrder(true));
        double expected = GptqTestData.proxyError(w, r.dequantized(), x, out, in, rows)
                / GptqTestData.proxyError(w, new float[w.length], x, out, in, rows);
        try (CpuBackend cpu = new CpuBackend()) {
            Tensor wt = new Tensor(MemorySegment.ofArray(w), DType.F32, new long[] {out, in});
            Tensor ht = new Tensor(MemorySegment.ofArray(h), DType.F32, new long[] {in, in});
            double got = ReconstructionError.relative(cpu, wt, r.dequantized(), ht);
            assertEquals(expected, got, 1e-4 * expected);
            assertTrue(got > 1e-4 && got < 0.2, "3-bit error " + got);
            assertEquals(0.0, ReconstructionError.relative(cpu, wt, w, ht), "no change, no error");
        }
    }
}
