package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.ModelConfig;

/** {@code qtool gguf from-gptq} on GPTQ checkpoints made by {@code qtool convert} from a small synth model. */
class GptqToGgufTest {

    @TempDir
    Path dir;

    private Path synth() {
        Path m = dir.resolve("synth");
        if (m.toFile().isDirectory()) return m;
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "256", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    private Path gptq(String tag, String... extra) {
        Path work = dir.resolve("work-" + tag);
        List<String> a = new ArrayList<>(List.of("convert", "--format", "gptq", "-i", synth().toString(), "-o", work.toString(),
                "-c", Shared.require("data/calibration-mix.parquet").toString(), "-r", "4", "-l", "64", "--batch", "4",
                "--group-size", "32", "--device", "cpu"));
        a.addAll(List.of(extra));
        CliRun c = CliRun.of(a.toArray(String[]::new));
        assertEquals(0, c.exitCode(), c.err());
        return work.resolve("out");
    }

    /** Largest |GGUF weight − GPTQ dequantized weight (rows in llama.cpp's order)| over every GPTQ linear. */
    private static double compare(Path ckpt, Path gguf, List<GptqToGguf.Mapped> mapped) {
        double worst = 0;
        try (GptqCheckpoint ck = GptqCheckpoint.open(ckpt); GgufFile g = GgufFile.open(gguf)) {
            ModelConfig c = ModelConfig.parse(HfToGguf.configJson(ckpt), "config.json");
            for (GptqToGguf.Mapped m : mapped) {
                if (!m.gptq()) continue;
                float[] ref = ck.dequantize(m.source());
                float[] got = GgmlCodec.dequantize(g.tensor(m.name()));
                assertEquals(ref.length, got.length, m.name());
                int[] s = ck.shape(m.source());
                int heads = m.name().contains(".attn_q.") ? c.numHeads() : m.name().contains(".attn_k.") ? c.numKvHeads() : 0;
                double max = 0;
                for (int row = 0; row < s[0]; row++) {
                    int o = heads > 0 ? (int) HfToGguf.hfRowOf(row, c.headDim()) : row;
                    for (int i = 0; i < s[1]; i++) max = Math.max(max, Math.abs(got[row * s[1] + i] - ref[o * s[1] + i]));
                }
                assertEquals(m.maxAbsChange(), max, 1e-7, m.name() + ": reported change");
                worst = Math.max(worst, max);
            }
        }
        return worst;
    }

    private GptqToGguf.Result fromGptq(Path ckpt, Path out) {
        CliRun r = CliRun.of("gguf", "from-gptq", "-i", ckpt.toString(), "-o", out.toString());
        assertEquals(0, r.exitCode(), r.err());
        System.out.println(r.out().strip());
        return GptqToGguf.convert(ckpt, out, GptqToGguf.Options.defaults(), null);
    }

    @Test
    void symmetricFourBitIsQ40AndExact() {
        Path ckpt = gptq("sym4", "--bits", "4", "--sym");
        Path out = dir.resolve("sym4.gguf");
        GptqToGguf.Result r = fromGptq(ckpt, out);
        for (GptqToGguf.Mapped m : r.tensors()) {
            if (m.gptq()) {
                assertEquals(GgmlType.Q4_0, m.type(), m.name());
                assertNull(m.reason(), m.name());
            }
        }
        assertEquals(0.0, compare(ckpt, out, r.tensors()), "bit-exact");
        try (GgufFile g = GgufFile.open(out)) {
            assertEquals(LlamaFileType.Q4_0.id, ((Number) g.entries().get("general.file_type").value()).intValue());
            assertEquals(GgmlType.F16, g.tensor("token_embd.weight").type());
        }
        String story = SmolLm2GgufTest.complete(out, "Once upon a time");
        assertTrue(story.length() > "Once upon a time".length(), story);
    }

    @Test
    void symmetricV2AndEightBitAreExact() {
        Path v2 = gptq("sym4v2", "--bits", "4", "--sym", "--checkpoint-format", "gptq_v2");
        GptqToGguf.Result r = GptqToGguf.convert(v2, dir.resolve("v2.gguf"), GptqToGguf.Options.defaults(), null);
        assertTrue(r.tensors().stream().filter(GptqToGguf.Mapped::gptq).allMatch(m -> m.type() == GgmlType.Q4_0));
        assertEquals(0.0, compare(v2, dir.resolve("v2.gguf"), r.tensors()));

        Path b8 = gptq("sym8", "--bits", "8", "--sym");
        Path out8 = dir.resolve("b8.gguf");
        GptqToGguf.Result r8 = GptqToGguf.convert(b8, out8, GptqToGguf.Options.defaults(), null);
        assertTrue(r8.tensors().stream().filter(GptqToGguf.Mapped::gptq).allMatch(m -> m.type() == GgmlType.Q8_0 && m.reason() == null));
        assertEquals(0.0, compare(b8, out8, r8.tensors()));
        SmolLm2GgufTest.complete(out8, "Once upon a time");
    }

    @Test
    void asymmetricFourBitIsQ41UpToFp16() {
        Path ckpt = gptq("asym4", "--bits", "4", "--asym", "--checkpoint-format", "gptq_v2");
        Path out = dir.resolve("asym4.gguf");
        GptqToGguf.Result r = fromGptq(ckpt, out);
        double worstScale = 0;
        for (GptqToGguf.Mapped m : r.tensors()) {
            if (!m.gptq()) continue;
            assertEquals(GgmlType.Q4_1, m.type(), m.name());
            assertNull(m.reason());
        }
        try (GptqCheckpoint ck = GptqCheckpoint.open(ckpt)) {
            for (String p : ck.quantizedLinears()) for (float s : ck.read(p).scales()) worstScale = Math.max(worstScale, Math.abs(s));
        }
        double worst = compare(ckpt, out, r.tensors());
        // only m = −s·z is rounded to fp16: |error| ≤ half an fp16 ulp of s·15 (and the float sum's rounding)
        assertTrue(worst <= worstScale * 15 * Math.ulp(1f) * 8192 * 0.5 + 1e-6, "largest change " + worst + ", largest scale " + worstScale);
        System.out.printf("asym 4-bit -> Q4_1: largest change %.3g (largest scale %.3g)%n", worst, worstScale);
        SmolLm2GgufTest.complete(out, "Once upon a time");
    }

    @Test
    void actOrderAndTwoBitAreHandled() {
        Path ckpt = gptq("act", "--bits", "4", "--asym", "--act-order");
        Path out = dir.resolve("act.gguf");
        CliRun cli = CliRun.of("gguf", "from-gptq", "-i", ckpt.toString(), "-o", out.toString());
        assertEquals(0, cli.exitCode(), cli.err());
        assertTrue(cli.out().contains("0 of 14 GPTQ linears mapped directly, 14 requantized"), cli.out());
        java.io.ByteArrayOutputStream log = new java.io.ByteArrayOutputStream();
        GptqToGguf.Result r = GptqToGguf.convert(ckpt, out, GptqToGguf.Options.defaults(), new java.io.PrintStream(log, true));
        assertTrue(log.toString().contains("warning: model.layers.0.self_attn.q_proj requantized to Q5_0 (act-order: g_idx changes group inside a 32-block"), log.toString());
        for (GptqToGguf.Mapped m : r.tensors()) {
            if (!m.gptq()) continue;
            assertNotNull(m.reason(), m.name());
            // 128 columns fall back to Q5_0, ffn_down's 256 take Q4_K
            assertEquals(m.name().contains("ffn_down") ? GgmlType.Q4_K : GgmlType.Q5_0, m.type(), m.name());
            assertTrue(m.maxAbsChange() > 0);
        }
        double worst = compare(ckpt, out, r.tensors());
        System.out.printf("act-order 4-bit -> requantized: largest change %.3g%n", worst);
        SmolLm2GgufTest.complete(out, "Once upon a time");

        // 2-bit symmetric without act-order: every code fits Q4_0 exactly (q − 2 + 8 in 6..9)
        Path two = gptq("two", "--bits", "2", "--sym");
        GptqToGguf.Result r2 = GptqToGguf.convert(two, dir.resolve("two.gguf"), GptqToGguf.Options.defaults(), null);
        assertTrue(r2.tensors().stream().filter(GptqToGguf.Mapped::gptq).allMatch(m -> m.type() == GgmlType.Q4_0), r2.tensors().toString());
        assertEquals(0.0, compare(two, dir.resolve("two.gguf"), r2.tensors()));
        // or, asked to, requantized to a smaller type
        GptqToGguf.Result rq = GptqToGguf.convert(two, dir.resolve("two-q3k.gguf"), new GptqToGguf.Options(GgmlType.Q3_K, null, null, true), null);
        for (GptqToGguf.Mapped m : rq.tensors()) {
            if (!m.gptq()) continue;
            assertEquals(m.name().contains("ffn_down") ? GgmlType.Q3_K : GgmlType.Q4_0, m.type(), m.name()); // 128 columns: Q3_K's fallback
            assertEquals("--requantize", m.reason());
        }
        compare(two, dir.resolve("two-q3k.gguf"), rq.tensors());
    }

    @Test
    void aDirectoryWithoutGptqTensorsIsRefused() {
        Path model = Shared.require("models/stories260K");
        CliRun r = CliRun.of("gguf", "from-gptq", "-i", model.toString(), "-o", dir.resolve("x.gguf").toString());
        assertEquals(2, r.exitCode(), r.err());
        assertTrue(r.err().contains("not a GPTQ checkpoint"), r.err());
        assertTrue(!dir.resolve("x.gguf").toFile().exists());
    }
}
