package qtool.convert.exl2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;
import qtool.load.Json;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Params;

/** {@code qtool convert} (EXL2) end to end on the CPU backend, on a small synth model. */
class Exl2ConvertTest {

    private static List<String> args(Path in, Path work, String... extra) {
        List<String> a = new ArrayList<>(List.of("convert", "-i", in.toString(), "-o", work.toString(),
                "-c", Shared.require("data/calibration-mix.parquet").toString(), "-r", "4", "-l", "32", "-mr", "2", "-ml", "32",
                "-b", "4.0", "--batch", "2", "--device", "cpu"));
        a.addAll(List.of(extra));
        return a;
    }

    private static Path synth(Path dir, String name, int intermediate) {
        Path m = dir.resolve(name);
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                "--intermediate", Integer.toString(intermediate), "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    @Test
    void convertsAtFourBitsAndTheResultEvaluates(@TempDir Path dir) {
        Path in = synth(dir, "synth", 128), work = dir.resolve("work");
        CliRun c = CliRun.of(args(in, work, "--json", "-cf", dir.resolve("full").toString()).toArray(String[]::new));
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> summary = Json.object(Json.parse(c.out(), "summary"), "summary");
        double bpw = ((Number) summary.get("bits_per_weight")).doubleValue();
        assertTrue(bpw <= 4.0 && bpw > 3.9, "bpw " + bpw);
        assertTrue(((Number) summary.get("calibration_ppl")).doubleValue() > 1);

        Path full = dir.resolve("full");
        Map<String, Object> qc = Json.object(Json.readObject(full.resolve("config.json")).get("quantization_config"), "qc");
        assertEquals("exl2", qc.get("quant_method"));
        assertEquals(6L, qc.get("head_bits"));
        assertEquals(Map.of("rows", 4L, "length", 32L, "dataset", "calibration-mix.parquet"), qc.get("calibration"));
        assertTrue(Files.isRegularFile(full.resolve("tokenizer.json")));
        CliRun p = CliRun.of("ppl", "-m", full.toString(), "-d", Shared.require("data/wiki.test.raw").toString(), "--ctx", "64", "--windows", "2",
                "--device", "cpu");
        assertEquals(0, p.exitCode(), p.err());

        // the measurement written alone (-om) and reused (-m) gives the same model
        Path m = dir.resolve("m.json");
        assertEquals(0, CliRun.of(args(in, dir.resolve("w2"), "-om", m.toString()).toArray(String[]::new)).exitCode());
        assertArrayEquals(bytes(work.resolve("measurement.json")), bytes(m));
        CliRun reuse = CliRun.of(args(in, dir.resolve("w3"), "-m", m.toString()).toArray(String[]::new));
        assertEquals(0, reuse.exitCode(), reuse.err());
        assertArrayEquals(bytes(work.resolve("out/model.safetensors")), bytes(dir.resolve("w3/out/model.safetensors")));
    }

    @Test
    void anInterruptedJobResumesToTheSameBytes(@TempDir Path dir) throws Exception {
        Path in = synth(dir, "synth", 128);
        Path whole = dir.resolve("whole"), broken = dir.resolve("broken");
        assertEquals(0, CliRun.of(args(in, whole).toArray(String[]::new)).exitCode());
        // the same job in a child JVM, killed once a block of measurement and then one of quantization is committed
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElse("java"), "--enable-native-access=ALL-UNNAMED",
                "--add-modules", "jdk.incubator.vector", "-cp", System.getProperty("java.class.path"), "qtool.cli.Main"));
        cmd.addAll(args(in, broken));
        for (String key : List.of("measured_blocks", "quantized_blocks")) {
            Process child = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(dir.resolve("child.log").toFile()).start();
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (child.isAlive() && !progressHas(broken, key) && System.nanoTime() < deadline) Thread.sleep(20);
            child.destroyForcibly().waitFor();
        }
        CliRun resumed = CliRun.of("convert", "-o", broken.toString(), "--device", "cpu");  // settings come from job.json
        assertEquals(0, resumed.exitCode(), resumed.err());
        for (String f : List.of("model.safetensors", "config.json")) {
            assertArrayEquals(bytes(whole.resolve("out").resolve(f)), bytes(broken.resolve("out").resolve(f)), f);
        }
        assertArrayEquals(bytes(whole.resolve("measurement.json")), bytes(broken.resolve("measurement.json")));
    }

    @Test
    void awqScaleMeasuresAndQuantizesTheScaledModel(@TempDir Path dir) {
        Path in = synth(dir, "synth", 128), work = dir.resolve("work");
        CliRun c = CliRun.of(args(in, work, "--awq-scale").toArray(String[]::new));
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> settings = Json.object(Json.readObject(work.resolve("job.json")).get("settings"), "settings");
        assertEquals(true, settings.get("awq_scale"));
        Path scaled = work.resolve("awq_model");
        // the scaled model computes what the input does (fp16 rounding of the scaled tensors aside) ...
        double[] ppl = new double[2];
        for (int k = 0; k < 2; k++) {
            CliRun p = CliRun.of("ppl", "-m", (k == 0 ? in : scaled).toString(), "-d", Shared.require("data/wiki.test.raw").toString(), "--ctx", "64",
                    "--windows", "2", "--device", "cpu", "--json");
            assertEquals(0, p.exitCode(), p.err());
            ppl[k] = ((Number) Json.object(Json.parse(p.out(), "ppl"), "ppl").get("ppl")).doubleValue();
        }
        assertEquals(ppl[0], ppl[1], 1e-4 * ppl[0], "perplexity of the input and of the AWQ-scaled model");
        // ... with other weights: the norms divided by the scales, and those are what the EXL2 output carries
        try (LlamaModel a = LlamaModel.open(in); LlamaModel b = LlamaModel.open(scaled); LlamaModel q = LlamaModel.open(work.resolve("out"))) {
            float[] before = a.layer(0).inputNorm().toFloatArray(), after = b.layer(0).inputNorm().toFloatArray();
            assertTrue(!java.util.Arrays.equals(before, after), "input_layernorm was scaled");
            assertArrayEquals(after, q.layer(0).inputNorm().toFloatArray());
        }
        assertTrue(!Files.exists(work.resolve("awq_layers")), "the per-layer files are gone once awq_model is whole");
    }

    @Test
    void refusesBadInput(@TempDir Path dir) throws Exception {
        Path in = synth(dir, "synth", 128), other = synth(dir, "other", 192);
        CliRun hb = CliRun.of(args(in, dir.resolve("w1"), "-hb", "7").toArray(String[]::new));
        assertEquals(2, hb.exitCode());
        assertTrue(hb.err().contains("-hb must be one of [2, 3, 4, 5, 6, 8]"), hb.err());

        Path m = dir.resolve("m.json");
        assertEquals(0, CliRun.of(args(in, dir.resolve("w2"), "-om", m.toString()).toArray(String[]::new)).exitCode());
        CliRun wrong = CliRun.of(args(other, dir.resolve("w3"), "-m", m.toString()).toArray(String[]::new));
        assertEquals(2, wrong.exitCode());
        assertTrue(wrong.err().contains("mlp") && wrong.err().contains("measured on another model"), wrong.err());

        Files.writeString(dir.resolve("w2/job.json"), "{\"settings\": {\"format\": \"exl2\", \"bits\": ");
        CliRun corrupt = CliRun.of("convert", "-o", dir.resolve("w2").toString(), "--device", "cpu");
        assertEquals(2, corrupt.exitCode());
        assertTrue(corrupt.err().contains("corrupted job state"), corrupt.err());

        CliRun range = CliRun.of(args(in, dir.resolve("w4"), "-m", m.toString(), "-b", "1.5").toArray(String[]::new));
        assertEquals(2, range.exitCode());
        assertTrue(range.err().contains("outside the reachable range"), range.err());
    }

    /** A measurement.json as ExLlamaV2 writes it (json.dumps indent 4; ints for "[1]", int keys as strings) loads. */
    @Test
    void readsExLlamaV2Measurement(@TempDir Path dir) throws Exception {
        Path in = synth(dir, "synth", 128);
        StringBuilder sb = new StringBuilder("{\n    \"measurement\": {\n");
        try (LlamaModel model = LlamaModel.open(in)) {
            for (int k = 0; k < 4; k++) {
                boolean attn = k % 2 == 0;
                List<String> ls = attn ? Measurement.ATTENTION : Measurement.MLP;
                String opt = attn ? "{\n                    \"group_size\": {\n                        \"4\": 128\n                    },\n"
                        + "                    \"bits\": [\n                        4\n                    ],\n                    \"bits_prop\": [\n"
                        + "                        1\n                    ],\n                    \"scale_bits\": 4\n                }"
                        : "{\"group_size\": {\"8\": 32, \"4\": 128}, \"bits\": [8, 4], \"bits_prop\": [0.05, 0.95], \"scale_bits\": 4}";
                Exl2Params p = attn ? Exl2Params.parse("1:4b_128g") : Exl2Params.parse("0.05:8b_32g/0.95:4b_128g");
                long bits = 0;
                for (String l : ls) {
                    int[] s = Measurement.linearShape(model.config, l);
                    bits += p.totalBits(s[1], Exl2Params.paddedColumns(s[0]), false);
                }
                sb.append("        \"").append(Measurement.blockKey(k)).append("\": [\n            {\n                \"accuracy\": 0.9876,\n")
                        .append("                \"total_bits\": ").append(bits).append(",\n");
                for (int j = 0; j < ls.size(); j++) sb.append("                \"").append(ls.get(j)).append("\": ").append(opt).append(j + 1 < ls.size() ? ",\n" : "\n");
                sb.append("            }\n        ],\n");
            }
            sb.append("        \"model.norm.norm\": null,\n        \"lm_head.linear\": null\n    },\n    \"last_module_idx\": 6\n}");
            Path f = dir.resolve("exl2.json");
            Files.writeString(f, sb.toString());
            Measurement m = Measurement.read(f, model, false);
            assertEquals(4, m.blocks().size());
            assertEquals("1:4b_128g s4", m.blocks().get(0).entries().get(0).options().get("q_proj").desc());
            // written back in the same schema, and read again to the same values
            Path back = dir.resolve("back.json");
            m.write(back);
            Map<String, Object> root = Json.readObject(back);
            assertEquals(6L, root.get("last_module_idx"));
            assertEquals(Json.write(Json.readObject(f)), Json.write(root));
            assertEquals(m, Measurement.read(back, model, false));
        }
    }

    private static boolean progressHas(Path work, String key) {
        try {
            return Json.object(Json.readObject(work.resolve("job.json")).get("progress"), "p").get(key) != null;
        } catch (RuntimeException e) {
            return false;
        }
    }

    private static byte[] bytes(Path p) {
        try {
            return Files.readAllBytes(p);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
