package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.Random;
import java.util.function.Consumer;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.cli.CliRun;
import qtool.load.DType;
import qtool.format.gguf.GgufTestFiles.TensorSpec;

/**
 * Bad GGUF files given to the command line ({@code gguf import}, and a model command's {@code -m F.gguf}): each exits
 * 2 with one line that names the file and the problem, and leaves no output directory (nor its temporary sibling)
 * behind. Issue 7's and issue 11's bad-input lists, case by case, on a small llama GGUF with a tokenizer.
 */
class GgufImportBadInputTest {
    @TempDir
    Path dir;
    Path good;
    byte[] bytes;

    @BeforeEach
    void writeGoodFile() throws IOException {
        good = dir.resolve("good.gguf");
        writeTiny(good, m -> {}, GgufTestFiles.VOCAB, GgmlType.Q4_0);
        bytes = Files.readAllBytes(good);
    }

    /** The tiny llama (Q4_0 weights, F32 norms) with a {@code vocab}-token vocabulary and edited metadata. */
    private static void writeTiny(Path path, Consumer<Map<String, GgufValue>> editMetadata, int vocab, GgmlType weightType) {
        Map<String, GgufValue> meta = GgufTestFiles.tinyLlamaMetadata();
        editMetadata.accept(meta);
        var v = HfToGgufTest.tinyVocabulary();
        String[] tokens = Arrays.copyOf(v.tokens(), vocab);
        int[] types = Arrays.copyOf(v.tokenTypes(), vocab);
        for (int i = v.tokens().length; i < vocab; i++) tokens[i] = "<extra_" + i + ">";
        try (GgufWriter w = new GgufWriter(path)) {
            w.putAll(meta);
            GgufTokenizer.put(w, new qtool.tokenize.TokenizerSpec(v.model(), v.pre(), tokens, null, types, v.merges(),
                    v.bos(), v.eos(), v.unk(), v.pad(), v.addBos(), v.addEos(), v.addSpacePrefix()));
            for (TensorSpec t : GgufTestFiles.TINY_LLAMA) w.addTensor(t.name(), t.dims().length == 1 ? GgmlType.F32 : weightType, t.dims());
            for (TensorSpec t : GgufTestFiles.TINY_LLAMA) {
                float[] x = GgufTestFiles.weights(t, 3);
                GgmlType tt = t.dims().length == 1 ? GgmlType.F32 : weightType;
                byte[] b = new byte[(int) tt.byteSize(x.length)];
                GgmlCodec.quantizeRow(tt, x, 0, x.length, null, MemorySegment.ofArray(b), 0);
                w.writeTensor(t.name(), MemorySegment.ofArray(b));
            }
        }
    }

