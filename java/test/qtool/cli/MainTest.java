package qtool.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.model.LlamaModel;

class MainTest {

    private static Map<String, Object> inspectJson(Path dir) {
        CliRun r = CliRun.of("inspect", dir.toString(), "--json");
        assertEquals(0, r.exitCode(), r.err());
        return Json.object(Json.parse(r.out(), "inspect output"), "inspect output");
    }

    @Test
    void inspectStories260kJson() {
        Map<String, Object> r = inspectJson(Shared.require("models/stories260K"));
        assertEquals("llama", r.get("architecture"));
        assertEquals(5L, r.get("layers"));
        assertEquals(64L, r.get("hidden_size"));
        assertEquals(172L, r.get("intermediate_size"));
        assertEquals(8L, r.get("heads"));
        assertEquals(4L, r.get("kv_heads"));
        assertEquals(512L, r.get("vocab_size"));
        assertEquals(true, r.get("tied_embeddings"));
        // 512×64 embedding + 5 × (64×64 q + 2 × 32×64 k, v + 64×64 o + 3 × 172×64 mlp + 2 × 64 norms) + 64 final norm
        assertEquals(260032L, r.get("parameters"));
        assertEquals(260032L * 4, r.get("bytes"));
        assertEquals(47L, r.get("tensors"));
        assertEquals(1L, r.get("shards"));
        assertEquals(Map.of("F32", Map.of("tensors", 47L, "parameters", 260032L, "bytes", 1040128L)), r.get("dtypes"));
        List<Object> largest = Json.array(r.get("largest"), "largest");
        assertEquals(5, largest.size());
        assertEquals("model.embed_tokens.weight", Json.object(largest.get(0), "").get("name"));
    }

    @Test
    void inspectStories260kText() {
        CliRun r = CliRun.of("inspect", Shared.require("models/stories260K").toString(), "--top", "2");
        assertEquals(0, r.exitCode(), r.err());
        assertTrue(r.out().contains("llama, 5 layers, hidden 64, intermediate 172, heads 8 (kv 4, dim 8), vocab 512, tied embeddings"), r.out());
        assertTrue(r.out().contains("parameters 260,032 in 47 tensors"), r.out());
        assertTrue(r.out().contains("model.embed_tokens.weight"), r.out());
    }

    @Test
    void versionAndHelp() {
        CliRun v = CliRun.of("--version");
        assertEquals(0, v.exitCode());
        assertTrue(v.out().startsWith("qtool "), v.out());
        CliRun h = CliRun.of("--help");
        assertEquals(0, h.exitCode());
        assertTrue(h.out().contains("inspect") && h.out().contains("synth"), h.out());
    }

    @Test
    void unknownOptionsAndMissingArgumentsExit2() {
        CliRun unknown = CliRun.of("inspect", "--frobnicate", "x");
        assertEquals(2, unknown.exitCode());
        assertTrue(unknown.err().startsWith("qtool: Unknown option: '--frobnicate'"), unknown.err());
        CliRun missing = CliRun.of("inspect");
        assertEquals(2, missing.exitCode());
        assertTrue(missing.err().startsWith("qtool: Missing required parameter: 'DIR'"), missing.err());
        assertEquals(2, CliRun.of("no-such-command").exitCode());
    }

    @Test
    void synthThenInspect(@TempDir Path root) throws Exception {
        Path dir = root.resolve("qwen");
        CliRun s = CliRun.of("synth", "--out", dir.toString(), "--arch", "qwen2", "--hidden", "32", "--layers", "3", "--heads", "4",
                "--kv-heads", "2", "--intermediate", "48", "--vocab", "100", "--dtype", "bf16", "--tie");
        assertEquals(0, s.exitCode(), s.err());
        assertEquals(List.of("config.json", "model.safetensors"), list(dir));

        ModelConfig c = ModelConfig.read(dir);
        assertEquals("qwen2", c.modelType());
        assertEquals(8, c.headDim());
        assertTrue(c.tieWordEmbeddings());

        Map<String, Object> r = inspectJson(dir);
        assertEquals("qwen2", r.get("architecture"));
        assertEquals(3L, r.get("layers"));
        assertEquals(2L, r.get("kv_heads"));
        assertEquals(true, r.get("tied_embeddings"));
        // embedding + 3 × (q 32×32 + k, v 16×32 + o 32×32 + q/k/v biases 32+16+16 + mlp 3 × 48×32 + norms 2×32) + final norm
        long perLayer = 32 * 32 + 2 * 16 * 32 + 32 * 32 + 32 + 16 + 16 + 3 * 48 * 32 + 2 * 32;
        long params = 100 * 32 + 3 * perLayer + 32;
        assertEquals(params, r.get("parameters"));
        assertEquals(Map.of("BF16", Map.of("tensors", 1L + 3 * 12 + 1, "parameters", params, "bytes", 2 * params)), r.get("dtypes"));
        try (LlamaModel m = LlamaModel.open(dir)) {
            assertTrue(m.headTied());
            assertEquals(1f, m.finalNorm().getFloat(0));
        }
    }

