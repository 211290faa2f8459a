package qtool.convert;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;
import qtool.format.awq.AwqCheckpoint;
import qtool.load.DType;
import qtool.load.Json;
import qtool.model.LlamaModel;
import qtool.write.SafetensorsWriter;

/** {@code qtool convert --format awq} end to end on the CPU backend, and the AWQ checkpoint read back. */
class AwqConvertTest {

    private static CliRun convert(Path in, Path work, String... extra) {
        List<String> a = new ArrayList<>(List.of("convert", "--format", "awq", "-i", in.toString(), "-o", work.toString(),
                "-c", Shared.require("data/calibration-mix.parquet").toString(), "-r", "4", "-l", "32", "--batch", "4",
                "--w-bit", "4", "--q-group-size", "32", "--device", "cpu", "--json"));
        a.addAll(List.of(extra));
        return CliRun.of(a.toArray(String[]::new));
    }

    /** Shapes the GEMM layout packs whole (outputs multiples of 8, inputs of 32), no grouped-query attention. */
    private static Path synth(Path dir) {
        Path m = dir.resolve("synth");
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "4",
                "--intermediate", "128", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    @Test
    void writesAnAutoAwqGemmCheckpointThatReadsBack(@TempDir Path dir) throws Exception {
        Path work = dir.resolve("work"), in = synth(dir);
        CliRun c = convert(in, work);
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> summary = Json.object(Json.parse(c.out(), "summary"), "summary");
        assertEquals("awq", summary.get("format"));
        double calPpl = ((Number) summary.get("calibration_ppl")).doubleValue();
        assertTrue(Double.isFinite(calPpl) && calPpl > 1, "calibration ppl " + calPpl);
        assertTrue(Json.array(summary.get("warnings"), "warnings").isEmpty(), c.out());

        Path out = work.resolve("out");
        Map<String, Object> qc = Json.object(Json.readObject(out.resolve("config.json")).get("quantization_config"), "qc");
        assertEquals("awq", qc.get("quant_method"));
        assertEquals(4L, qc.get("bits"));
        assertEquals(32L, qc.get("group_size"));
        assertEquals(true, qc.get("zero_point"));
        assertEquals("gemm", qc.get("version"));
        assertNull(qc.get("modules_to_not_convert"));
        Map<String, Object> legacy = Json.readObject(out.resolve("quant_config.json"));
        assertEquals(4L, legacy.get("w_bit"));
        assertEquals(32L, legacy.get("q_group_size"));
        assertEquals("GEMM", legacy.get("version"));

        try (LlamaModel m = LlamaModel.open(out)) {
            assertTrue(m.awq != null && m.awq.isQuantized("model.layers.1.mlp.down_proj"));
            var qw = m.weights.get("model.layers.1.mlp.down_proj.qweight");
            assertEquals(DType.I32, qw.dtype());
            assertEquals(List.of(128L, 8L), List.of(qw.shape()[0], qw.shape()[1]));  // [in, out / 8]
            assertEquals(List.of(4L, 64L), List.of(m.weights.get("model.layers.1.mlp.down_proj.scales").shape()[0],
                    m.weights.get("model.layers.1.mlp.down_proj.scales").shape()[1]));
            independentReaderAgrees(m, out, dir);
        }

        String data = Shared.require("data/wikitext-2-raw-v1_test.parquet").toString();
        CliRun q = CliRun.of("ppl", "-m", out.toString(), "-d", data, "--ctx", "32", "--windows", "4", "--json", "--device", "cpu");
        assertEquals(0, q.exitCode(), q.err());
        double ppl = ((Number) Json.object(Json.parse(q.out(), "q"), "q").get("ppl")).doubleValue();
        assertTrue(Double.isFinite(ppl), "ppl " + ppl);

        // a finished job reruns to the same bytes without converting again
        byte[] before = Files.readAllBytes(out.resolve("model.safetensors"));
        CliRun again = convert(in, work);
        assertEquals(0, again.exitCode(), again.err());
        assertTrue(java.util.Arrays.equals(before, Files.readAllBytes(out.resolve("model.safetensors"))));
    }

    /**
     * scripts/gpu/awq_independent_check.py (AutoAWQ's unpacking, numpy or torch) against qtool's dequantizer, when
     * python3 with numpy is on this machine.
     */
    private static void independentReaderAgrees(LlamaModel m, Path out, Path dir) throws Exception {
        Path script = Path.of("scripts/gpu/awq_independent_check.py");
        if (!hasNumpy()) return;
        Path ref = dir.resolve("qtool-weights");
        Files.createDirectories(ref);
        AwqCheckpoint awq = m.awq;
        try (SafetensorsWriter w = new SafetensorsWriter(ref, 0)) {
            for (int i = 0; i < m.config.numLayers(); i++) {
                for (String l : LlamaModel.Layer.LINEARS) {
                    String p = LlamaModel.prefix(i) + l;
                    int[] shape = awq.shape(p);
                    w.add(p + ".weight", DType.F32, new long[] {shape[0], shape[1]}, littleEndian(awq.dequantize(p)));
                }
            }
        }
        Process proc = new ProcessBuilder("python3", script.toString(), out.toString(), ref.resolve("model.safetensors").toString())
                .redirectErrorStream(true).start();
        assertTrue(proc.waitFor(60, TimeUnit.SECONDS));
        String text = new String(proc.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
        assertEquals(0, proc.exitValue(), text);
        Map<String, Object> r = Json.object(Json.parse(text.lines().reduce((a, b) -> b).orElseThrow(), "check"), "check");
        assertEquals(14L, r.get("linears"));
        assertEquals(0.0, ((Number) r.get("max_abs_difference")).doubleValue(), text);
    }

    private static boolean hasNumpy() {
        try {
            Process p = new ProcessBuilder("python3", "-c", "import numpy").redirectErrorStream(true).start();
            return p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (Exception e) {
            return false;
        }
    }

    private static MemorySegment littleEndian(float[] v) {
        MemorySegment bytes = MemorySegment.ofArray(new byte[v.length * 4]);
        MemorySegment.copy(v, 0, bytes, ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, v.length);
        return bytes;
    }

    @Test
    void raggedShapesAreStoredOnTheirGridAndNamedInModulesToNotConvert(@TempDir Path dir) {
        Path work = dir.resolve("work");
        CliRun c = convert(Shared.require("models/stories260K"), work, "-r", "1");
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> summary = Json.object(Json.parse(c.out(), "summary"), "summary");
        List<Object> warnings = Json.array(summary.get("warnings"), "warnings");
        assertTrue(warnings.stream().anyMatch(w -> String.valueOf(w).startsWith("v_proj→o_proj not scaled")), warnings.toString());
        assertTrue(warnings.stream().anyMatch(w -> String.valueOf(w).contains("mlp.down_proj: stored as fp16")), warnings.toString());
        Map<String, Object> qc = Json.object(Json.readObject(work.resolve("out/config.json")).get("quantization_config"), "qc");
        assertEquals(List.of("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), qc.get("modules_to_not_convert"));
        try (LlamaModel m = LlamaModel.open(work.resolve("out"))) {
            assertTrue(m.awq.isQuantized("model.layers.0.self_attn.q_proj"));
            assertTrue(m.weights.has("model.layers.0.mlp.down_proj.weight"));
        }
    }

    @Test
    void refusesWhatTheLayoutCannotHold(@TempDir Path dir) {
        Path in = Shared.require("models/stories260K");
        CliRun c = convert(in, dir.resolve("w"), "--w-bit", "3");
        assertEquals(2, c.exitCode());
        assertTrue(c.err().contains("4-bit codes only"), c.err());
        CliRun s = CliRun.of("convert", "--format", "awq", "--awq-scale", "-i", in.toString(), "-o", dir.resolve("w2").toString());
        assertEquals(2, s.exitCode());
        assertTrue(s.err().contains("--awq-scale goes with --format gptq"), s.err());
    }
}
