package qtool.format.exl2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;
import qtool.write.SafetensorsWriter;

/** LlamaModel reads an EXL2 directory written with {@link Exl2Packer}: linears, padded lm_head and biases. */
class Exl2ModelTest {

    @Test
    void llamaModelDequantizesExl2Linears(@TempDir Path dir) throws Exception {
        Path src = dir.resolve("src"), exl2 = dir.resolve("exl2");
        CliRun r = CliRun.of("synth", "--out", src.toString(), "--arch", "qwen2", "--hidden", "64", "--layers", "1", "--heads", "4",
                "--kv-heads", "2", "--intermediate", "96", "--vocab", "500");
        assertEquals(0, r.exitCode(), r.err());
        Files.createDirectories(exl2);
        Map<String, float[]> expected = new HashMap<>();
        Map<String, float[]> biases = new HashMap<>();
        try (Weights w = Weights.open(src); SafetensorsWriter out = new SafetensorsWriter(exl2, 0)) {
            for (var e : w.all().entrySet()) {
                String name = e.getKey();
                Tensor t = e.getValue();
                boolean linear = name.endsWith("_proj.weight") || name.equals("lm_head.weight");
                if (!linear) {
                    if (!name.endsWith("_proj.bias")) out.add(name, t.dtype(), t.shape(), t.data());
                    continue;
                }
                String key = name.substring(0, name.length() - ".weight".length());
                int o = (int) t.shape()[0], in = t.cols();
                float[] h = new float[in * in];
                for (int i = 0; i < in; i++) h[i * in + i] = 1 + i % 5;
                Exl2Params option = key.equals("lm_head") ? Exl2Params.HEAD_OPTIONS.get(6) : Exl2Params.parse("0.5:5b_32g/0.5:4b_32g");
                Exl2Tensor q = Exl2Gptq.quantize(Exl2Gptq.prepare(h, in), t.toFloatArray(), o, option);
                Tensor b = w.find(key + ".bias");
                float[] bias = b == null ? null : b.toFloatArray();
                Exl2Packer.pack(key, q, bias).write(out);
                expected.put(key, q.dequantized());
                if (bias != null) biases.put(key, bias);
            }
        }
        Map<String, Object> config = new LinkedHashMap<>(Json.readObject(src.resolve("config.json")));
        config.put("quantization_config", Map.of("quant_method", "exl2", "version", "0.3.2", "bits", 4.5, "head_bits", 6));
        Files.writeString(exl2.resolve("config.json"), Json.writePretty(config));

        assertTrue(Exl2Checkpoint.isExl2(exl2));
        assertFalse(Exl2Checkpoint.isExl2(src));
        try (LlamaModel m = LlamaModel.open(exl2)) {
            assertNotNull(m.exl2);
            LlamaModel.Layer l = m.layer(0);
            assertArrayEquals(expected.get("model.layers.0.self_attn.q_proj"), l.q().toFloatArray());
            assertArrayEquals(expected.get("model.layers.0.self_attn.k_proj"), l.k().toFloatArray());
            assertArrayEquals(expected.get("model.layers.0.mlp.down_proj"), l.down().toFloatArray());
            assertArrayEquals(new long[] {96, 64}, l.up().shape());
            float[] qBias = biases.get("model.layers.0.self_attn.q_proj");
            for (int k = 0; k < qBias.length; k++) assertEquals(Exl2Tensor.fp16(qBias[k]), l.qBias().toFloatArray()[k]);
            assertFalse(m.headTied());
            assertArrayEquals(new long[] {500, 64}, m.lmHead().shape()); // stored padded to 512 columns
            assertArrayEquals(expected.get("lm_head"), m.lmHead().toFloatArray());
        }
    }
}
