package qtool.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.CpuBackend;
import qtool.backend.QMatrix;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.format.exl2.Exl2Packer;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.write.SafetensorsWriter;

/**
 * LlamaModel.layer(i, true) on GPTQ and EXL2 directories: quantized linears as QMATRIX tensors that multiply (on the
 * CPU backend) as the dequantized ones do (the MLP as a whole: down's input order moves into gate's and up's
 * outputs); EXL2's lm_head, padded from 500 to 512 outputs, stays dequantized and is named once on stderr.
 */
class PackedLayerTest {

    @Test
    void packedLayersMultiplyAsTheDequantizedOnes(@TempDir Path dir) throws Exception {
        Path src = dir.resolve("src");
        CliRun r = CliRun.of("synth", "--out", src.toString(), "--arch", "qwen2", "--hidden", "64", "--layers", "1", "--heads", "4",
                "--kv-heads", "2", "--intermediate", "96", "--vocab", "500");
        assertEquals(0, r.exitCode(), r.err());
        Path gptq = write(src, dir.resolve("gptq"), false), exl2 = write(src, dir.resolve("exl2"), true);

        for (Path model : List.of(gptq, exl2)) {
            try (LlamaModel m = LlamaModel.open(model); CpuBackend cpu = new CpuBackend()) {
                LlamaModel.Layer dense = m.layer(0), packed = m.layer(0, true);
                assertSame(packed.q(), m.layer(0, true).q(), "made once");
                assertNull(QMatrix.read(m.layer(0, true).down()).perm(), "down's input order moved into gate and up");
                for (String linear : LlamaModel.Layer.LINEARS) {
                    Tensor w = packed.linear(linear);
                    assertEquals(DType.QMATRIX, w.dtype(), linear);
                    assertEquals(List.of(dense.linear(linear).shape()[0], dense.linear(linear).shape()[1]), List.of(w.shape()[0], w.shape()[1]));
                    // EXL2's dequantized weights are fp16-rounded, QMATRIX products use the exact F32 values
                    if (linear.startsWith("self_attn.")) {
                        assertEquals(0, relativeDifference(cpu, dense.linear(linear), w, dense.bias(linear)), 2e-3, model.getFileName() + " " + linear);
                    }
                }
                assertEquals(0, mlpDifference(cpu, dense, packed), 2e-3, model.getFileName() + " mlp");
                if (model == exl2) {
                    ByteArrayOutputStream err = new ByteArrayOutputStream();
                    PrintStream old = System.err;
                    System.setErr(new PrintStream(err, true));
                    try {
                        assertEquals(DType.F32, m.lmHead(true).dtype());
                        assertEquals(DType.F32, m.lmHead(true).dtype());
                    } finally {
                        System.setErr(old);
                    }
                    String said = err.toString();
                    assertEquals(1, said.split("lm_head", -1).length - 1, said);
                    assertTrue(said.contains("padded"), said);
                }
            }
        }
    }

    /** ‖x·Dᵀ − x·Pᵀ‖ / ‖x·Dᵀ‖ for random x (3 rows), D the dense weight and P the packed one, bias added to both. */
    private static double relativeDifference(CpuBackend cpu, Tensor dense, Tensor packed, Tensor bias) {
        int in = dense.cols(), out = (int) dense.shape()[0];
        Tensor tx = randomRows(in), a = cpu.allocate(DType.F32, 3, out), b = cpu.allocate(DType.F32, 3, out);
        Tensor tb = bias == null ? null : cpu.upload(bias, DType.F32);
        cpu.linear(a, tx, cpu.upload(dense, DType.F32), tb);
        cpu.linear(b, tx, cpu.upload(packed, DType.F32), tb);
        return relativeDifference(a, b);
    }

