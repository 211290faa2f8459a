package qtool.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.CpuBackend;
import qtool.cli.CliRun;
import qtool.load.DType;
import qtool.load.Json;

/** The forward pass, ppl and generate on the CPU backend, against llama2.c's and transformers' figures. */
class RuntimeTest {

    @Test
    void stories260kGreedyReproducesLlama2c() throws Exception {
        Path model = Shared.require("models/stories260K");
        String expected = Files.readString(Shared.require("models/stories260K-llama2c/expected_greedy_200tok.txt"));
        CliRun r = CliRun.of("generate", "-m", model.toString(), "-p", "Once upon a time", "-n", "196", "--greedy", "--device", "cpu");
        assertEquals(0, r.exitCode(), r.err());
        assertEquals(expected, r.out());
    }

    @Test
    void streamedLayersEqualResidentLayers() {
        try (LlamaModel m = LlamaModel.open(Shared.require("models/stories260K")); CpuBackend b = new CpuBackend()) {
            int[] tokens = {1, 403, 407, 261, 378, 29, 30, 31};
            float[] resident, streamed;
            try (Forward f = new Forward(m, b, DType.F32, 1, 8, false, false, 1, 1)) {
                f.forward(tokens, 1, tokens.length, 0);
                resident = f.logits(tokens.length - 1);
            }
            try (Forward f = new Forward(m, b, DType.F32, 1, 8, true, false, 1, 1)) {
                f.forward(tokens, 1, tokens.length, 0);
                streamed = f.logits(tokens.length - 1);
            }
            assertArrayEquals(resident, streamed);
        }
    }

    @Test
    void kvCacheDecodeEqualsFullPrefill() {
        try (LlamaModel m = LlamaModel.open(Shared.require("models/stories260K")); CpuBackend b = new CpuBackend()) {
            int[] tokens = {1, 403, 407, 261, 378, 29, 30, 31};
            float[] full, stepped = null;
            try (Forward f = new Forward(m, b, DType.F32, 1, 8, false, true, 1, 1)) {
                f.forward(tokens, 1, tokens.length, 0);
                full = f.logits(tokens.length - 1);
                f.forward(java.util.Arrays.copyOf(tokens, 5), 1, 5, 0);
                for (int p = 5; p < tokens.length; p++) {
                    f.forward(new int[] {tokens[p]}, 1, 1, p);
                    stepped = f.logits(0);
                }
            }
            double num = 0, den = 0;
            for (int i = 0; i < full.length; i++) {
                num += (full[i] - stepped[i]) * (full[i] - stepped[i]);
                den += full[i] * full[i];
            }
            assertTrue(Math.sqrt(num / den) < 1e-5, "relative error " + Math.sqrt(num / den));
        }
    }

    @Test
    void generationNeverPicksPaddedVocabularyRows(@TempDir Path dir) {
        // a model whose embedding has more rows than its tokenizer has ids (padded vocabularies are common)
        Path m = dir.resolve("padded");
        assertEquals(0, CliRun.of("synth", "--out", m.toString(), "--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "64",
                "--vocab", "4096", "--seed", "7", "--tokenizer", Shared.require("models/stories260K").toString()).exitCode());
        CliRun r = CliRun.of("generate", "-m", m.toString(), "-p", "Once", "-n", "40", "--temperature", "1.0", "--top-p", "1.0",
                "--ids", "--ignore-eos", "--device", "cpu");
        assertEquals(0, r.exitCode(), r.err());
        String ids = r.out().strip().lines().reduce((a, b) -> b).orElseThrow();
        for (String id : ids.replaceAll("[\\[\\] ]", "").split(",")) assertTrue(Integer.parseInt(id) < 512, ids);
    }

    @Test
    void pplJsonOnStories260k() {
        Path model = Shared.require("models/stories260K");
        Path data = Shared.require("data/wikitext-2-raw-v1_test.parquet");
        CliRun r = CliRun.of("ppl", "-m", model.toString(), "-d", data.toString(), "--ctx", "128", "--windows", "4", "--json", "--device", "cpu");
        assertEquals(0, r.exitCode(), r.err());
        Map<String, Object> o = Json.object(Json.parse(r.out(), "ppl"), "ppl");
        assertEquals(4L, o.get("windows"));
        assertEquals(4L * 127, o.get("tokens_predicted"));
        double ppl = ((Number) o.get("ppl")).doubleValue();
        assertTrue(ppl > 20 && ppl < 2000, "ppl " + ppl);
        double sum = 0;
        for (Object v : Json.array(o.get("window_nll_sums"), "sums")) sum += ((Number) v).doubleValue();
        assertEquals(Math.log(ppl), sum / (4 * 127), 1e-9);
    }

    @Test
    void badInputsExitTwo(@TempDir Path dir) throws Exception {
        String model = Shared.require("models/stories260K").toString();
        Path empty = dir.resolve("empty.txt");
        Files.writeString(empty, "\n");
        assertBad(CliRun.of("ppl", "-m", model, "-d", empty.toString(), "--device", "cpu"), "no text");
        assertBad(CliRun.of("ppl", "-m", model, "-d", Shared.require("data/calibration-mix.parquet").toString(), "--ctx", "99999999", "--device", "cpu"),
                "fewer than one window");
        assertBad(CliRun.of("generate", "-m", model, "-p", "Once upon a time there was", "--ctx", "4", "--device", "cpu"), "context holds 4");
        // a model whose vocabulary is smaller than its tokenizer's
        Path small = dir.resolve("small");
        assertEquals(0, CliRun.of("synth", "--out", small.toString(), "--hidden", "16", "--layers", "1", "--heads", "2", "--intermediate", "32",
                "--vocab", "100", "--tokenizer", model).exitCode());
        assertBad(CliRun.of("generate", "-m", small.toString(), "-p", "hi", "--device", "cpu"), "tokenizer has 512 tokens");
        Path noTok = dir.resolve("notok");
        assertEquals(0, CliRun.of("synth", "--out", noTok.toString(), "--hidden", "16", "--layers", "1", "--heads", "2", "--intermediate", "32",
                "--vocab", "100").exitCode());
        assertBad(CliRun.of("generate", "-m", noTok.toString(), "-p", "hi", "--device", "cpu"), "tokenizer");
    }

    private static void assertBad(CliRun r, String fragment) {
        assertEquals(2, r.exitCode(), r.err());
        assertTrue(r.err().contains(fragment), r.err());
        assertTrue(r.err().strip().lines().filter(l -> l.startsWith("qtool:") && !l.startsWith("qtool: device")).count() == 1, r.err());
    }
}
