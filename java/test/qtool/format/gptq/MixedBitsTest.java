package qtool.format.gptq;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;
import qtool.format.gguf.GgmlCodec;
import qtool.format.gguf.GgmlType;
import qtool.format.gguf.GgufFile;
import qtool.format.gguf.GptqToGguf;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.load.DType;
import qtool.load.Json;
import qtool.model.LlamaModel;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.GptqTestData;
import qtool.write.SafetensorsWriter;

/**
 * A GPTQ checkpoint with a different bit width per linear (mixed-bit GPTQ, as EXL2-style bit allocation makes):
 * written with per-module GPTQModel {@code dynamic} rules, read back by {@link GptqCheckpoint} and {@link LlamaModel},
 * and carried over by {@code gguf from-gptq} at each linear's own width.
 */
class MixedBitsTest {
    private static final int[] BITS = {2, 3, 4, 8};

    @Test
    void perModuleBitsReadByTheModelAndFromGptq(@TempDir Path dir) throws Exception {
        Path synth = dir.resolve("synth"), ckpt = dir.resolve("gptq");
        CliRun s = CliRun.of("synth", "--out", synth.toString(), "--hidden", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "256", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, s.exitCode(), s.err());

        GptqParams base = GptqParams.of(4).withGroupSize(32);
        Map<String, GptqParams> perModule = new LinkedHashMap<>();
        Map<String, GptqResult> results = new LinkedHashMap<>();
        try (LlamaModel m = LlamaModel.open(synth); SafetensorsWriter w = new SafetensorsWriter(ckpt, 0)) {
            for (String name : m.weights.all().keySet()) {
                if (name.endsWith("_proj.weight")) continue;
                w.add(name, DType.F16, m.weights.get(name).shape(), m.weights.get(name).data());
            }
            int k = 0;
            for (int i = 0; i < m.config.numLayers(); i++) {
                LlamaModel.Layer layer = m.layer(i);
                for (String l : LlamaModel.Layer.LINEARS) {
                    var t = layer.linear(l);
                    int out = (int) t.shape()[0], in = t.cols();
                    GptqParams p = base.withBits(BITS[k++ % BITS.length]);
                    float[] x = GptqTestData.correlatedInputs(2 * in, in, k);
                    GptqResult r = Gptq.quantize(t.toFloatArray(), out, in, GptqTestData.hessian(x, 2 * in, in), p);
                    String prefix = LlamaModel.prefix(i) + l;
                    GptqCheckpoint.writeLinear(w, prefix, r, null, CheckpointFormat.GPTQ);
                    perModule.put(prefix, p);
                    results.put(prefix, r);
                }
            }
            Map<String, Object> config = Json.readObject(synth.resolve("config.json"));
            GptqCheckpoint.writeConfigs(ckpt, config, GptqCheckpoint.quantizationConfig(base, perModule, List.of(), CheckpointFormat.GPTQ, false));
        }
        for (String f : List.of("tokenizer.json", "tokenizer_config.json")) {
            if (Files.exists(synth.resolve(f))) Files.copy(synth.resolve(f), ckpt.resolve(f));
        }

        Map<String, Object> dynamic = Json.object(Json.readObject(ckpt.resolve("quantize_config.json")).get("dynamic"), "dynamic");
        assertEquals(Map.of("bits", 3L, "group_size", 32L), dynamic.get("+:model\\.layers\\.0\\.self_attn\\.k_proj$"));
        assertEquals(perModule.values().stream().filter(p -> p.bits() != base.bits()).count(), dynamic.size(), "one rule per linear not at the base bits");

        try (LlamaModel m = LlamaModel.open(ckpt)) {
            for (int i = 0; i < m.config.numLayers(); i++) {
                LlamaModel.Layer layer = m.layer(i);
                for (String l : LlamaModel.Layer.LINEARS) {
                    String prefix = LlamaModel.prefix(i) + l;
                    assertEquals(perModule.get(prefix).bits(), m.gptq.read(prefix).bits(), prefix);
                    assertArrayEquals(GptqCheckpointTest.expected(results.get(prefix)), layer.linear(l).toFloatArray(), prefix);
                }
            }
        }

        Path gguf = dir.resolve("mixed.gguf");
        GptqToGguf.Result r = GptqToGguf.convert(ckpt, gguf, GptqToGguf.Options.defaults(), null);
        int linears = 0;
        try (GgufFile g = GgufFile.open(gguf)) {
            for (GptqToGguf.Mapped t : r.tensors()) {
                if (!t.gptq()) continue;
                linears++;
                int bits = perModule.get(t.source()).bits();
                assertEquals(bits == 8 ? GgmlType.Q8_0 : GgmlType.Q4_0, t.type(), t.source() + " at " + bits + " bits");
                assertTrue(t.direct(), t.source());
                assertEquals(0.0, t.maxAbsChange(), t.source());
                if (!t.name().contains(".attn_q.") && !t.name().contains(".attn_k.")) { // q/k rows are permuted for llama.cpp
                    assertArrayEquals(GptqCheckpointTest.expected(results.get(t.source())), GgmlCodec.dequantize(g.tensor(t.name())), t.name());
                }
            }
        }
        assertEquals(results.size(), linears);
    }
}
