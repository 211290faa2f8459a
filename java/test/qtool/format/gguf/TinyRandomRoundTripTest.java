package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.load.DType;
import qtool.tokenize.Tokenizer;
import qtool.tokenize.TokenizerSpec;

/**
 * ../shared/models/tiny-random-gguf (a one-layer, 8-wide llama with Llama 2's full SentencePiece vocabulary) through
 * import and export: the imported tokenizer.json tokenizes as the GGUF's own vocabulary does, and exporting the
 * directory again as F16 gives back the original tensors byte for byte and a vocabulary llama.cpp tokenizes the same.
 */
class TinyRandomRoundTripTest {
    @TempDir
    static Path dir;
    static Path gguf;
    static Path hf;
    static Path sample;

    @BeforeAll
    static void importIt() throws IOException {
        gguf = GgufTestFiles.requireShared("models/tiny-random-gguf/llama-2-tiny-random.gguf");
        hf = dir.resolve("tiny-random");
        GgufToHf.convert(gguf, hf, DType.F16, 0, null);
        String wiki = Files.readString(GgufTestFiles.requireShared("data/wiki.test.raw"), StandardCharsets.UTF_8);
        sample = dir.resolve("sample.txt");
        Files.writeString(sample, wiki.substring(0, 60_000) + "\n<s> Special </s> ünïcödé 你好 \t tabs  and   spaces 12345 <0x0A>\n");
    }

    static TokenizerSpec spec(Path file) {
        try (GgufFile g = GgufFile.open(file)) {
            return GgufTokenizer.spec(g);
        }
    }

    @Test
    void importedTokenizerJsonTokenizesAsTheGguf() throws IOException {
        String text = Files.readString(sample, StandardCharsets.UTF_8);
        Tokenizer original = Tokenizer.fromSpec(spec(gguf));
        Tokenizer imported = Tokenizer.load(hf);
        assertArrayEquals(original.encode(text, false), imported.encode(text, false));
        assertArrayEquals(original.encode(text, true), imported.encode(text));
        assertEquals(1, imported.encode("Hello")[0]); // add_bos_token
        String plain = text.substring(0, 60_000); // without the special tokens, which decode leaves out
        assertEquals(plain, imported.decode(imported.encode(plain, false)));
    }

    @Test
    void exportGivesBackTheOriginal() throws IOException {
        Path out = dir.resolve("exported-f16.gguf");
        HfToGguf.convert(hf, out, HfToGguf.Options.of(LlamaFileType.F16), null);
        try (GgufFile a = GgufFile.open(gguf); GgufFile b = GgufFile.open(out)) {
            assertEquals(a.tensors().size(), b.tensors().size());
            for (GgufTensor t : a.tensors()) {
                GgufTensor u = b.requireTensor(t.name());
                assertEquals(t.type(), u.type(), t.name());
                assertArrayEquals(t.dims(), u.dims(), t.name());
                assertEquals(-1, t.data().mismatch(u.data()), t.name() + " bytes");
            }
            for (String key : List.of("llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                    "llama.rope.dimension_count", "llama.attention.head_count", "llama.attention.head_count_kv")) {
                assertEquals(a.getInt(key), b.getInt(key), key);
            }
        }
        TokenizerSpec s = spec(gguf), e = spec(out);
        assertEquals("llama", e.model());
        assertArrayEquals(s.tokens(), e.tokens());
        assertArrayEquals(s.tokenTypes(), e.tokenTypes());
        assertEquals(List.of(s.bos(), s.eos(), s.unk(), s.addBos(), s.addEos(), s.addSpacePrefix()),
                List.of(e.bos(), e.eos(), e.unk(), e.addBos(), e.addEos(), e.addSpacePrefix()));
        // the scores are rebuilt from tokenizer.json's merges; llama.cpp tokenizes as with the original's
        String text = Files.readString(sample, StandardCharsets.UTF_8);
        assertArrayEquals(Tokenizer.fromSpec(s).encode(text, false), Tokenizer.fromSpec(e).encode(text, false));
        assertArrayEquals(LlamaCppTools.tokenize(gguf, sample), LlamaCppTools.tokenize(out, sample));
    }

    @Test
    void rowsNoBlockFitsFallBackToF16AsInLlamaCpp() {
        List<HfToGguf.Planned> plan = HfToGguf.plan(hf, HfToGguf.Options.of(LlamaFileType.Q4_K_M));
        var theirs = LlamaCppTools.dryRunTypes(gguf, "Q4_K_M");
        for (HfToGguf.Planned p : plan) {
            // 8 columns: F16, as no block fits; ffn_down's 32 columns: Q6_K's fallback Q8_0
            GgmlType expected = p.dims().length == 1 ? GgmlType.F32 : p.dims()[0] == 32 ? GgmlType.Q8_0 : GgmlType.F16;
            assertEquals(expected, p.type(), p.name());
            assertEquals(theirs.get(p.name()), p.type(), p.name());
        }
        assertEquals(12, plan.size());
    }
}
