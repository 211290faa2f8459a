package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.zip.GZIPInputStream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.cli.CliRun;
import qtool.load.DType;
import qtool.tokenize.Tokenizer;

/**
 * SmolLM2-135M (../shared/models/smollm2-135m, the Q4_1 GGUF) through import and export, against llama.cpp:
 * <ul>
 * <li>the imported directory's tokenizer.json, and the GGUF given directly to {@code qtool tokenize}, tokenize
 *     wikitext-2's test split to the 303,415 ids of llama-tokenize (the fixture of the tokenizer tests);</li>
 * <li>for every file type, export picks each tensor's type as llama-quantize does (its --dry-run on the GGUF): the
 *     576-wide rows take the fallbacks, the 1536-wide ffn_down the K-quants, with use_more_bits per layer;</li>
 * <li>the Q8_0 export of the fp16 import runs in llama.cpp with the perplexity of llama-quantize's Q8_0 of the GGUF
 *     (one short window here, within 2%), and greedy generation gives the same 16 tokens.</li>
 * </ul>
 * Exact bytes are {@link HfToGgufTest}'s and {@link LlamaQuantizeBitExactTest}'s job: here the import is fp16, which
 * rounds about a third of the Q4_1 weights (an fp32 import exports byte-identical tensors, see the class comment
 * of {@link HfToGguf}).
 */
class SmolLm2GgufTest {
    static final String FIXTURE = "java/test/resources/tokenize/wiki.test.raw.smollm2-135m.ids.gz";

    @TempDir
    static Path dir;
    static Path gguf;
    static Path hf;

