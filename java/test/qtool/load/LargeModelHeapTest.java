package qtool.load;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.cli.Main;

/**
 * A ~1 GB model is read in full by a JVM whose heap is capped at 64 MB: weights are mapped, never copied onto the
 * heap. The child JVM makes the cap real; measuring heap in this JVM would be blurred by everything else in it.
 */
class LargeModelHeapTest {

    @Test
    void oneGigabyteModelReadsWithin64MegabytesOfHeap(@TempDir Path root) throws Exception {
        Path dir = root.resolve("synth-1g");
        PrintWriter quiet = new PrintWriter(Writer.nullWriter());
        // 8 layers × 51.4M + 2 × 65.5M (embedding, head) = 542M parameters, 1.08 GB in F16; shards of 300 MB.
        assertEquals(0, Main.run(quiet, quiet, "synth", "--out", dir.toString(), "--hidden", "2048", "--layers", "8", "--heads", "16",
                "--intermediate", "5632", "--vocab", "32000", "--shard-size", "300"));

        long bytes = 0, expectedChecksum;
        int tensors;
        try (Weights w = Weights.open(dir)) {
            for (Tensor t : w.all().values()) bytes += t.byteSize();
            tensors = w.all().size();
            assertTrue(w.files().size() >= 3, "sharded at 300 MB: " + w.files().size());
            expectedChecksum = ReadAllTensors.checksum(w);
        }
        assertTrue(bytes > 1_000_000_000L && bytes < 1_200_000_000L, "about 1 GB: " + bytes);

        String java = ProcessHandle.current().info().command().orElseThrow();
        Process child = new ProcessBuilder(List.of(java, "-Xmx64m", "-XX:+UseSerialGC", "--enable-native-access=ALL-UNNAMED",
                "-cp", System.getProperty("java.class.path"), ReadAllTensors.class.getName(), dir.toString()))
                .redirectErrorStream(true).start();
        String output = new String(child.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        assertTrue(child.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, child.exitValue(), output);
        String[] f = output.split(" ");
        assertEquals("tensors " + tensors + " bytes " + bytes + " checksum " + expectedChecksum, String.join(" ", List.of(f).subList(0, 6)),
                output);
        long peakHeap = Long.parseLong(f[7]);
        assertTrue(peakHeap < 64L << 20, "peak heap " + peakHeap);
    }
}
