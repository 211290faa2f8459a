package qtool.format.gptq;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker.PackedLinear;
import qtool.load.DType;
import qtool.load.Json;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.GptqTestData;
import qtool.write.SafetensorsWriter;

class GptqCheckpointTest {
    static final String Q = "model.layers.0.self_attn.q_proj";
    static final String DOWN = "model.layers.0.mlp.down_proj";
    static final String GATE = "model.layers.0.mlp.gate_proj";

    static GptqResult quantize(int out, int in, GptqParams p, long seed) {
        float[] w = GptqTestData.weights(out, in, seed);
        float[] x = GptqTestData.correlatedInputs(2 * in, in, seed + 1);
        return Gptq.quantize(w, out, in, GptqTestData.hessian(x, 2 * in, in), p);
    }

    /** w[o, i] from the result's codes with fp16-rounded scales: what the checkpoint must give back exactly. */
    static float[] expected(GptqResult r) {
        float[] w = new float[r.out() * r.in()];
        for (int o = 0; o < r.out(); o++) {
            for (int i = 0; i < r.in(); i++) {
                int g = r.gIdx()[i] * r.out() + o;
                w[o * r.in() + i] = Float.float16ToFloat(Float.floatToFloat16(r.scales()[g])) * (r.code(o, i) - r.zeros()[g]);
            }
        }
        return w;
    }

    @Test
    void writesAndReadsBackMixedBitsBiasAndAnUnquantizedModule(@TempDir Path dir) {
        for (CheckpointFormat format : CheckpointFormat.values()) {
            Path out = dir.resolve(format.configName);
            GptqParams base = GptqParams.of(4).withActOrder(true).withSym(false);
            GptqParams down = base.withBits(3).withGroupSize(32);
            GptqResult q = quantize(64, 128, base, 1);
            GptqResult d = quantize(32, 96, down, 2);
            float[] bias = new float[64];
            for (int k = 0; k < bias.length; k++) bias[k] = k * 0.25f;
            float[] gate = GptqTestData.weights(32, 64, 3);
            try (SafetensorsWriter w = new SafetensorsWriter(out, 0)) {
                PackedLinear pq = GptqCheckpoint.writeLinear(w, Q, q, bias, format);
                GptqCheckpoint.writeLinear(w, DOWN, d, null, format);
                short[] half = new short[gate.length];
                for (int k = 0; k < half.length; k++) half[k] = Float.floatToFloat16(gate[k]);
                w.add(GATE + ".weight", DType.F16, new long[] {32, 64}, GptqCheckpoint.littleEndian(half));
                assertEquals(64 * 128 * 4 / 32, pq.qweight().length);
            }
            Map<String, Object> qc = GptqCheckpoint.quantizationConfig(base, Map.of(Q, base, DOWN, down), List.of(GATE), format, true);
            GptqCheckpoint.writeConfigs(out, Map.of("model_type", "llama"), qc);

            assertTrue(GptqCheckpoint.isGptq(out));
            try (GptqCheckpoint c = GptqCheckpoint.open(out)) {
                GptqCheckpoint.Config config = c.config();
                assertEquals(4, config.bits());
                assertEquals(128, config.groupSize());
                assertTrue(config.descAct());
                assertFalse(config.sym());
                assertEquals(format, config.format());
                assertEquals(3, config.forModule(DOWN).orElseThrow().bits());
                assertEquals(32, config.forModule(DOWN).orElseThrow().groupSize());
                assertTrue(config.forModule(GATE).isEmpty());
                assertEquals(4, config.forModule(Q).orElseThrow().bits());
                assertEquals(List.of(Q, DOWN), c.quantizedLinears());

                assertArrayEquals(expected(q), c.dequantize(Q));
                assertArrayEquals(expected(d), c.dequantize(DOWN));
                assertArrayEquals(new int[] {64, 128}, c.shape(Q));
                assertArrayEquals(new int[] {32, 96}, c.shape(DOWN));
                assertArrayEquals(bias, c.bias(Q));
                assertEquals(null, c.bias(DOWN));
                float[] g = c.dequantize(GATE);
                for (int k = 0; k < g.length; k++) assertEquals(Float.float16ToFloat(Float.floatToFloat16(gate[k])), g[k]);
                assertArrayEquals(q.gIdx(), c.read(Q).gIdx());
            }
            Map<String, Object> written = Json.readObject(out.resolve("quantize_config.json"));
            assertEquals("gptq", written.get("quant_method"));
            assertEquals(format.configName, written.get("checkpoint_format"));
            assertEquals(0.01, written.get("damp_percent"));
            assertEquals(Boolean.FALSE, written.get("static_groups"));
            assertEquals(Boolean.TRUE, written.get("true_sequential"));
            Map<String, Object> dynamic = Json.object(written.get("dynamic"), "dynamic");
            assertEquals(List.of("-:model\\.layers\\.0\\.mlp\\.gate_proj$", "+:model\\.layers\\.0\\.mlp\\.down_proj$"), List.copyOf(dynamic.keySet()));
            assertEquals(Map.of("bits", 3L, "group_size", 32L), dynamic.get("+:model\\.layers\\.0\\.mlp\\.down_proj$"));
            Map<String, Object> config = Json.readObject(out.resolve("config.json"));
            assertEquals("llama", config.get("model_type"));
            assertEquals(written, config.get("quantization_config"));
        }
    }

