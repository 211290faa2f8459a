package qtool.load;

import static qtool.load.SafetensorsBytes.header;
import static qtool.load.SafetensorsBytes.tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.function.Consumer;

/**
 * Model directories that are wrong in one way each, shared by the API tests (load) and the CLI tests (cli). Every
 * one must be refused with a {@code QtoolException} naming {@link #file} and containing {@link #problem}.
 */
public record BadModel(String name, Consumer<Path> make, String file, String problem) {

    /** A tiny valid Llama config.json; the bad safetensors cases need it so loading gets as far as the weights. */
    public static final String TINY_CONFIG = """
            {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": 16}
            """;

    @Override
    public String toString() {
        return name;
    }

    /** Makes this model in a new folder under {@code root} and returns the folder. */
    public Path makeIn(Path root) {
        Path dir = root.resolve(name);
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        make.accept(dir);
        return dir;
    }

    private static final String MODEL = "model.safetensors";

    private static BadModel weights(String name, byte[] bytes, String problem) {
        return new BadModel(name, dir -> {
            writeConfig(dir, TINY_CONFIG);
            SafetensorsBytes.write(dir.resolve(MODEL), bytes);
        }, MODEL, problem);
    }

    private static BadModel config(String name, String configJson, String problem) {
        return new BadModel(name, dir -> {
            writeConfig(dir, configJson);
            SafetensorsBytes.write(dir.resolve(MODEL), SafetensorsBytes.of("{}", 0));
        }, "config.json", problem);
    }

    static void writeConfig(Path dir, String json) {
        try {
            Files.writeString(dir.resolve("config.json"), json);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static List<BadModel> all() {
        String w16 = header(tensor("w", "F32", "[4,4]", 0, 64));
        byte[] whole = SafetensorsBytes.of(w16, 64);
        byte[] cutInData = java.util.Arrays.copyOf(whole, whole.length - 34);
        return List.of(
                weights("empty-file", new byte[0], "truncated: 0 bytes"),
                weights("shorter-than-length-field", new byte[] {1, 2, 3, 4, 5}, "truncated: 5 bytes"),
                weights("cut-in-data", cutInData, "data_offsets [0, 64] lie outside the data region (30 bytes)"),
                weights("header-length-past-end", SafetensorsBytes.of(1000, w16, 64), "header length 1000 runs past the end of the file"),
                weights("header-length-negative", SafetensorsBytes.of(-1, w16, 64),
                        "header length 18446744073709551615 runs past the end of the file"),
                weights("header-length-zero", SafetensorsBytes.of(0, w16, 64), "header length 0 is too short"),
                weights("header-not-json", SafetensorsBytes.of("{\"w\": {\"dtype\": ", 0), "invalid JSON"),
                weights("header-not-object", SafetensorsBytes.of("[1, 2]", 0), "expected a JSON object"),
                weights("offsets-past-end", SafetensorsBytes.of(header(tensor("w", "F32", "[4,8]", 0, 128)), 64),
                        "data_offsets [0, 128] lie outside the data region (64 bytes)"),
                weights("offsets-reversed", SafetensorsBytes.of(header(tensor("w", "F32", "[4]", 16, 0)), 64), "lie outside the data region"),
                weights("overlapping-tensors",
                        SafetensorsBytes.of(header(tensor("a", "F32", "[8]", 0, 32), tensor("b", "F32", "[8]", 16, 48)), 48),
                        "tensors 'a' and 'b' overlap"),
                weights("overlap-around-empty-tensor",
                        SafetensorsBytes.of(header(tensor("a", "F32", "[16]", 0, 64), tensor("e", "F32", "[0]", 8, 8),
                                tensor("b", "F32", "[4]", 16, 32)), 64),
                        "tensors 'a' and 'b' overlap"),
                weights("same-bytes-twice",
                        SafetensorsBytes.of(header(tensor("a", "F32", "[4]", 0, 16), tensor("b", "I32", "[4]", 0, 16)), 16), "overlap"),
                weights("shape-size-mismatch", SafetensorsBytes.of(header(tensor("w", "F32", "[4,4]", 0, 32)), 64),
                        "shape [4, 4] x F32 is 64 bytes but data_offsets span 32"),
                weights("shape-overflows", SafetensorsBytes.of(header(tensor("w", "I64", "[4294967296,4294967296]", 0, 8)), 8),
                        "is more than 2^63 bytes"),
                weights("negative-dimension", SafetensorsBytes.of(header(tensor("w", "F32", "[-4]", 0, 16)), 16), "negative dimension"),
                weights("unknown-dtype", SafetensorsBytes.of(header(tensor("w", "F8_E4M3", "[16]", 0, 16)), 16),
                        "unknown dtype 'F8_E4M3' (supported: F64, F32"),
                weights("missing-dtype", SafetensorsBytes.of("{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", 16), "missing dtype"),
                weights("fractional-shape", SafetensorsBytes.of(header(tensor("w", "F32", "[4.5]", 0, 16)), 16), "expected an array of integers"),
                new BadModel("shard-missing", dir -> {
                    writeConfig(dir, TINY_CONFIG);
                    SafetensorsBytes.write(dir.resolve("model-00001-of-00002.safetensors"), SafetensorsBytes.of(header(tensor("a", "F32", "[4]", 0, 16)), 16));
                    writeString(dir.resolve(Weights.INDEX), """
                            {"metadata": {"total_size": 32},
                             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
                            """);
                }, Weights.INDEX, "shard 'model-00002-of-00002.safetensors' is named in the index but missing"),
                new BadModel("index-not-json", dir -> {
                    writeConfig(dir, TINY_CONFIG);
                    writeString(dir.resolve(Weights.INDEX), "{\"weight_map\": ");
                }, Weights.INDEX, "invalid JSON"),
                new BadModel("no-safetensors", dir -> writeConfig(dir, TINY_CONFIG), "", "no .safetensors files"),
                new BadModel("no-config", dir -> SafetensorsBytes.write(dir.resolve(MODEL), SafetensorsBytes.of("{}", 0)),
                        "config.json", "no such file"),
                config("config-not-json", "{\"model_type\": \"llama\", \"hidden_size\": ", "invalid JSON"),
                config("config-not-object", "[\"llama\"]", "expected a JSON object"),
                config("config-unsupported-type", TINY_CONFIG.replace("\"llama\"", "\"gpt2\""),
                        "unsupported architecture 'gpt2' (supported: llama, mistral, qwen2)"),
                config("config-missing-hidden-size", TINY_CONFIG.replace("\"hidden_size\"", "\"hidden\""), "missing or non-numeric 'hidden_size'"));
    }

    private static void writeString(Path file, String text) {
        try {
            Files.writeString(file, text);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
