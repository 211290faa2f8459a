package qtool;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.nio.file.Files;
import java.nio.file.Path;

/** Test data beside the checkout (../shared); tests that need a file skip when it is absent. */
public final class Shared {
    private Shared() {}

    public static Path root() {
        return Path.of(System.getProperty("qtool.shared", "../shared"));
    }

    public static Path require(String relative) {
        Path p = root().resolve(relative);
        assumeTrue(Files.exists(p), "shared test data missing: " + p);
        return p;
    }
}
