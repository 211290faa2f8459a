package qtool.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Backend;
import qtool.backend.Backends;
import qtool.evaluate.Perplexity;
import qtool.evaluate.Sampler;
import qtool.format.gguf.GgufToHf;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.TextDataset;
import qtool.tokenize.Tokenizer;

/** The whole forward pass on the CPU backend against outside references: transformers' NLL and llama2.c's text. */
class CpuForwardReferenceTest {
    @TempDir
    Path dir;

    /**
     * reference.json holds transformers' fp32 NLL sum of every wikitext-2 window of SmolLM2-135M (the shared GGUF
     * dequantized to fp16). The first 4 windows at ctx 512 (2048 tokens) must agree to 1e-3 relative; qtool's fp32
     * sums come within about 1e-6.
     */
    @Test
    void smolLm2WindowNllMatchesTransformers() throws IOException {
        Path gguf = Shared.require("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        Path data = Shared.require("data/wikitext-2-raw-v1_test.parquet");
        Path hf = dir.resolve("smol");
        GgufToHf.convert(gguf, hf, DType.F16, 0, null);
        Files.copy(gguf.resolveSibling("tokenizer.json"), hf.resolve("tokenizer.json"));
        Map<String, Object> windows = Json.object(Json.object(Json.readObject(gguf.resolveSibling("reference.json")).get("windows"), "windows")
                .get("512"), "512");
        List<Object> expected = Json.array(windows.get("nll_sum"), "nll_sum");

        int ctx = 512, count = 4;
        // A prefix of the text is enough for 4 windows (about 4 characters a token) and tokenizes as the whole does.
        String text = TextDataset.evaluationText(data);
        int[] ids = Tokenizer.load(hf).encode(text.substring(0, 40_000), false);
        try (LlamaModel m = LlamaModel.open(hf); Backend b = Backends.open("cpu", new PrintStream(OutputStream.nullOutputStream()));
             Forward f = new Forward(m, b, DType.F32, 1, ctx, false, false, 1.0, 1.0)) {
            Perplexity.Result r = Perplexity.evaluate(f, ids, ctx, count, 1);
            for (int w = 0; w < count; w++) {
                double want = ((Number) expected.get(w)).doubleValue();
                assertEquals(want, r.nllSums()[w], 1e-3 * want, "window " + w + " NLL sum; all: " + Arrays.toString(r.nllSums()));
            }
        }
    }

    /** llama2.c's greedy continuation of "Once upon a time" (its 200 steps); 200 tokens more cover it. */
    @Test
    void stories260kGreedyMatchesLlama2c() throws IOException {
        Path model = Shared.require("models/stories260K");
        String expected = Files.readString(Shared.require("models/stories260K-llama2c/expected_greedy_200tok.txt")).strip();
        String prompt = "Once upon a time";
        try (LlamaModel m = LlamaModel.open(model); Backend b = Backends.open("cpu", null)) {
            Tokenizer tok = Tokenizer.load(model);
            int[] promptIds = tok.encode(prompt, true);
            int[] out = new int[200];
            try (Forward f = new Forward(m, b, DType.F32, 1, promptIds.length + out.length, false, true, 1.0, 1.0)) {
                f.forward(promptIds, 1, promptIds.length, 0);
                out[0] = Sampler.argmax(f.logits(promptIds.length - 1));
                for (int i = 1; i < out.length; i++) {
                    f.forward(new int[] {out[i - 1]}, 1, 1, promptIds.length + i - 1);
                    out[i] = Sampler.argmax(f.logits(0));
                }
            }
            String text = prompt + tok.decode(out);
            assertTrue(text.startsWith(expected), "greedy text differs from llama2.c's:\n" + text + "\nexpected:\n" + expected);
        }
    }
}