    /** The same for the whole MLP, down(silu(gate x)·up x): the packed one's intermediate features come in down's order. */
    private static double mlpDifference(CpuBackend cpu, LlamaModel.Layer dense, LlamaModel.Layer packed) {
        int in = dense.gate().cols(), mid = (int) dense.gate().shape()[0];
        Tensor x = randomRows(in);
        Tensor[] y = new Tensor[2];
        for (int k = 0; k < 2; k++) {
            LlamaModel.Layer w = k == 0 ? dense : packed;
            Tensor g = cpu.allocate(DType.F32, 3, mid), u = cpu.allocate(DType.F32, 3, mid);
            cpu.linear(g, x, cpu.upload(w.gate(), DType.F32), null);
            cpu.linear(u, x, cpu.upload(w.up(), DType.F32), null);
            cpu.siluMul(g, g, u);
            y[k] = cpu.allocate(DType.F32, 3, in);
            cpu.linear(y[k], g, cpu.upload(w.down(), DType.F32), null);
        }
        return relativeDifference(y[0], y[1]);
    }

    private static Tensor randomRows(int in) {
        Random random = new Random(in * 31L);
        float[] x = new float[3 * in];
        for (int k = 0; k < x.length; k++) x[k] = (float) random.nextGaussian();
        return new Tensor(MemorySegment.ofArray(x), DType.F32, new long[] {3, in});
    }

    private static double relativeDifference(Tensor a, Tensor b) {
        float[] ya = a.toFloatArray(), yb = b.toFloatArray();
        double num = 0, den = 0;
        for (int k = 0; k < ya.length; k++) {
            num += (ya[k] - yb[k]) * (ya[k] - yb[k]);
            den += ya[k] * ya[k];
        }
        return Math.sqrt(num / den);
    }

    /** The synth model with every linear quantized: EXL2 (mixed 5/4-bit, lm_head too) or GPTQ (4-bit g32 act-order). */
    private static Path write(Path src, Path dst, boolean exl2) throws Exception {
        Files.createDirectories(dst);
        GptqParams gptq = GptqParams.of(4).withGroupSize(32).withActOrder(true).withSym(false);
        try (Weights w = Weights.open(src); SafetensorsWriter out = new SafetensorsWriter(dst, 0)) {
            for (var e : w.all().entrySet()) {
                String name = e.getKey();
                Tensor t = e.getValue();
                boolean linear = name.endsWith("_proj.weight") || exl2 && name.equals("lm_head.weight");
                if (!linear) {
                    if (!(exl2 && name.endsWith("_proj.bias"))) out.add(name, t.dtype(), t.shape(), t.data());
                    continue;
                }
                String key = name.substring(0, name.length() - ".weight".length());
                int o = (int) t.shape()[0], in = t.cols();
                float[] h = new float[in * in];
                for (int i = 0; i < in; i++) h[i * in + i] = 1 + i % 5;
                if (exl2) {
                    Exl2Params option = key.equals("lm_head") ? Exl2Params.HEAD_OPTIONS.get(6) : Exl2Params.parse("0.5:5b_32g/0.5:4b_32g");
                    Tensor b = w.find(key + ".bias");
                    Exl2Packer.pack(key, Exl2Gptq.quantize(Exl2Gptq.prepare(h, in), t.toFloatArray(), o, option),
                            b == null ? null : b.toFloatArray()).write(out);
                } else {
                    GptqCheckpoint.writeLinear(out, key, Gptq.quantize(t.toFloatArray(), o, in, h, gptq), null, CheckpointFormat.GPTQ);
                }
            }
        }
        Map<String, Object> config = new LinkedHashMap<>(Json.readObject(src.resolve("config.json")));
        if (exl2) {
            config.put("quantization_config", Map.of("quant_method", "exl2", "version", "0.3.2", "bits", 4.5, "head_bits", 6));
            Files.writeString(dst.resolve("config.json"), Json.writePretty(config));
        } else {
            GptqCheckpoint.writeConfigs(dst, config, GptqCheckpoint.quantizationConfig(gptq, Map.of(), List.of(), CheckpointFormat.GPTQ, true));
        }
        return dst;
    }
}
