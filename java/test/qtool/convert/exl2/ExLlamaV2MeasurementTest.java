package qtool.convert.exl2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.cli.CliRun;

/**
 * A measurement.json that ExLlamaV2 0.3.2 itself wrote ({@code resources/exl2/exllamav2-tiny-measurement.json}: its
 * convert_exl2 measurement pass on the GPU host, over `qtool synth ... --seed 5`, the model this test rebuilds bit for
 * bit) is accepted by {@code -m}: qtool optimizes from it and writes an EXL2 model at the target bits per weight.
 */
class ExLlamaV2MeasurementTest {
    private static final Path MEASUREMENT = Path.of("java/test/resources/exl2/exllamav2-tiny-measurement.json");

    @Test
    void convertReusesExLlamaV2sMeasurement(@TempDir Path dir) throws Exception {
        Path model = dir.resolve("tiny");
        CliRun s = CliRun.of("synth", "--out", model.toString(), "--hidden", "128", "--layers", "2", "--heads", "2", "--kv-heads", "1",
                "--intermediate", "320", "--vocab", "32000", "--dtype", "f16", "--tokenizer", Shared.require("tokenizers/llama2").toString(),
                "--seed", "5");
        assertEquals(0, s.exitCode(), s.err());
        CliRun c = CliRun.of("convert", "-i", model.toString(), "-o", dir.resolve("work").toString(), "-m", MEASUREMENT.toString(), "-b", "4.0",
                "-c", Shared.require("data/calibration-mix.parquet").toString(), "-r", "2", "-l", "64", "--device", "cpu", "--json");
        assertEquals(0, c.exitCode(), c.err());
        double bpw = ((Number) qtool.load.Json.object(qtool.load.Json.parse(c.out().strip(), "summary"), "summary").get("bits_per_weight")).doubleValue();
        assertTrue(Math.abs(bpw - 4.0) <= 0.05 && bpw <= 4.0, "achieved " + bpw);
        assertTrue(Files.isRegularFile(dir.resolve("work/out/config.json")));
    }
}