    @Test
    void synthIsDeterministicPerSeed(@TempDir Path root) throws Exception {
        // The embedding (1100 × 1024) spans two of synth's 1M-element chunks, which threads fill in parallel.
        String[] shape = {"--hidden", "1024", "--layers", "1", "--heads", "8", "--intermediate", "32", "--vocab", "1100"};
        Path a = root.resolve("a"), b = root.resolve("b"), c = root.resolve("c");
        assertEquals(0, synth(a, shape).exitCode());
        assertEquals(0, synth(b, shape).exitCode());
        assertEquals(0, synth(c, concat(shape, "--seed", "1")).exitCode());
        byte[] bytesA = Files.readAllBytes(a.resolve("model.safetensors"));
        assertArrayEquals(bytesA, Files.readAllBytes(b.resolve("model.safetensors")));
        assertTrue(!java.util.Arrays.equals(bytesA, Files.readAllBytes(c.resolve("model.safetensors"))), "another seed, other weights");
    }

    @Test
    void synthRefusesNonEmptyOut(@TempDir Path root) throws Exception {
        Path dir = Files.createDirectories(root.resolve("taken"));
        Files.writeString(dir.resolve("keep.txt"), "mine");
        CliRun r = synth(dir, "--hidden", "8", "--layers", "1", "--heads", "2", "--intermediate", "16", "--vocab", "16");
        assertEquals(2, r.exitCode());
        assertArrayEquals(new String[] {"qtool: " + dir + ": output directory is not empty"}, r.errLines());
        assertEquals(List.of("keep.txt"), list(dir));
    }

    @Test
    void synthRefusesBadDtypeAndArch(@TempDir Path root) throws Exception {
        Path dir = root.resolve("m");
        String[] shape = {"--hidden", "8", "--layers", "1", "--heads", "2", "--intermediate", "16", "--vocab", "16"};
        CliRun dtype = synth(dir, concat(shape, "--dtype", "f32"));
        assertEquals(2, dtype.exitCode());
        assertArrayEquals(new String[] {"qtool: --dtype must be f16 or bf16, not 'f32'"}, dtype.errLines());
        CliRun arch = synth(dir, concat(shape, "--arch", "gpt2"));
        assertEquals(2, arch.exitCode());
        assertArrayEquals(new String[] {"qtool: --arch must be one of [llama, mistral, qwen2], not 'gpt2'"}, arch.errLines());
        assertTrue(Files.notExists(dir), "nothing written");
    }

    @Test
    void synthRefusesImpossibleShapes(@TempDir Path root) throws Exception {
        Path dir = root.resolve("m");
        String[][] cases = {
                {"--heads", "0", "--heads must be positive, not 0"},
                {"--kv-heads", "0", "--kv-heads must be positive, not 0"},
                {"--kv-heads", "3", "--heads 2 is not a multiple of --kv-heads 3"},
                {"--intermediate", "-16", "--intermediate must be positive, not -16"},
                {"--head-dim", "5", "head dimension 5 (--head-dim, or --hidden / --heads) must be even and positive"},
                {"--shard-size", "-1", "--shard-size must be 0 or more, not -1"},
                {"--tokenizer", root.toString(), root + ": no tokenizer files"}};
        for (String[] c : cases) {
            Map<String, String> flags = new java.util.LinkedHashMap<>(
                    Map.of("--hidden", "8", "--layers", "1", "--heads", "2", "--intermediate", "16", "--vocab", "16"));
            flags.put(c[0], c[1]);
            List<String> args = new java.util.ArrayList<>();
            flags.forEach((k, v) -> args.addAll(List.of(k, v)));
            CliRun r = synth(dir, args.toArray(String[]::new));
            assertEquals(2, r.exitCode(), c[0] + " " + r.err());
            assertEquals(1, r.errLines().length, r.err());
            assertTrue(r.errLines()[0].startsWith("qtool: " + c[2]), r.err());
            assertTrue(Files.notExists(dir), "nothing written for " + c[0]);
        }
    }

    @Test
    void synthCopiesTokenizer(@TempDir Path root) throws Exception {
        Path dir = root.resolve("m");
        CliRun r = synth(dir, "--hidden", "8", "--layers", "1", "--heads", "2", "--intermediate", "16", "--vocab", "512",
                "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        assertEquals(List.of("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                "tokenizer_config.json"), list(dir));
    }

    private static CliRun synth(Path out, String... args) {
        return CliRun.of(concat(new String[] {"synth", "--out", out.toString()}, args));
    }

    private static String[] concat(String[] a, String... b) {
        String[] r = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }

    private static List<String> list(Path dir) throws Exception {
        try (var s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }
}