    @Test
    void uniformConfigHasNoDynamic() {
        GptqParams p = GptqParams.of(4);
        Map<String, Object> qc = GptqCheckpoint.quantizationConfig(p, Map.of(Q, p), List.of(), CheckpointFormat.GPTQ, true);
        assertFalse(qc.containsKey("dynamic"));
        assertEquals(128, qc.get("group_size"));
        assertEquals(Boolean.TRUE, qc.get("sym"));
        assertEquals(Boolean.FALSE, qc.get("desc_act"));
    }

    static GptqCheckpoint.Config parse(String json) {
        return GptqCheckpoint.parseConfig(Json.object(Json.parse(json, "test"), "test"), "test");
    }

    @Test
    void readsConfigVariants() {
        GptqCheckpoint.Config c = parse("{\"bits\": 4, \"group_size\": 128, \"desc_act\": true, \"sym\": true}");
        assertEquals(CheckpointFormat.GPTQ, c.format(), "no checkpoint_format: v1");
        c = parse("{\"method\": \"gptq\", \"format\": \"gptq_v2\", \"bits\": 3, \"group_size\": -1, \"pack_dtype\": \"int32\"}");
        assertEquals(CheckpointFormat.GPTQ_V2, c.format());
        assertEquals(-1, c.groupSize());
        assertTrue(c.sym(), "sym defaults to true");
        assertFalse(c.descAct());

        // Rules are tried in file order, the first match decides (GPTQModel's dynamic_get); re.match anchors at the start.
        c = parse("""
                {"quant_method": "gptq", "bits": 4, "group_size": 128,
                 "dynamic": {"-:model\\\\.layers\\\\.1\\\\.mlp": {},
                             ".*\\\\.mlp\\\\..*": {"bits": 8, "group_size": 32},
                             "+:.*\\\\.self_attn\\\\.q_proj": {"bits": 2},
                             "-:model\\\\.layers\\\\.2\\\\.mlp": {},
                             "+:layers\\\\.3\\\\.": {"bits": 8}}}""");
        assertEquals(8, c.forModule("model.layers.0.mlp.down_proj").orElseThrow().bits());
        assertEquals(32, c.forModule("model.layers.0.mlp.down_proj").orElseThrow().groupSize());
        assertTrue(c.forModule("model.layers.1.mlp.down_proj").isEmpty());
        assertEquals(8, c.forModule("model.layers.2.mlp.down_proj").orElseThrow().bits(), "an earlier positive rule wins");
        assertEquals(2, c.forModule("model.layers.3.self_attn.q_proj").orElseThrow().bits());
        assertEquals(128, c.forModule("model.layers.3.self_attn.q_proj").orElseThrow().groupSize());
        assertEquals(4, c.forModule("model.layers.3.self_attn.k_proj").orElseThrow().bits(), "re.match anchors at the start");
    }

