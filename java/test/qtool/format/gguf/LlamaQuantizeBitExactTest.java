package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.opentest4j.TestAbortedException;
import qtool.format.gguf.GgufTestFiles.TensorSpec;

/**
 * {@link GgmlCodec}'s quantizers against llama.cpp's own: files quantized by {@code llama-quantize} (from
 * ../shared/peers, unpacked with xz into a temporary folder; the test skips when either is missing) must hold exactly
 * the bytes qtool computes from the same float rows.
 *
 * <p>Result when written (llama.cpp as vendored in llama-cpp-python 0.3.36, x86-64): every row of every type
 * identical — Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, from F32, F16 and BF16 sources, with and
 * without an importance matrix; and requantizing SmolLM2-135M's Q4_1 GGUF (through qtool's Q4_1 dequantizer) to the
 * Q4_K_M mix (Q4_K, Q5_0, Q6_K, Q8_0) and to Q2_K (Q3_K, Q4_0).
 */
class LlamaQuantizeBitExactTest {
    static final GgmlType[] TYPES = {GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K};
    static final long SEED = 20240611;

    @TempDir
    static Path dir;
    static Path quantize;

    @BeforeAll
    static void unpackLlamaQuantize() throws Exception {
        Path xz = GgufTestFiles.requireShared("peers/llama.cpp/llama-quantize.xz");
        quantize = dir.resolve("llama-quantize");
        Process p;
        try {
            p = new ProcessBuilder("xz", "-dc", xz.toString()).redirectOutput(quantize.toFile())
                    .redirectError(ProcessBuilder.Redirect.DISCARD).start();
        } catch (IOException e) {
            throw new TestAbortedException("xz is not installed: " + e.getMessage());
        }
        if (p.waitFor() != 0) throw new TestAbortedException("xz could not unpack " + xz);
        assertTrue(quantize.toFile().setExecutable(true));
    }

    /** Runs llama-quantize; skips the test when the binary cannot run on this machine. */
    private void llamaQuantize(String... args) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add(quantize.toString());
        cmd.addAll(Arrays.asList(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        byte[] out = p.getInputStream().readAllBytes();
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            fail("llama-quantize timed out");
        }
        String log = new String(out, StandardCharsets.UTF_8);
        if (p.exitValue() != 0) {
            if (log.contains("error while loading shared libraries") || p.exitValue() == 126 || p.exitValue() == 127) {
                throw new TestAbortedException("llama-quantize cannot run here: " + log.lines().findFirst().orElse(""));
            }
            fail("llama-quantize " + String.join(" ", args) + " failed (" + p.exitValue() + "):\n" + log);
        }
    }

    /** Importance weights for a tensor: log-normal, with one zero and one tiny value per row. */
    static float[] importance(String tensor, int n) {
        Random r = new Random(tensor.hashCode());
        float[] w = new float[n];
        for (int i = 0; i < n; i++) w[i] = (float) Math.exp(r.nextGaussian() * 1.5);
        w[3] = 0f;
        w[17] = 1e-8f;
        return w;
    }

    /**
     * llama.cpp's legacy imatrix file: i32 entry count; per entry i32 name length, name, i32 ncall, i32 n, n floats
     * (sums, divided by ncall on load: ncall = 1 keeps them exact); then i32 chunk count and the dataset name.
     */
    private Path writeLegacyImatrix(List<TensorSpec> tensors) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteBuffer b = ByteBuffer.allocate(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(tensors.size());
        for (TensorSpec t : tensors) {
            byte[] name = t.name().getBytes(StandardCharsets.UTF_8);
            b.putInt(name.length).put(name).putInt(1).putInt((int) t.dims()[0]);
            for (float f : importance(t.name(), (int) t.dims()[0])) b.putFloat(f);
        }
        byte[] dataset = "qtool-test".getBytes(StandardCharsets.UTF_8);
        b.putInt(1).putInt(dataset.length).put(dataset);
        out.write(b.array(), 0, b.position());
        Path p = dir.resolve("imatrix.dat");
        Files.write(p, out.toByteArray());
        return p;
    }