    @BeforeAll
    static void importOnce() {
        gguf = GgufTestFiles.requireShared("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        hf = dir.resolve("smol");
        GgufToHf.convert(gguf, hf, DType.F16, 0, null);
    }

    static int[] fixture() throws IOException {
        try (InputStream in = new GZIPInputStream(Files.newInputStream(Path.of(FIXTURE)))) {
            return new String(in.readAllBytes(), StandardCharsets.US_ASCII).lines().mapToInt(Integer::parseInt).toArray();
        }
    }

    @Test
    void importedTokenizerJsonMatchesLlamaCpp() throws IOException {
        Path text = GgufTestFiles.requireShared("data/wiki.test.raw");
        assertTrue(Files.isRegularFile(hf.resolve("tokenizer.json")));
        Tokenizer t = Tokenizer.load(hf);
        int[] ids = t.encode(Files.readString(text, StandardCharsets.UTF_8), false);
        int[] expected = fixture();
        assertEquals(303_415, expected.length);
        assertArrayEquals(expected, ids);
        assertEquals(1, t.bos());
        assertEquals(2, t.eos());
    }

    @Test
    void tokenizeCommandReadsTheGgufItself() throws IOException {
        Path text = GgufTestFiles.requireShared("data/wiki.test.raw");
        CliRun r = CliRun.of("tokenize", "-m", gguf.toString(), "-f", text.toString(), "--ids", "--no-bos");
        assertEquals(0, r.exitCode(), r.err());
        String list = r.out().strip();
        int[] ids = Arrays.stream(list.substring(1, list.length() - 1).split(", ")).mapToInt(Integer::parseInt).toArray();
        assertArrayEquals(fixture(), ids);
    }

    @Test
    void typeMixesMatchLlamaQuantize() {
        List<String> differences = new ArrayList<>();
        for (LlamaFileType t : LlamaFileType.values()) {
            if (t == LlamaFileType.Q2_K_S) continue; // needs an imatrix
            Map<String, GgmlType> theirs = new TreeMap<>(LlamaCppTools.dryRunTypes(gguf, t.name()));
            Map<String, GgmlType> mine = new TreeMap<>();
            for (HfToGguf.Planned p : HfToGguf.plan(hf, HfToGguf.Options.of(t))) mine.put(p.name(), p.type());
            assertEquals(theirs.keySet(), mine.keySet(), t.toString());
            for (var e : theirs.entrySet()) {
                if (e.getValue() != mine.get(e.getKey())) differences.add(t + " " + e.getKey() + ": " + mine.get(e.getKey()) + ", llama-quantize " + e.getValue());
            }
            if (t == LlamaFileType.Q4_K_M) {
                // use_more_bits(i, 30): layers 0-2, 5, 8, ..., 23, 26-29 get Q6_K (attn_v: Q8_0, its 576 columns' fallback)
                assertEquals(GgmlType.Q6_K, mine.get("blk.5.ffn_down.weight"));
                assertEquals(GgmlType.Q4_K, mine.get("blk.6.ffn_down.weight"));
                assertEquals(GgmlType.Q8_0, mine.get("blk.26.attn_v.weight"));
                assertEquals(GgmlType.Q5_0, mine.get("blk.25.attn_v.weight"));
                assertEquals(GgmlType.Q8_0, mine.get("token_embd.weight"));
            }
        }
        assertTrue(differences.isEmpty(), String.join("\n", differences));
    }

    @Test
    void q8_0ExportRunsInLlamaCppAsLlamaQuantizes() throws IOException {
        Path text = dir.resolve("wiki-head.txt"); // enough for one window; llama-perplexity tokenizes all it is given
        Files.writeString(text, Files.readString(GgufTestFiles.requireShared("data/wiki.test.raw"), StandardCharsets.UTF_8).substring(0, 20_000));
        Path mine = dir.resolve("qtool-Q8_0.gguf");
        HfToGguf.convert(hf, mine, HfToGguf.Options.of(LlamaFileType.Q8_0), null);
        Path theirs = dir.resolve("llama-Q8_0.gguf");
        LlamaCppTools.run("llama-quantize", "--allow-requantize", gguf.toString(), theirs.toString(), "Q8_0");
        // one window of 256 tokens (the last 128 scored): 47.4695 vs 47.4725 when written; over 20 windows of 512
        // the two agree within 0.1% (28.7614 vs 28.7420)
        double pMine = LlamaCppTools.perplexity(mine, text, 256, 1);
        double pTheirs = LlamaCppTools.perplexity(theirs, text, 256, 1);
        assertTrue(Double.isFinite(pMine) && Math.abs(pMine / pTheirs - 1) < 0.02, "ppl " + pMine + " vs llama-quantize's " + pTheirs);
        String prompt = "Once upon a time";
        assertEquals(complete(theirs, prompt), complete(mine, prompt));
    }

    @Test
    void pplUnderLlamaCppProtocolMatchesLlamaPerplexity() throws IOException {
        Path text = dir.resolve("wiki-head-ppl.txt");
        Files.writeString(text, Files.readString(GgufTestFiles.requireShared("data/wiki.test.raw"), StandardCharsets.UTF_8).substring(0, 20_000));
        // the shared Q4_1 file as llama.cpp runs it, and qtool on the same file (imported to fp16): 2 windows of 256,
        // the second half of each scored, BOS not added (SmolLM2's vocabulary adds none)
        double theirs = LlamaCppTools.perplexity(gguf, text, 256, 2);
        qtool.cli.CliRun r = qtool.cli.CliRun.of("ppl", "-m", gguf.toString(), "-d", text.toString(), "--protocol", "llama.cpp",
                "--ctx", "256", "--windows", "2", "--json", "--device", "cpu");
        assertEquals(0, r.exitCode(), r.err());
        var o = qtool.load.Json.object(qtool.load.Json.parse(r.out(), "ppl"), "ppl");
        double mine = ((Number) o.get("ppl")).doubleValue();
        assertEquals(2L * 127, ((Number) o.get("tokens_predicted")).longValue());
        System.out.printf("SmolLM2 Q4_1, 2 windows of 256: qtool --protocol llama.cpp %.4f, llama-perplexity %.4f%n", mine, theirs);
        assertTrue(Math.abs(mine / theirs - 1) < 0.01, "qtool " + mine + " vs llama-perplexity " + theirs);
    }

    /**
     * llama-completion's greedy continuation (16 tokens) of a prompt: what it prints on stdout. A run that prints
     * nothing (this build, rarely, on a loaded machine) is repeated, up to 3 times.
     */
    static String complete(Path model, String prompt) {
        // this build now and then exits (status 0) before its output is flushed — nothing, or part of it — and more
        // often on a loaded machine. Greedy decoding prints the same text every time, so a truncated run is a prefix
        // of a whole one: runs are repeated until two agree, keeping the longest; a run of bad outputs skips rather
        // than fails, since the lost output says nothing about the file
        String best = "", previous = null;
        for (int attempt = 0; attempt < 10; attempt++) {
            String out = LlamaCppTools.stdout("llama-completion", "-m", model.toString(), "-p", prompt, "-n", "16", "--temp", "0",
                    "-no-cnv", "-t", "2");
            if (!completed(out, prompt)) continue;
            String text = out.substring(out.indexOf(prompt)).strip();
            if (text.length() > best.length()) best = text;
            if (text.equals(previous)) break;
            previous = text;
        }
        org.junit.jupiter.api.Assumptions.assumeTrue(!best.isEmpty(), "llama-completion printed no whole completion in 10 runs for " + model);
        return best;
    }

    /** The prompt followed by at least a few words: 16 generated tokens are far more than 10 characters. */
    private static boolean completed(String out, String prompt) {
        int at = out.indexOf(prompt);
        return at >= 0 && out.strip().length() - at > prompt.length() + 10;
    }
}