    @Test
    void rejectsWhatItCannotRead() {
        assertMessage("quant_method is 'awq'", () -> parse("{\"quant_method\": \"awq\", \"bits\": 4}"));
        assertMessage("checkpoint_format 'marlin'", () -> parse("{\"bits\": 4, \"checkpoint_format\": \"marlin\"}"));
        assertMessage("bits = 5", () -> parse("{\"bits\": 5}"));
        assertMessage("dynamic '+:x' bits", () -> parse("{\"bits\": 4, \"dynamic\": {\"+:x\": {\"bits\": 6}}}"));
        assertMessage("not a valid regex", () -> parse("{\"bits\": 4, \"dynamic\": {\"+:(\": {\"bits\": 8}}}"));
        assertMessage("pack_dtype", () -> parse("{\"bits\": 4, \"pack_dtype\": \"int16\"}"));
        assertMessage("no 'bits'", () -> parse("{\"group_size\": 128}"));
    }

    @Test
    void shapesThatContradictTheConfigNameTheTensor(@TempDir Path dir) throws Exception {
        GptqResult r = quantize(32, 64, GptqParams.of(4).withGroupSize(32), 5);
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            GptqCheckpoint.writeLinear(w, Q, r, null, CheckpointFormat.GPTQ);
        }
        Files.writeString(dir.resolve("config.json"), "{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 8, \"group_size\": 32}}");
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            assertMessage(Q + ".qzeros", () -> c.dequantize(Q));
        }
        Files.writeString(dir.resolve("config.json"), "{\"quantization_config\": {\"bits\": 4, \"dynamic\": {\"-:.*q_proj\": {}}}}");
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            assertMessage("exclude it", () -> c.dequantize(Q));
        }
    }

    @Test
    void quantizeConfigJsonAloneAndNoConfigAtAll(@TempDir Path dir) throws Exception {
        GptqResult r = quantize(32, 64, GptqParams.of(2).withGroupSize(-1), 6);
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            GptqCheckpoint.writeLinear(w, Q, r, null, CheckpointFormat.GPTQ);
        }
        assertFalse(GptqCheckpoint.isGptq(dir));
        assertMessage("not a GPTQ checkpoint", () -> GptqCheckpoint.open(dir));
        Files.writeString(dir.resolve("config.json"), "{\"model_type\": \"llama\"}");
        Files.writeString(dir.resolve("quantize_config.json"), "{\"bits\": 2, \"group_size\": -1, \"desc_act\": false, \"sym\": true}");
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            assertEquals(dir.resolve("quantize_config.json").toString(), c.config().source());
            assertArrayEquals(expected(r), c.dequantize(Q));
        }
    }

    @Test
    void checkpointWithoutGIdxUsesIOverGroupSize(@TempDir Path dir) throws Exception {
        GptqResult r = quantize(32, 96, GptqParams.of(4).withGroupSize(32), 7); // no act-order: g_idx = i / 32
        PackedLinear p = GptqPacker.pack(Q, r, CheckpointFormat.GPTQ);
        try (SafetensorsWriter w = new SafetensorsWriter(dir, 0)) {
            w.add(Q + ".qweight", DType.I32, p.qweightShape(), GptqCheckpoint.littleEndian(p.qweight()));
            w.add(Q + ".qzeros", DType.I32, p.qzerosShape(), GptqCheckpoint.littleEndian(p.qzeros()));
            w.add(Q + ".scales", DType.F16, new long[] {p.groups(), p.out()}, GptqCheckpoint.littleEndian(p.scalesF16()));
        }
        Map<String, Object> qc = new LinkedHashMap<>(Map.of("bits", 4, "group_size", 32));
        Json.writeFile(dir.resolve("quantize_config.json"), qc);
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            assertArrayEquals(expected(r), c.dequantize(Q));
        }
        Json.writeFile(dir.resolve("quantize_config.json"), Map.of("bits", 4, "group_size", 64));
        try (GptqCheckpoint c = GptqCheckpoint.open(dir)) {
            assertMessage("no g_idx", () -> c.dequantize(Q));
        }
    }

    static void assertMessage(String part, org.junit.jupiter.api.function.Executable e) {
        QtoolException ex = assertThrows(QtoolException.class, e);
        assertTrue(ex.getMessage().contains(part), "'" + part + "' not in: " + ex.getMessage());
    }
}
