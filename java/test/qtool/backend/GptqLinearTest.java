package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.load.DType;

/** CpuBackend's GPTQ linear (the reference the CUDA kernels are checked against) equals dequantize-then-linear. */
class GptqLinearTest {

    @ParameterizedTest
    @CsvSource({"2, 64, false, GPTQ", "3, 32, true, GPTQ_V2", "4, 128, false, GPTQ_V2", "4, 64, true, GPTQ", "8, -1, false, GPTQ",
            "3, -1, true, GPTQ_V2"})
    void equalsDequantizeThenLinear(int bits, int groupSize, boolean actOrder, CheckpointFormat format) {
        Random random = new Random(bits * 31L + groupSize);
        int out = 96, in = 256, rows = 3;
        RandomGptq q = RandomGptq.of(random, out, in, bits, groupSize, actOrder, format);
        float[] x = new float[rows * in];
        for (int k = 0; k < x.length; k++) x[k] = (float) random.nextGaussian();
        try (CpuBackend cpu = new CpuBackend()) {
            GptqLinear w = GptqLinear.upload(cpu, q.packed());
            if (actOrder && groupSize > 0) assertNotNull(w.gIdx(), "act-order keeps g_idx");
            else assertNull(w.gIdx(), "i / group_size is left to the kernel");
            Tensor y = cpu.allocate(DType.F32, rows, out);
            cpu.gptqLinear(y, new Tensor(MemorySegment.ofArray(x), DType.F32, new long[] {rows, in}), w);
            float[] got = y.toFloatArray();
            double[] ref = q.reference(x, rows);
            double num = 0, den = 0;
            for (int k = 0; k < ref.length; k++) {
                num += (got[k] - ref[k]) * (got[k] - ref[k]);
                den += ref[k] * ref[k];
            }
            assertTrue(den > 0);
            assertEquals(0, Math.sqrt(num / den), 1e-5, "relative L2 error");
            w.free(cpu);
        }
    }
}
