package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import qtool.format.exl2.Exl2Checkpoint;
import qtool.format.exl2.Exl2Packer;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.load.DType;
import qtool.load.Weights;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.GptqTestData;
import qtool.write.SafetensorsWriter;

/**
 * The kernel layout built from GPTQ checkpoints and EXL2 tensors rebuilds the weights their readers rebuild, and the
 * CPU backend multiplies a QMATRIX tensor as the dense weight it stands for.
 */
class QMatrixTest {
    private static final String Q = "model.layers.0.self_attn.q_proj";

    /**
     * A checkpoint written from a GPTQ result and read back: QMatrix's weights equal GptqCheckpoint.dequantize
     * exactly (both compute scale · (q − z) in F32 from the fp16 scale and integer zero).
     */
    @ParameterizedTest
    @CsvSource({"4, 128, true, false, GPTQ", "4, 128, false, false, GPTQ_V2", "4, 64, true, true, GPTQ_V2", "3, 64, true, false, GPTQ",
            "3, -1, false, true, GPTQ", "8, 128, true, true, GPTQ", "8, 32, false, false, GPTQ_V2", "2, 64, true, false, GPTQ_V2"})
    void gptqCheckpointDequantizesAlike(int bits, int groupSize, boolean actOrder, boolean sym, CheckpointFormat format, @TempDir Path dir) {
        int out = 64, in = 256;
        GptqParams params = GptqParams.of(bits).withGroupSize(groupSize).withActOrder(actOrder).withSym(sym);
        float[] x = GptqTestData.correlatedInputs(2 * in, in, bits + groupSize);
        GptqResult r = Gptq.quantize(GptqTestData.weights(out, in, bits), out, in, GptqTestData.hessian(x, 2 * in, in), params);
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            GptqCheckpoint.writeLinear(w, Q, r, null, format);
        }
        GptqCheckpoint.writeConfigs(dir, Map.of("model_type", "llama"), GptqCheckpoint.quantizationConfig(params, Map.of(), List.of(), format, true));
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            QMatrix m = QMatrix.fromGptq(c.read(Q));
            assertArrayEquals(c.dequantize(Q), m.dequantize());
            assertEquals(bits, m.uniformBits(), "GPTQ: one width, the GEMV unsplit");
            if (actOrder && groupSize > 0) assertNotNull(m.perm(), "act-order: inputs sorted by group");
            else assertNull(m.perm(), "groups in input order: codes as stored");
            if (sym) assertNull(m.zeros(), "symmetric: the kernels' implicit 2^(bits-1)");
            else assertNotNull(m.zeros());
        }
    }

    @Test
    void gptqThatTheKernelsCannotTakeIsRefused() {
        Random random = new Random(5);
        // group size 48: inputs 32..63 straddle groups 0 and 1
        RandomGptq g48 = RandomGptq.of(random, 32, 96, 4, 48, false, CheckpointFormat.GPTQ_V2);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> QMatrix.fromGptq(g48.packed()));
        assertTrue(e.getMessage().contains("span groups"), e.getMessage());
        RandomGptq in48 = RandomGptq.of(random, 32, 48, 8, -1, false, CheckpointFormat.GPTQ_V2);
        assertThrows(IllegalArgumentException.class, () -> QMatrix.fromGptq(in48.packed()));
        RandomGptq out4 = RandomGptq.of(random, 4, 64, 8, -1, false, CheckpointFormat.GPTQ_V2);
        assertThrows(IllegalArgumentException.class, () -> QMatrix.fromGptq(out4.packed()));
    }

    /**
     * ExLlamaV2's own files: QMatrix computes scale · (q − 2^(bits−1)) in F32, exact there (an fp16 scale times a
     * small integer); Exl2Checkpoint.dequantize rounds that product to fp16 as ExLlamaV2 does. So fp16(ours) must equal
     * theirs exactly.
     */
    @Test
    void exllamav2FixtureDequantizesAlike() {
        Path fixture = Path.of("java/test/resources/exl2/exllamav2-tiny");
        int linears = 0;
        try (Exl2Checkpoint c = Exl2Checkpoint.open(fixture); Weights w = Weights.open(fixture)) {
            for (String name : w.all().keySet()) {
                if (!name.endsWith(".q_weight")) continue;
                String key = name.substring(0, name.length() - ".q_weight".length());
                Exl2Packer.PackedLinear p = c.read(key);
                assertFp16Equal(c.dequantize(key, p.columns()), QMatrix.fromExl2(p, p.columns()).dequantize(), key);
                linears++;
            }
        }
        assertEquals(7, linears);
    }

    @Test
    void mixedWidthExl2DequantizesAlike() {
        Random random = new Random(11);
        for (String option : new String[] {"0.05:8b_32g/0.1:4b_128g/0.85:3b_128g", "0.1:6b_32g/0.9:5b_32g", "0.25:3b_64g/0.75:2b_64g", "1:8b_32g"}) {
            Exl2Packer.PackedLinear p = RandomExl2.of(random, 96, 576, option);
            QMatrix m = QMatrix.fromExl2(p, 96);
            assertNotNull(m.perm());
            assertNull(m.zeros());
            assertFp16Equal(Exl2Packer.dequantize(p, 96), m.dequantize(), option);
            assertEquals(option.startsWith("1:") ? 8 : 0, m.uniformBits(), option);
        }
    }

    @Test
    void exl2ThatTheKernelsCannotTakeIsRefused() {
        Exl2Packer.PackedLinear p = RandomExl2.of(new Random(3), 90, 128, "1:4b_32g");
        assertThrows(IllegalArgumentException.class, () -> QMatrix.fromExl2(p, 90), "90 outputs stored as 96 columns");
        // two 2-bit groups of 16 rows (EXL2 allows them; a 32-row unit would span both)
        Exl2Packer.PackedLinear halves = new Exl2Packer.PackedLinear("m.x", 32, 32, new int[2 * 32], new int[2 * 4],
                new short[] {Float.floatToFloat16(1f), Float.floatToFloat16(1f)}, new short[] {2, 0, 2, 1}, java.util.stream.IntStream.range(0, 32).toArray(), null);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> QMatrix.fromExl2(halves, 32));
        assertTrue(e.getMessage().contains("16 rows"), e.getMessage());
    }

    /** withOutputOrder moves whole output rows (codes, scale, zero); withoutPerm leaves W's columns in processing order. */
    @Test
    void outputOrderAndPermlessCopyReorderTheDequantizedWeight() {
        Random random = new Random(11);
        QMatrix m = QMatrix.fromGptq(RandomGptq.of(random, 64, 128, 3, 32, true, CheckpointFormat.GPTQ).packed());
        assertNotNull(m.perm());
        int in = m.in(), out = m.out();
        int[] rows = new int[out];
        for (int o = 0; o < out; o++) rows[o] = (o * 7 + 5) % out;
        float[] w = m.dequantize(), reordered = m.withOutputOrder(rows).dequantize(), permless = m.withoutPerm().dequantize();
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                assertEquals(w[rows[o] * in + i], reordered[o * in + i], "row " + o + " is row " + rows[o]);
                assertEquals(w[o * in + m.perm()[i]], permless[o * in + i], "column " + i + " is input " + m.perm()[i]);
            }
        }
        rows[1] = rows[0];
        assertThrows(IllegalArgumentException.class, () -> m.withOutputOrder(rows));
        assertThrows(IllegalArgumentException.class, () -> m.withOutputOrder(new int[out - 1]));
    }

    /** A host QMATRIX tensor holds the arrays; the CPU backend takes it as it is and multiplies what it stands for. */
    @Test
    void cpuLinearOfAQmatrixTensorIsTheDenseProduct() {
        Random random = new Random(7);
        QMatrix m = QMatrix.fromGptq(RandomGptq.of(random, 64, 128, 3, 32, true, CheckpointFormat.GPTQ).packed());
        int rows = 5, in = m.in(), out = m.out();
        float[] x = new float[rows * in], bias = new float[out], init = new float[rows * out];
        for (int k = 0; k < x.length; k++) x[k] = (float) random.nextGaussian();
        for (int k = 0; k < out; k++) bias[k] = (float) random.nextGaussian();
        for (int k = 0; k < init.length; k++) init[k] = (float) random.nextGaussian();
        try (Arena arena = Arena.ofConfined(); CpuBackend cpu = new CpuBackend()) {
            Tensor host = m.toTensor(arena);
            assertEquals(DType.QMATRIX, host.dtype());
            assertArrayEquals(new long[] {out, in}, host.shape());
            QMatrix back = QMatrix.read(host);
            assertArrayEquals(m.qweight(), back.qweight());
            assertArrayEquals(m.units(), back.units());
            assertArrayEquals(m.scales(), back.scales());
            assertArrayEquals(m.zeros(), back.zeros());
            assertArrayEquals(m.perm(), back.perm());
            Tensor w = cpu.upload(host, DType.F16);
            assertSame(host, w);

            Tensor dense = new Tensor(MemorySegment.ofArray(m.dequantize()), DType.F32, new long[] {out, in});
            Tensor tx = tensor(x, rows, in), tb = tensor(bias, out);
            Tensor want = cpu.allocate(DType.F32, rows, out), got = cpu.allocate(DType.F32, rows, out);
            cpu.linear(want, tx, dense, tb);
            cpu.linear(got, tx, w, tb);
            assertArrayEquals(want.toFloatArray(), got.toFloatArray());
            Tensor acc = tensor(init.clone(), rows, out);
            cpu.linearAdd(acc, tx, w, null);
            cpu.linear(want, tx, dense, null);
            float[] product = want.toFloatArray(), sum = acc.toFloatArray();
            for (int k = 0; k < init.length; k++) assertEquals(init[k] + product[k], sum[k], 1e-5f);
        }
    }

    private static Tensor tensor(float[] a, long... shape) {
        return new Tensor(MemorySegment.ofArray(a), DType.F32, shape);
    }

    private static void assertFp16Equal(float[] reference, float[] ours, String what) {
        assertEquals(reference.length, ours.length, what);
        int differing = 0;
        for (int k = 0; k < ours.length; k++) if (Float.float16ToFloat(Float.floatToFloat16(ours[k])) != reference[k]) differing++;
        assertEquals(0, differing, what + ": weights differing from the reader's");
    }
}
