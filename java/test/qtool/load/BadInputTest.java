package qtool.load;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import qtool.QtoolException;
import qtool.cli.Main;
import qtool.model.LlamaModel;

/** Every malformed model directory is refused with a QtoolException that names the file and says what is wrong. */
class BadInputTest {

    @ParameterizedTest(name = "{0}")
    @MethodSource("qtool.load.BadModel#all")
    void loadingRefusesWithFileAndProblem(BadModel bad, @TempDir Path root) {
        Path dir = bad.makeIn(root);
        QtoolException e = assertThrows(QtoolException.class, () -> LlamaModel.open(dir).close());
        String message = e.getMessage();
        assertTrue(message.startsWith(dir.resolve(bad.file()).toString()), "names " + bad.file() + ": " + message);
        assertTrue(message.contains(bad.problem()), "says '" + bad.problem() + "': " + message);
        assertFalse(message.contains("\n"), message);
    }

    @Test
    void safetensorsFileErrorsNameTheFile(@TempDir Path dir) {
        Path file = SafetensorsBytes.write(dir.resolve("x.safetensors"),
                SafetensorsBytes.of(SafetensorsBytes.header(SafetensorsBytes.tensor("w", "F32", "[3]", 0, 16)), 16));
        try (Arena arena = Arena.ofConfined()) {
            QtoolException e = assertThrows(QtoolException.class, () -> SafetensorsFile.open(file, arena));
            assertEquals(file + ": tensor 'w': shape [3] x F32 is 12 bytes but data_offsets span 16", e.getMessage());
            QtoolException missing = assertThrows(QtoolException.class, () -> SafetensorsFile.open(dir.resolve("none.safetensors"), arena));
            assertEquals(dir.resolve("none.safetensors") + ": no such file", missing.getMessage());
        }
    }

    /** Shapes are checked against config.json when a model is opened, before anything computes with them. */
    @Test
    void tensorShapeDisagreeingWithConfigIsRefused(@TempDir Path root) throws Exception {
        Path dir = root.resolve("m");
        assertEquals(0, Main.run(new java.io.PrintWriter(java.io.Writer.nullWriter()), new java.io.PrintWriter(java.io.Writer.nullWriter()),
                "synth", "--out", dir.toString(), "--hidden", "8", "--layers", "2", "--heads", "2", "--intermediate", "16", "--vocab", "16"));
        LlamaModel.open(dir).close(); // as written it is consistent
        Path config = dir.resolve("config.json");
        Files.writeString(config, Files.readString(config).replace("\"intermediate_size\" : 16", "\"intermediate_size\" : 32"));
        QtoolException e = assertThrows(QtoolException.class, () -> LlamaModel.open(dir).close());
        assertEquals(dir + ": tensor 'model.layers.0.mlp.gate_proj.weight' has shape [16, 8], config.json implies [32, 8]", e.getMessage());

        Files.writeString(config, Files.readString(config).replace("\"intermediate_size\" : 32", "\"intermediate_size\" : 16")
                .replace("\"num_hidden_layers\" : 2", "\"num_hidden_layers\" : 3"));
        QtoolException missing = assertThrows(QtoolException.class, () -> LlamaModel.open(dir).close());
        assertEquals(dir + ": tensor 'model.layers.2.input_layernorm.weight' not found", missing.getMessage());
    }
}
