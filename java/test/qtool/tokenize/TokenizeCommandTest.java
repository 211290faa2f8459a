package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;
import qtool.cli.Main;

/** {@code qtool tokenize}. */
class TokenizeCommandTest {

    record Result(int exit, String out, String err) {}

    static Result run(String... args) {
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter(), err = new StringWriter();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        int exit = cl.execute(args);
        return new Result(exit, out.toString(), err.toString());
    }

    @Test
    void printsIdsAsJsonArray() {
        String model = TestData.shared("models/stories260K").toString();
        Result r = run("tokenize", "-m", model, "-p", "Once upon a time", "--ids");
        assertEquals(0, r.exit(), r.err());
        assertEquals("[1, 403, 407, 261, 378]", r.out().strip());
        r = run("tokenize", "-m", model, "-p", "Once upon a time", "--ids", "--no-bos");
        assertEquals("[403, 407, 261, 378]", r.out().strip());
    }

    @Test
    void printsIdAndPiecePerLine(@TempDir Path dir) throws Exception {
        Path text = dir.resolve("prompt.txt");
        Files.writeString(text, "Hi 12");
        Result r = run("tokenize", "-m", TestData.shared("models/smollm2-135m").toString(), "-f", text.toString(), "--bos");
        assertEquals(0, r.exit(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(5, lines.length, r.out()); // <|im_start|> "Hi" " " "1" "2": SmolLM2 splits digits
        assertEquals("1 \"<|im_start|>\"", lines[0].strip());
        assertEquals("\" \"", lines[2].strip().split(" ", 2)[1]);
    }

    @Test
    void errorsExitWithTwo(@TempDir Path dir) {
        Result r = run("tokenize", "-m", dir.toString(), "-p", "x");
        assertEquals(2, r.exit());
        assertTrue(r.err().contains("no tokenizer.json or tokenizer.model"), r.err());
        r = run("tokenize", "-m", dir.toString());
        assertEquals(2, r.exit());
        r = run("tokenize", "-m", dir.resolve("model.gguf").toString(), "-p", "x");
        assertEquals(2, r.exit());
        assertTrue(r.err().contains("model.gguf: no such file"), r.err());
    }
}
