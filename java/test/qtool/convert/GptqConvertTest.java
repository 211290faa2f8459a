package qtool.convert;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;
import qtool.load.Json;

/** {@code qtool convert --format gptq} end to end on the CPU backend. */
class GptqConvertTest {

    private static List<String> convertArgs(Path in, Path work, String... extra) {
        List<String> a = new ArrayList<>(List.of("convert", "--format", "gptq", "-i", in.toString(), "-o", work.toString(),
                "-c", Shared.require("data/calibration-mix.parquet").toString(), "-r", "8", "-l", "128", "--batch", "4",
                "--bits", "4", "--group-size", "32", "--act-order", "--asym", "--checkpoint-format", "gptq_v2", "--device", "cpu"));
        a.addAll(List.of(extra));
        return a;
    }

    /** A synth model whose shapes GPTQ can pack (stories260K's 172-wide MLP cannot be), with stories260K's tokenizer. */
    private static Path synth(Path dir) {
        Path m = dir.resolve("synth");
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "128", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    @Test
    void convertsStories260kAndEvaluatesTheResult(@TempDir Path dir) {
        Path in = Shared.require("models/stories260K");
        Path work = dir.resolve("work");
        CliRun c = CliRun.of(convertArgs(in, work, "--json").toArray(String[]::new));
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> summary = Json.object(Json.parse(c.out(), "summary"), "summary");
        double calPpl = ((Number) summary.get("calibration_ppl")).doubleValue();
        assertTrue(Double.isFinite(calPpl) && calPpl > 1, "calibration ppl " + calPpl);
        // the 172-wide MLP cannot be packed: kept on its grid in fp16, and said so
        assertTrue(Json.array(summary.get("warnings"), "warnings").stream().anyMatch(w -> String.valueOf(w).contains("cannot be packed")), c.out());
        // ‖WX − QX‖² / ‖WX‖² of every linear on its calibration inputs: 5 layers × 7, small but not 0 at 4 bits
        Map<String, Object> errors = Json.object(summary.get("relative_errors"), "relative_errors");
        assertEquals(35, errors.size(), errors.keySet().toString());
        assertTrue(errors.containsKey("model.layers.4.mlp.down_proj"));
        for (var e : errors.entrySet()) {
            double v = ((Number) e.getValue()).doubleValue();
            assertTrue(v > 1e-5 && v < 0.2, e.toString());
        }

        Path out = work.resolve("out");
        Map<String, Object> qc = Json.object(Json.readObject(out.resolve("config.json")).get("quantization_config"), "qc");
        assertEquals("gptq", qc.get("quant_method"));
        assertEquals(4L, qc.get("bits"));
        assertEquals(32L, qc.get("group_size"));
        assertEquals(true, qc.get("desc_act"));
        assertEquals(false, qc.get("sym"));
        assertEquals("gptq_v2", qc.get("checkpoint_format"));
        assertTrue(Json.object(qc.get("dynamic"), "dynamic").keySet().stream().anyMatch(k -> k.startsWith("-:") && k.contains("mlp")));
        assertTrue(Files.isRegularFile(out.resolve("quantize_config.json")));
        assertTrue(Files.isRegularFile(out.resolve("tokenizer.json")));

        String data = Shared.require("data/wikitext-2-raw-v1_test.parquet").toString();
        CliRun q = CliRun.of("ppl", "-m", out.toString(), "-d", data, "--ctx", "256", "--windows", "8", "--json", "--device", "cpu");
        CliRun base = CliRun.of("ppl", "-m", in.toString(), "-d", data, "--ctx", "256", "--windows", "8", "--json", "--device", "cpu");
        assertEquals(0, q.exitCode(), q.err());
        double pq = ((Number) Json.object(Json.parse(q.out(), "q"), "q").get("ppl")).doubleValue();
        double pb = ((Number) Json.object(Json.parse(base.out(), "b"), "b").get("ppl")).doubleValue();
        assertTrue(pq >= pb * 0.98 && pq < pb * 1.5, "quantized ppl " + pq + " vs " + pb);
    }

    @Test
    void withoutCalibrationTextTheModelWritesItsOwn(@TempDir Path dir) throws Exception {
        Path in = Shared.require("models/stories260K");
        Path work = dir.resolve("work");
        CliRun c = CliRun.of("convert", "--format", "gptq", "-i", in.toString(), "-o", work.toString(), "-r", "5", "-l", "48", "--bits", "4", "--group-size", "32",
                "--device", "cpu", "--json");
        assertEquals(0, c.exitCode(), c.err());
        Map<String, Object> cal = Json.object(Json.object(Json.readObject(work.resolve("job.json")).get("progress"), "progress").get("calibration"), "cal");
        assertTrue(String.valueOf(cal.get("source")).startsWith("generated by the model"), cal.toString());
        byte[] tokens = Files.readAllBytes(work.resolve("calibration.i32"));
        assertEquals(5 * 48 * 4, tokens.length);
        // the sampled rows start with BOS (stories260K adds it); the two random rows at the end do not have to
        java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(tokens).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        for (int r = 0; r < 3; r++) assertEquals(1, b.getInt(r * 48 * 4), "row " + r);
        // deterministic: the same seed gives the same set
        Path again = dir.resolve("again");
        assertEquals(0, CliRun.of("convert", "--format", "gptq", "-i", in.toString(), "-o", again.toString(), "-r", "5", "-l", "48", "--bits", "4",
                "--group-size", "32", "--device", "cpu").exitCode());
        assertArrayEquals(tokens, Files.readAllBytes(again.resolve("calibration.i32")));
    }

    @Test
    void packedSynthModelRoundTripsThroughPpl(@TempDir Path dir) {
        Path in = synth(dir);
        Path work = dir.resolve("work");
        CliRun c = CliRun.of(convertArgs(in, work, "--true-sequential", "-cf", dir.resolve("full").toString()).toArray(String[]::new));
        assertEquals(0, c.exitCode(), c.err());
        assertFalse(c.out().contains("cannot be packed"), c.out());
        Path full = dir.resolve("full");
        assertTrue(Files.isRegularFile(full.resolve("model.safetensors")));
        CliRun p = CliRun.of("ppl", "-m", full.toString(), "-d", Shared.require("data/wiki.test.raw").toString(), "--ctx", "64", "--windows", "2",
                "--device", "cpu");
        assertEquals(0, p.exitCode(), p.err());
    }

    @Test
    void anInterruptedJobResumesToTheSameBytes(@TempDir Path dir) throws Exception {
        Path in = synth(dir);
        Path whole = dir.resolve("whole"), broken = dir.resolve("broken");
        assertEquals(0, CliRun.of(convertArgs(in, whole).toArray(String[]::new)).exitCode());

        // the same job in a child JVM, killed part way, then finished in this one
        List<String> cmd = new ArrayList<>(List.of(ProcessHandle.current().info().command().orElse("java"), "--enable-native-access=ALL-UNNAMED",
                "-cp", System.getProperty("java.class.path"), "qtool.cli.Main"));
        cmd.addAll(convertArgs(in, broken));
        for (long delayMs : new long[] {700, 1400}) {
            Process child = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(dir.resolve("child.log").toFile()).start();
            Thread.sleep(delayMs);
            child.destroyForcibly().waitFor();
        }
        CliRun resumed = CliRun.of(convertArgs(in, broken).toArray(String[]::new));
        assertEquals(0, resumed.exitCode(), resumed.err());
        for (String f : List.of("model.safetensors", "config.json", "quantize_config.json")) {
            assertArrayEquals(Files.readAllBytes(whole.resolve("out").resolve(f)), Files.readAllBytes(broken.resolve("out").resolve(f)), f);
        }
    }

    @Test
    void refusesBadJobs(@TempDir Path dir) throws Exception {
        Path in = synth(dir);
        Path work = dir.resolve("work");
        assertEquals(0, CliRun.of(convertArgs(in, work).toArray(String[]::new)).exitCode());
        // same WORK, other settings
        CliRun other = CliRun.of(convertArgs(in, work, "--bits", "8").toArray(String[]::new));
        assertEquals(2, other.exitCode());
        assertTrue(other.err().contains("another job's state"), other.err());
        // a directory that is not a job
        Path stray = dir.resolve("stray");
        Files.createDirectories(stray);
        Files.writeString(stray.resolve("notes.txt"), "mine");
        CliRun notJob = CliRun.of(convertArgs(in, stray).toArray(String[]::new));
        assertEquals(2, notJob.exitCode());
        assertTrue(notJob.err().contains("not a qtool job directory"), notJob.err());
        // -cf into a folder with foreign files
        CliRun cf = CliRun.of(convertArgs(in, work, "-cf", stray.toString()).toArray(String[]::new));
        assertEquals(2, cf.exitCode());
        assertTrue(cf.err().contains("did not write"), cf.err());
        // bits, calibration size
        CliRun bits = CliRun.of(convertArgs(in, dir.resolve("w2"), "--bits", "5").toArray(String[]::new));
        assertEquals(2, bits.exitCode(), bits.err());
        CliRun tooFew = CliRun.of(convertArgs(in, dir.resolve("w3"), "-r", "100000").toArray(String[]::new));
        assertEquals(2, tooFew.exitCode(), tooFew.err());
        assertTrue(tooFew.err().contains("fewer than rows"), tooFew.err());
        // -nr wipes and starts over
        assertEquals(0, CliRun.of(convertArgs(in, work, "--bits", "8", "-nr").toArray(String[]::new)).exitCode());
        try (Stream<Path> s = Files.list(work)) {
            assertTrue(s.anyMatch(p -> p.getFileName().toString().equals("out")));
        }
    }
}