    /** Imports {@code gguf}: exit 2, one line "qtool: FILE: ...expected...", no output directory or leftovers. */
    private void assertImportRefused(Path gguf, String expected) throws IOException {
        Path out = dir.resolve("out");
        CliRun r = CliRun.of("gguf", "import", "-i", gguf.toString(), "-o", out.toString());
        String what = gguf.getFileName() + ": " + r.err();
        assertEquals(2, r.exitCode(), what);
        assertEquals(1, r.errLines().length, "one line: " + what);
        assertTrue(r.err().startsWith("qtool: " + gguf + ": "), "names the file: " + what);
        assertTrue(r.err().contains(expected), "expected '" + expected + "' in: " + what);
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(java.util.List.of(), s.filter(p -> !p.getFileName().toString().endsWith(".gguf")).toList(),
                    "nothing but the input files may be left: " + what);
        }
    }

    private Path patched(String name, Consumer<ByteBuffer> patch) throws IOException {
        ByteBuffer b = ByteBuffer.wrap(bytes.clone()).order(ByteOrder.LITTLE_ENDIAN);
        patch.accept(b);
        Path p = dir.resolve(name);
        Files.write(p, b.array());
        return p;
    }

    /** The position just after the first occurrence of the GGUF string {@code s} (u64 length + bytes) in the file. */
    private int after(String s) {
        byte[] needle = s.getBytes(StandardCharsets.UTF_8);
        outer:
        for (int i = 8; i + needle.length <= bytes.length; i++) {
            for (int j = 0; j < needle.length; j++) if (bytes[i + j] != needle[j]) continue outer;
            if (ByteBuffer.wrap(bytes, i - 8, 8).order(ByteOrder.LITTLE_ENDIAN).getLong() == needle.length) return i + needle.length;
        }
        throw new AssertionError("'" + s + "' not in the file");
    }

    @Test
    void theGoodFileImports() {
        CliRun r = CliRun.of("gguf", "import", "-i", good.toString(), "-o", dir.resolve("ok").toString());
        assertEquals(0, r.exitCode(), r.err());
    }

    @Test
    void wrongMagic() throws IOException {
        assertImportRefused(patched("magic.gguf", b -> b.put(0, (byte) 'X')), "not a GGUF file");
    }

    @Test
    void unsupportedVersion() throws IOException {
        assertImportRefused(patched("v4.gguf", b -> b.putInt(4, 4)), "unsupported GGUF version 4");
        assertImportRefused(patched("v1.gguf", b -> b.putInt(4, 1)), "unsupported GGUF version 1");
    }

    @Test
    void metadataArrayLongerThanTheFile() throws IOException {
        int at = after("tokenizer.ggml.tokens"); // u32 ARRAY | u32 STRING | u64 count
        assertImportRefused(patched("tokens.gguf", b -> b.putLong(at + 8, 1L << 40)), "truncated");
        int merges = after("tokenizer.ggml.merges");
        assertImportRefused(patched("merges.gguf", b -> b.putLong(merges + 8, Long.MAX_VALUE)), "truncated");
    }

    @Test
    void unsupportedTensorType() throws IOException {
        int at = after("blk.0.attn_q.weight"); // u32 n_dims | u64 dims[2] | u32 type | u64 offset
        assertImportRefused(patched("iq2.gguf", b -> b.putInt(at + 4 + 16, 16)), // IQ2_XXS: a type qtool does not read
                "tensor 'blk.0.attn_q.weight' has ggml type 16, which qtool does not support");
        assertImportRefused(patched("type999.gguf", b -> b.putInt(at + 4 + 16, 999)), "has ggml type 999");
    }

    @Test
    void tensorDataPastTheEndOfTheFile() throws IOException {
        int at = after("output.weight");
        long offset = ByteBuffer.wrap(bytes, at + 4 + 16 + 4, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        // the last tensor moved 64 bytes further: the file still holds every byte up to its old end
        assertImportRefused(patched("past-end.gguf", b -> b.putLong(at + 4 + 16 + 4, offset + 64)),
                "tensor 'output.weight' (" + 64 * 256 / 32 * 18 + " bytes at data offset " + (offset + 64) + ") ends past the end of the file");
    }

    @Test
    void unknownArchitecture() throws IOException {
        Path p = dir.resolve("arch.gguf");
        writeTiny(p, m -> m.put("general.architecture", GgufValue.of("mamba")), GgufTestFiles.VOCAB, GgmlType.Q4_0);
        assertImportRefused(p, "architecture 'mamba' is not supported for import (supported: llama)");
        Path none = dir.resolve("no-arch.gguf");
        writeTiny(none, m -> m.remove("general.architecture"), GgufTestFiles.VOCAB, GgmlType.Q4_0);
        assertImportRefused(none, "general.architecture");
    }

    @Test
    void vocabularyDisagreeingWithTheEmbedding() throws IOException {
        Path more = dir.resolve("vocab65.gguf");
        writeTiny(more, m -> {}, GgufTestFiles.VOCAB + 1, GgmlType.Q4_0);
        assertImportRefused(more, "tokenizer.ggml.tokens has 65 tokens, but token_embd.weight has 64 rows");
        Path fewer = dir.resolve("vocab60.gguf"); // convert_hf_to_gguf.py pads the list to the embedding's rows
        writeTiny(fewer, m -> {}, GgufTestFiles.VOCAB - 4, GgmlType.Q4_0);
        assertImportRefused(fewer, "tokenizer.ggml.tokens has 60 tokens, but token_embd.weight has 64 rows");
    }

    @Test
    void truncatedAnywhere() throws IOException {
        long dataOffset, dataEnd;
        try (GgufFile g = GgufFile.open(good)) {
            dataOffset = g.dataOffset();
            dataEnd = dataOffset;
            for (GgufTensor t : g.tensors()) dataEnd = Math.max(dataEnd, dataOffset + t.offset() + t.byteSize());
        }
        // every cut in the fixed header and the first kv, 100 random ones in the rest of the metadata and tensor infos,
        // 30 in the data; one in ten through the command line (slower), the rest through the importer it calls
        java.util.TreeSet<Long> cuts = new java.util.TreeSet<>();
        for (long n = 0; n < 64; n++) cuts.add(n);
        Random rnd = new Random(11);
        for (int i = 0; i < 100; i++) cuts.add(64 + (long) (rnd.nextDouble() * (dataOffset - 64)));
        for (int i = 0; i < 30; i++) cuts.add(dataOffset + (long) (rnd.nextDouble() * (dataEnd - dataOffset)));
        Path cut = dir.resolve("cut.gguf"), out = dir.resolve("out");
        int i = 0;
        for (long n : cuts) {
            Files.write(cut, Arrays.copyOf(bytes, (int) n));
            String expected = n < 24 ? "GGUF" : "truncated";
            if (i++ % 10 == 0) {
                assertImportRefused(cut, expected);
                continue;
            }
            QtoolException e = assertThrows(QtoolException.class, () -> GgufToHf.convert(cut, out, DType.F16, 0, null));
            assertTrue(e.getMessage().startsWith(cut + ": ") && e.getMessage().contains(expected), "cut at " + n + ": " + e.getMessage());
            assertTrue(Files.notExists(out), "cut at " + n + " left " + out);
        }
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(java.util.List.of(), s.filter(p -> !p.getFileName().toString().endsWith(".gguf")).toList());
        }
    }

    @Test
    void aBadGgufGivenToAModelCommand() throws IOException {
        Path cut = dir.resolve("cut.gguf");
        Files.write(cut, Arrays.copyOf(bytes, bytes.length - 1000));
        CliRun r = CliRun.of("tokenize", "-m", cut.toString(), "-p", "Hello", "--ids");
        assertEquals(2, r.exitCode(), r.err());
        assertEquals(1, r.errLines().length, r.err());
        assertTrue(r.err().startsWith("qtool: " + cut + ": truncated GGUF file"), r.err());
    }
}
