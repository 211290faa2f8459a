package qtool.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import qtool.load.BadModel;

/** `qtool inspect` of a bad model directory: exit code 2 and one line on stderr; the stack trace only with --verbose. */
class BadInputCliTest {

    @ParameterizedTest(name = "{0}")
    @MethodSource("qtool.load.BadModel#all")
    void inspectPrintsOneLineAndExits2(BadModel bad, @TempDir Path root) {
        Path dir = bad.makeIn(root);
        CliRun r = CliRun.of("inspect", dir.toString());
        assertEquals(2, r.exitCode(), r.err());
        assertEquals("", r.out());
        assertEquals(1, r.errLines().length, r.err());
        String line = r.errLines()[0];
        assertTrue(line.startsWith("qtool: " + dir.resolve(bad.file())), line);
        assertTrue(line.contains(bad.problem()), line);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("qtool.load.BadModel#all")
    void verboseAddsTheStackTrace(BadModel bad, @TempDir Path root) {
        Path dir = bad.makeIn(root);
        CliRun r = CliRun.of("inspect", "--verbose", dir.toString());
        assertEquals(2, r.exitCode(), r.err());
        assertTrue(r.errLines()[0].startsWith("qtool: "), r.err());
        assertTrue(r.err().contains("qtool.QtoolException") && r.err().contains("\tat qtool."), r.err());
    }

    /** --verbose is a static field; one run with it must not leave later runs verbose. */
    @Test
    void verboseDoesNotLeakIntoTheNextRun(@TempDir Path root) {
        Path dir = BadModel.all().get(0).makeIn(root);
        assertTrue(CliRun.of("--verbose", "inspect", dir.toString()).err().contains("\tat "));
        CliRun quiet = CliRun.of("inspect", dir.toString());
        assertEquals(1, quiet.errLines().length, quiet.err());
        assertFalse(quiet.err().contains("\tat "), quiet.err());
    }

    /** A flag the chosen format does not take is refused before any work, not ignored. */
    @Test
    void candidateBitsWithExl2IsRefused(@TempDir Path root) {
        CliRun r = CliRun.of("convert", "-i", root.toString(), "-o", root.resolve("work").toString(), "--candidate-bits", "3", "4");
        assertEquals(2, r.exitCode(), r.err());
        assertTrue(r.err().contains("--candidate-bits goes with --format gptq"), r.err());
    }
}
