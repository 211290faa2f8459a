package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.Json;
import qtool.load.SafetensorsFile;

/**
 * GPTQ-for-LLaMa checkpoints written by PyTorch (scripts/gpu/make_torch_fixtures.py: QuantLinear.pack()'s layouts,
 * qzeros with act-order at 4 bits and the older float zeros at 3 bits) imported by {@code import-gptq-pt}: each
 * linear dequantizes to what GPTQ-for-LLaMa's kernels compute, saved beside it by the script.
 */
class GptqForLlamaFixturesTest {
    static final Path FIXTURES = Path.of("java/test/resources/torch/gptq-for-llama");

    @Test
    void pytorchMadeCheckpointsDequantizeAsGptqForLlama(@TempDir Path dir) {
        assumeTrue(Files.isRegularFile(FIXTURES.resolve("manifest.json")),
                FIXTURES + " not made yet: run scripts/gpu/make_torch_fixtures.py OUT on a host with PyTorch and copy OUT/gptq-for-llama there");
        for (Object item : Json.array(Json.parse(readString(FIXTURES.resolve("manifest.json")), "manifest"), "manifest")) {
            Map<String, Object> f = Json.object(item, "manifest entry");
            String file = String.valueOf(f.get("file"));
            int bits = ((Number) f.get("bits")).intValue(), group = ((Number) f.get("group_size")).intValue();
            Path out = dir.resolve(file);
            CliRun r = CliRun.of("import-gptq-pt", "-i", FIXTURES.resolve(file).toString(), "--bits", String.valueOf(bits),
                    "--group-size", String.valueOf(group), "--config", FIXTURES.toString(), "-o", out.toString());
            assertEquals(0, r.exitCode(), r.err());
            // fp16 scales (the float-zeros layout stored float32 ones): within |q − z| · half an fp16 ulp of the scale
            float relTolerance = file.contains("zeros") ? (1 << bits) * 0x1p-11f : 0f;
            try (Arena arena = Arena.ofConfined(); GptqCheckpoint ck = GptqCheckpoint.open(out)) {
                assertEquals(bits, ck.config().bits());
                assertEquals(file.contains("act"), ck.config().descAct(), file);
                Map<String, Tensor> expected = SafetensorsFile.open(FIXTURES.resolve(String.valueOf(f.get("expected"))), arena).tensors();
                assertEquals(expected.keySet().stream().map(n -> n.substring(0, n.length() - ".weight".length())).collect(java.util.stream.Collectors.toSet()),
                        Set.copyOf(ck.quantizedLinears()), file);
                for (var e : expected.entrySet()) {
                    String prefix = e.getKey().substring(0, e.getKey().length() - ".weight".length());
                    float[] want = e.getValue().toFloatArray(), got = ck.dequantize(prefix);
                    assertArrayEquals(new int[] {(int) e.getValue().shape()[0], e.getValue().cols()}, ck.shape(prefix), prefix);
                    float scale = 0;
                    for (float v : want) scale = Math.max(scale, Math.abs(v));
                    for (int k = 0; k < want.length; k++) assertEquals(want[k], got[k], relTolerance * scale, file + ": " + prefix + "[" + k + "]");
                    assertEquals(null, ck.bias(prefix), "all-zero bias dropped");
                }
            }
            assertTrue(Files.isRegularFile(out.resolve("quantize_config.json")));
        }
    }

    private static String readString(Path p) {
        try {
            return Files.readString(p);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
