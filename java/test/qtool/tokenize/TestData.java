package qtool.tokenize;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.zip.GZIPInputStream;

/** Where the tests find ../shared and the committed id fixtures. */
final class TestData {
    private TestData() {}

    /** A file or directory under ../shared; the test is skipped when it is absent. */
    static Path shared(String relative) {
        Path p = Path.of(System.getProperty("qtool.shared", "../shared")).resolve(relative);
        assumeTrue(Files.exists(p), () -> p + " is absent");
        return p;
    }

    static String wikiText() throws IOException {
        return Files.readString(shared("data/wiki.test.raw"), StandardCharsets.UTF_8);
    }

    /**
     * A fixture of java/test/resources/tokenize/: gzipped text, one id per line. Read from the working directory
     * (surefire runs in the project root): the build declares no test resource directory.
     */
    static int[] fixtureIds(String name) throws IOException {
        Path p = Path.of("java/test/resources/tokenize").resolve(name);
        try (InputStream in = new GZIPInputStream(Files.newInputStream(p))) {
            String[] lines = new String(in.readAllBytes(), StandardCharsets.US_ASCII).split("\n");
            int[] ids = new int[lines.length];
            for (int i = 0; i < lines.length; i++) ids[i] = Integer.parseInt(lines[i]);
            return ids;
        }
    }

    /** Where two id sequences first differ, with context, for assertion messages; null when equal. */
    static String firstDifference(int[] expected, int[] actual) {
        int n = Math.min(expected.length, actual.length);
        int i = 0;
        while (i < n && expected[i] == actual[i]) i++;
        if (i == n && expected.length == actual.length) return null;
        int from = Math.max(0, i - 3);
        return "lengths " + expected.length + " vs " + actual.length + ", first difference at " + i + ": expected "
                + java.util.Arrays.toString(java.util.Arrays.copyOfRange(expected, from, Math.min(expected.length, i + 5)))
                + " got " + java.util.Arrays.toString(java.util.Arrays.copyOfRange(actual, from, Math.min(actual.length, i + 5)));
    }
}
