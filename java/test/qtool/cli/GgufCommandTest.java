package qtool.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;
import qtool.load.Json;

class GgufCommandTest {
    static final Path TINY = Path.of(System.getProperty("qtool.shared", "../shared"),
            "models/tiny-random-gguf/llama-2-tiny-random.gguf");

    record Result(int code, String out, String err) {}

    static Result run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        CommandLine cl = Main.commandLine();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        int code = cl.execute(args);
        return new Result(code, out.toString(), err.toString());
    }

    @Test
    void inspectPrintsHeaderMetadataTensorsAndTotals() {
        Assumptions.assumeTrue(Files.isReadable(TINY), "shared test data absent");
        Result r = run("gguf", "inspect", TINY.toString());
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("GGUF v3, alignment 32"), r.out());
        assertTrue(r.out().contains("general.architecture = \"llama\" (string)"), r.out());
        assertTrue(r.out().contains("tokenizer.ggml.tokens = [string x 32000] \"<unk>\", \"<s>\""), r.out());
        assertTrue(r.out().contains("tensors: 12"), r.out());
        assertTrue(r.out().contains("output.weight"), r.out());
        assertTrue(r.out().contains("total: 513,048 parameters"), r.out());
    }

    @Test
    void inspectJson() {
        Assumptions.assumeTrue(Files.isReadable(TINY), "shared test data absent");
        Result r = run("gguf", "inspect", "--json", TINY.toString());
        assertEquals(0, r.code(), r.err());
        Map<String, Object> j = Json.object(Json.parse(r.out(), "inspect output"), "inspect output");
        assertEquals(3L, j.get("version"));
        assertEquals(12L, j.get("tensor_count"));
        assertEquals(513048L, j.get("parameters"));
        Map<String, Object> tokens = Json.object(Json.object(j.get("metadata"), "metadata").get("tokenizer.ggml.tokens"), "tokens");
        assertEquals(32000L, tokens.get("length"));
        assertEquals("string", tokens.get("element_type"));
        assertEquals(8, ((List<?>) tokens.get("first")).size());
        Map<String, Object> types = Json.object(j.get("types"), "types");
        assertEquals(9L, Json.object(types.get("F16"), "F16").get("tensors"));
    }

    @Test
    void badFilesExitWithCode2(@TempDir Path dir) throws Exception {
        Path bad = dir.resolve("bad.gguf");
        Files.writeString(bad, "not a gguf file at all");
        Result r = run("gguf", "inspect", bad.toString());
        assertEquals(2, r.code());
        assertTrue(r.err().contains(bad + ": not a GGUF file"), r.err());
        assertEquals(2, run("gguf", "inspect", dir.resolve("missing.gguf").toString()).code());
        assertEquals(2, run("gguf").code());
    }

    @Test
    void importWritesAnHfDirectory(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue(Files.isReadable(TINY), "shared test data absent");
        Path out = dir.resolve("hf");
        Result r = run("gguf", "import", "-i", TINY.toString(), "-o", out.toString());
        assertEquals(0, r.code(), r.err());
        assertTrue(Files.isRegularFile(out.resolve("model.safetensors")));
        assertEquals("float16", Json.readObject(out.resolve("config.json")).get("torch_dtype"));
        assertTrue(r.out().contains("wrote " + out), r.out());
        r = run("gguf", "import", "-i", TINY.toString(), "-o", dir.resolve("x").toString(), "--dtype", "int8");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("--dtype must be"), r.err());
    }

    @Test
    void exportWritesAGgufFromAnHfDirectory(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue(Files.isReadable(TINY), "shared test data absent");
        Path hf = dir.resolve("hf");
        assertEquals(0, run("gguf", "import", "-i", TINY.toString(), "-o", hf.toString()).code());
        assertTrue(Files.isRegularFile(hf.resolve("tokenizer.json")));
        Path out = dir.resolve("tiny-Q8_0.gguf");
        java.io.PrintStream stderr = System.err;
        java.io.ByteArrayOutputStream log = new java.io.ByteArrayOutputStream();
        System.setErr(new java.io.PrintStream(log, true, java.nio.charset.StandardCharsets.UTF_8)); // progress and warnings
        Result r;
        try {
            r = run("gguf", "export", "-i", hf.toString(), "-o", out.toString(), "--type", "q8_0");
        } finally {
            System.setErr(stderr);
        }
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("wrote " + out + " (Q8_0: 3 F32, 8 F16, 1 Q8_0;"), r.out());
        String warnings = log.toString(java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(warnings.contains("8 tensors of 8 columns (not a multiple of 32): F16 for Q8_0, e.g. output.weight"), warnings);
        assertTrue(Files.isRegularFile(out));

        r = run("gguf", "export", "-i", hf.toString(), "-o", dir.resolve("x.gguf").toString(), "--type", "q4_k_x");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("--type 'q4_k_x' is not one of [f32, f16, q4_0"), r.err());

        Files.delete(hf.resolve("tokenizer.json"));
        r = run("gguf", "export", "-i", hf.toString(), "-o", dir.resolve("y.gguf").toString(), "--type", "f16");
        assertEquals(2, r.code());
        assertEquals("qtool: " + hf + ": no tokenizer.json or tokenizer.model (a GGUF needs the model's tokenizer)", r.err().strip());
        assertTrue(Files.notExists(dir.resolve("y.gguf")));
    }

    @Test
    void modelCommandsTakeAGgufFile() throws Exception {
        Assumptions.assumeTrue(Files.isReadable(TINY), "shared test data absent");
        CliRun r = CliRun.of("tokenize", "-m", TINY.toString(), "-p", "Hello world", "--ids");
        assertEquals(0, r.exitCode(), r.err());
        assertEquals("[1, 15043, 3186]", r.out().strip());
        java.io.PrintStream stdout = System.out;
        java.io.ByteArrayOutputStream captured = new java.io.ByteArrayOutputStream();
        System.setOut(new java.io.PrintStream(captured, true, java.nio.charset.StandardCharsets.UTF_8));
        try {
            r = CliRun.of("generate", "-m", TINY.toString(), "-p", "Hello", "-n", "4", "--greedy", "--ids", "--device", "cpu");
        } finally {
            System.setOut(stdout);
        }
        assertEquals(0, r.exitCode(), r.err());
        // generate prints through picocli's stream (CliRun's out); System.out is captured for older builds that did not
        String printed = r.out() + captured.toString(java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(printed.startsWith("Hello"), printed);
    }
}
