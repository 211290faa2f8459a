package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.fail;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;

/** Damaged checkpoints (random bytes changed, cut short) fail with a QtoolException and nothing else. */
class CorruptionFuzzTest {
    @TempDir
    Path dir;

    @Test
    void randomDamageGivesQtoolExceptionsOnly() throws Exception {
        for (String name : new String[] {"views.pt", "quantlinear.pt"}) {
            byte[] good = Files.readAllBytes(RealTorchFilesTest.MISC.resolve(name));
            Random rnd = new Random(name.hashCode());
            for (int iter = 0; iter < 3000; iter++) {
                byte[] bad = good.clone();
                int flips = 1 + rnd.nextInt(4);
                for (int k = 0; k < flips; k++) { // mostly where structure is: the pickle at the start, the directory at the end
                    int at = switch (rnd.nextInt(3)) {
                        case 0 -> rnd.nextInt(Math.min(bad.length, 2000));
                        case 1 -> bad.length - 1 - rnd.nextInt(Math.min(bad.length, 1000));
                        default -> rnd.nextInt(bad.length);
                    };
                    bad[at] = (byte) rnd.nextInt(256);
                }
                if (rnd.nextInt(8) == 0) bad = java.util.Arrays.copyOf(bad, rnd.nextInt(bad.length));
                Path f = dir.resolve("bad.pt");
                Files.write(f, bad);
                try (Arena arena = Arena.ofConfined()) {
                    TorchZipFile.open(f, arena).tensors();
                } catch (QtoolException expected) {
                    // the one allowed failure
                } catch (RuntimeException e) {
                    fail(name + " iteration " + iter + ": " + e, e);
                }
            }
        }
    }
}