    /**
     * For each tensor whose type changed from {@code source} to {@code quantized}: dequantizes the source rows with
     * qtool, quantizes them with qtool, and compares with llama.cpp's bytes. Returns per type the number of rows
     * compared; fails listing the first mismatches.
     */
    private static Map<GgmlType, Integer> compare(Path source, Path quantized, boolean withImportance) {
        Map<GgmlType, Integer> rows = new TreeMap<>();
        List<String> mismatches = new ArrayList<>();
        try (GgufFile src = GgufFile.open(source); GgufFile q = GgufFile.open(quantized)) {
            for (GgufTensor t : q.tensors()) {
                GgufTensor s = src.requireTensor(t.name());
                if (t.type() == s.type()) continue;
                int rl = (int) t.rowLength();
                float[] row = new float[rl];
                float[] qw = withImportance ? importance(t.name(), rl) : null;
                for (long r = 0; r < t.rowCount(); r++) {
                    GgmlCodec.dequantizeRow(s.type(), s.data(), r * s.rowBytes(), row, 0, rl);
                    byte[] mine = GgmlCodec.quantizeRow(t.type(), row, qw);
                    byte[] theirs = t.row(r).toArray(ValueLayout.JAVA_BYTE);
                    if (!Arrays.equals(mine, theirs) && mismatches.size() < 10) {
                        mismatches.add(t.name() + " (" + s.type() + " -> " + t.type() + ") row " + r + ": first differing byte "
                                + Arrays.mismatch(mine, theirs));
                    }
                }
                rows.merge(t.type(), (int) t.rowCount(), Integer::sum);
            }
        }
        if (!mismatches.isEmpty()) fail("bytes differ from llama-quantize's:\n" + String.join("\n", mismatches));
        return rows;
    }

    @Test
    void everyTypeFromF32MatchesLlamaQuantize() throws Exception {
        Path f32 = dir.resolve("tiny-f32.gguf");
        GgufTestFiles.writeTinyLlama(f32, GgmlType.F32, SEED);
        for (GgmlType t : TYPES) {
            Path out = dir.resolve("tiny-" + t + ".gguf");
            llamaQuantize("--pure", f32.toString(), out.toString(), t.name());
            Map<GgmlType, Integer> rows = compare(f32, out, false);
            assertEquals(Map.of(t, 64 + 4 * 256 + 2 * 512 + 256 + 64), rows, t.toString());
        }
    }

    @Test
    void everyTypeWithAnImportanceMatrixMatchesLlamaQuantize() throws Exception {
        Path f32 = dir.resolve("tiny-f32-imat.gguf");
        GgufTestFiles.writeTinyLlama(f32, GgmlType.F32, SEED + 1);
        Path imatrix = writeLegacyImatrix(Arrays.stream(GgufTestFiles.TINY_LLAMA).filter(t -> t.dims().length == 2).toList());
        for (GgmlType t : TYPES) {
            Path out = dir.resolve("tiny-imat-" + t + ".gguf");
            llamaQuantize("--pure", "--imatrix", imatrix.toString(), f32.toString(), out.toString(), t.name());
            assertEquals(1, compare(f32, out, true).size(), t.toString());
        }
    }

    @Test
    void halfPrecisionSourcesMatchLlamaQuantize() throws Exception {
        for (GgmlType source : new GgmlType[] {GgmlType.F16, GgmlType.BF16}) {
            Path in = dir.resolve("tiny-" + source + ".gguf");
            GgufTestFiles.writeTinyLlama(in, source, SEED + 2);
            for (GgmlType t : new GgmlType[] {GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q3_K}) {
                Path out = dir.resolve("tiny-" + source + "-" + t + ".gguf");
                llamaQuantize("--pure", in.toString(), out.toString(), t.name());
                assertEquals(1, compare(in, out, false).size(), source + " -> " + t);
            }
        }
    }

    @Test
    void requantizedSmolLm2MatchesLlamaQuantize() throws Exception {
        Path smol = GgufTestFiles.requireShared("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        Path out = dir.resolve("smol-Q4_K_M.gguf");
        llamaQuantize("--allow-requantize", smol.toString(), out.toString(), "Q4_K_M", "4");
        Map<GgmlType, Integer> rows = compare(smol, out, false);
        // 576-wide rows cannot hold K-quant blocks: llama.cpp falls back to Q5_0 (from Q4_K) and Q8_0 (from Q6_K)
        assertEquals(List.of(GgmlType.Q5_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K), List.copyOf(rows.keySet()));
    }
}
