package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;

/**
 * GPTQ-for-LLaMa checkpoints made by hand (TorchSaveWriter): every linear of the tiny Meta-imported model replaced by
 * random 4-bit codes, zero points and scales, as QuantLinear's buffers (qweight, qzeros, scales, g_idx, an all-zero
 * bias); one linear in the older float-zeros layout. The import must dequantize to s·(q − z) exactly.
 */
class GptqPtImporterTest {
    @TempDir
    Path dir;

    record Expected(float[] w, int in, int out) {}

    @Test
    void importsGptqForLlamaCheckpointAndRuns() throws Exception {
        Path hf = dir.resolve("hf");
        assertEquals(0, CliRun.of("import-meta", "-i", MetaLlamaImporterTest.FIXTURE.toString(), "-o", hf.toString()).exitCode());
        int bits = 4, group = 16;
        Random rnd = new Random(3);
        Map<String, TorchSaveWriter.RawTensor> sd = new LinkedHashMap<>();
        Map<String, Expected> expected = new LinkedHashMap<>();
        try (Weights w = Weights.open(hf)) {
            for (var e : w.all().entrySet()) {
                String name = e.getKey();
                Tensor t = e.getValue();
                boolean linear = name.startsWith("model.layers.") && name.endsWith("_proj.weight");
                if (!linear) {
                    sd.put(name, new TorchSaveWriter.RawTensor(DType.F16, t.shape(), f16(t.toFloatArray())));
                    continue;
                }
                String p = name.substring(0, name.length() - ".weight".length());
                int out = (int) t.shape()[0], in = (int) t.shape()[1], groups = in / group;
                boolean floatZeros = p.equals("model.layers.1.mlp.up_proj");
                int[][] q = new int[in][out], z = new int[groups][out];
                float[][] s = new float[groups][out];
                for (int[] row : q) for (int o = 0; o < out; o++) row[o] = rnd.nextInt(16);
                for (int g = 0; g < groups; g++) for (int o = 0; o < out; o++) {
                    z[g][o] = 1 + rnd.nextInt(15);
                    s[g][o] = Float.float16ToFloat(Float.floatToFloat16(0.001f + rnd.nextFloat() * 0.01f));
                }
                int[] qweight = new int[in / 8 * out];
                for (int i = 0; i < in; i++) for (int o = 0; o < out; o++) qweight[(i / 8) * out + o] |= q[i][o] << (4 * (i % 8));
                int[] qzeros = new int[groups * out / 8];
                for (int g = 0; g < groups; g++) for (int o = 0; o < out; o++) qzeros[g * out / 8 + o / 8] |= (z[g][o] - 1) << (4 * (o % 8));
                float[] sFlat = new float[groups * out], zerosF = new float[groups * out];
                int[] gIdx = new int[in];
                for (int g = 0; g < groups; g++) for (int o = 0; o < out; o++) {
                    sFlat[g * out + o] = s[g][o];
                    zerosF[g * out + o] = Float.float16ToFloat(Float.floatToFloat16(z[g][o] * s[g][o]));
                }
                for (int i = 0; i < in; i++) gIdx[i] = i / group;
                sd.put(p + ".qweight", new TorchSaveWriter.RawTensor(DType.I32, new long[] {in / 8, out}, i32(qweight)));
                if (floatZeros) sd.put(p + ".zeros", new TorchSaveWriter.RawTensor(DType.F16, new long[] {groups, out}, f16(zerosF)));
                else sd.put(p + ".qzeros", new TorchSaveWriter.RawTensor(DType.I32, new long[] {groups, out / 8}, i32(qzeros)));
                sd.put(p + ".scales", new TorchSaveWriter.RawTensor(DType.F16, new long[] {groups, out}, f16(sFlat)));
                sd.put(p + ".g_idx", new TorchSaveWriter.RawTensor(DType.I32, new long[] {in}, i32(gIdx)));
                sd.put(p + ".bias", new TorchSaveWriter.RawTensor(DType.F16, new long[] {out}, new byte[2 * out]));
                float[] deq = new float[out * in];
                for (int o = 0; o < out; o++) for (int i = 0; i < in; i++) deq[o * in + i] = s[i / group][o] * (q[i][o] - z[i / group][o]);
                expected.put(p, new Expected(deq, in, out));
            }
        }
        Path pt = dir.resolve("llama-4bit-16g.pt");
        TorchSaveWriter.save(pt, sd, true);
        Path gptq = dir.resolve("gptq");
        CliRun r = CliRun.of("import-gptq-pt", "-i", pt.toString(), "--bits", "4", "--group-size", "16", "--config", hf.toString(), "-o", gptq.toString());
        assertEquals(0, r.exitCode(), r.err());
        assertEquals(14, expected.size());
        try (GptqCheckpoint ck = GptqCheckpoint.open(gptq)) {
            assertEquals(4, ck.config().bits());
            assertEquals(16, ck.config().groupSize());
            for (var e : expected.entrySet()) {
                float[] got = ck.dequantize(e.getKey());
                float[] want = e.getValue().w();
                assertEquals(want.length, got.length, e.getKey());
                for (int k = 0; k < want.length; k++) assertEquals(want[k], got[k], Math.abs(want[k]) * 1e-6f + 1e-9f, e.getKey() + "[" + k + "]");
                assertEquals(null, ck.bias(e.getKey()), "all-zero bias dropped");
            }
        }
        assertTrue(Files.exists(gptq.resolve("tokenizer.model")));
        Path data = dir.resolve("text.txt");
        Files.writeString(data, "The quick brown fox jumps over the lazy dog. ".repeat(20));
        CliRun ppl = CliRun.of("ppl", "-m", gptq.toString(), "-d", data.toString(), "--ctx", "32", "--windows", "2", "--json", "--device", "cpu");
        assertEquals(0, ppl.exitCode(), ppl.err());
        double v = ((Number) Json.object(Json.parse(ppl.out(), "ppl"), "ppl").get("ppl")).doubleValue();
        assertTrue(v > 1 && Double.isFinite(v), ppl.out());

        // wrong --bits / --group-size: clear errors, exit 2
        CliRun bad = CliRun.of("import-gptq-pt", "-i", pt.toString(), "--bits", "4", "--group-size", "8", "--config", hf.toString(), "-o", dir.resolve("x").toString());
        assertEquals(2, bad.exitCode(), bad.err());
        assertTrue(bad.err().contains("--group-size"), bad.err());
        CliRun notGptq = CliRun.of("import-gptq-pt", "-i", MetaLlamaImporterTest.FIXTURE.resolve("consolidated.00.pth").toString(), "--bits", "4",
                "--group-size", "16", "--config", hf.toString(), "-o", dir.resolve("y").toString());
        assertEquals(2, notGptq.exitCode(), notGptq.err());
        assertTrue(notGptq.err().contains("not a GPTQ checkpoint"), notGptq.err());
    }

    static byte[] f16(float[] v) {
        ByteBuffer b = ByteBuffer.allocate(2 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) b.putShort(Float.floatToFloat16(x));
        return b.array();
    }

    static byte[] i32(int[] v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (int x : v) b.putInt(x);
        return b.array();
    }
}
