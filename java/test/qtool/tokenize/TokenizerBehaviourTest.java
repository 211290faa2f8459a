package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;

/** Decoding token by token, round trips, special tokens, and the errors for bad files. */
class TokenizerBehaviourTest {

    static final String MIXED = "Hello, world! 🦙 naïve café 東京 ١٢٣ x² \t tabs\n\nnew  lines  ";

    static List<Tokenizer> tokenizers() {
        return List.of(
                Tokenizer.load(TestData.shared("models/smollm2-135m")),
                Tokenizer.load(TestData.shared("tokenizers/llama2")),
                Tokenizer.load(TestData.shared("tokenizers/llama2/tokenizer.model")),
                Tokenizer.load(TestData.shared("models/stories260K")));
    }

    /** Streaming a character that byte tokens split (the llama's 4 UTF-8 bytes) prints it whole, once complete. */
    @Test
    void streamDecoderNeverBreaksUtf8() {
        for (Tokenizer t : tokenizers()) {
            int[] ids = t.encode(MIXED, true);
            StreamDecoder d = t.streamDecoder();
            StringBuilder out = new StringBuilder();
            for (int id : ids) {
                String piece = d.next(id);
                assertFalse(piece.contains("\uFFFD"), t + ": a broken character after id " + id);
                out.append(piece);
            }
            out.append(d.flush());
            assertEquals(MIXED, out.toString(), t.toString());
            assertEquals(MIXED, t.decode(ids), t.toString());
        }
        Tokenizer llama = Tokenizer.load(TestData.shared("tokenizers/llama2"));
        int[] llamaIds = llama.encode("🦙", false); // ▁ then <0xF0> <0x9F> <0xA6> <0x99>
        assertArrayEquals(new int[] {29871, 243, 162, 169, 156}, llamaIds);
        StreamDecoder d = llama.streamDecoder();
        assertEquals("", d.next(29871)); // the dummy-prefix space is dropped
        assertEquals("", d.next(243));
        assertEquals("", d.next(162));
        assertEquals("", d.next(169));
        assertEquals("🦙", d.next(156));
    }

    @Test
    void randomUnicodeRoundTrips() {
        Random random = new Random(42);
        int[][] ranges = {{0x20, 0x7E}, {0xA0, 0x24F}, {0x370, 0x3FF}, {0x400, 0x4FF}, {0x4E00, 0x4FFF}, {0x1F300, 0x1F6FF}, {0x9, 0xA}};
        for (Tokenizer t : tokenizers()) {
            for (int n = 0; n < 200; n++) {
                StringBuilder b = new StringBuilder();
                int len = random.nextInt(40);
                for (int i = 0; i < len; i++) {
                    int[] r = ranges[random.nextInt(ranges.length)];
                    b.appendCodePoint(r[0] + random.nextInt(r[1] - r[0] + 1));
                }
                String s = b.toString();
                assertEquals(s, t.decode(t.encode(s, false)), t + ": " + s);
            }
        }
    }

    @Test
    void specialTokensInTextAreMatchedWhole() {
        Tokenizer smol = Tokenizer.load(TestData.shared("models/smollm2-135m"));
        assertEquals(1, smol.bos());
        assertEquals(2, smol.eos());
        assertFalse(smol.addBosByDefault());
        int[] ids = smol.encode("<|im_start|>user\nHi<|im_end|>", false);
        assertEquals(1, ids[0]);
        assertEquals(2, ids[ids.length - 1]);
        assertTrue(smol.isSpecial(1));
        assertEquals("user\nHi", smol.decode(ids));
        assertEquals("<|im_start|>", smol.piece(1));
        assertEquals(49152, smol.vocabSize());
        assertArrayEquals(smol.encode("x", true), new int[] {1, smol.encode("x", false)[0]});
    }

    @Test
    void missingAndMalformedFilesNameTheFile(@TempDir Path dir) throws IOException {
        QtoolException e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().contains(dir.toString()) && e.getMessage().contains("tokenizer.json"), e.getMessage());

        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir.resolve("nothing-here")));
        assertTrue(e.getMessage().contains("nothing-here"), e.getMessage());

        Path json = dir.resolve("tokenizer.json");
        Files.writeString(json, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}");
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().startsWith(json.toString()) && e.getMessage().contains("invalid JSON"), e.getMessage());

        Files.writeString(json, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}");
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().startsWith(json.toString()) && e.getMessage().contains("merge 0"), e.getMessage());

        Files.writeString(json, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().contains("WordPiece"), e.getMessage());

        Files.writeString(json, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Punctuation\"}}");
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().contains("pre_tokenizer") && e.getMessage().contains("Punctuation"), e.getMessage());

        Files.delete(json);
        Path model = dir.resolve("tokenizer.model");
        Files.write(model, new byte[] {0x0A, (byte) 0xFF, (byte) 0xFF, 0x01});
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().startsWith(model.toString()) && e.getMessage().contains("SentencePiece"), e.getMessage());

        Files.writeString(dir.resolve("tokenizer.json"), "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
        Files.writeString(dir.resolve("tokenizer_config.json"), "{\"bos_token\": \"<nope>\"}");
        e = assertThrows(QtoolException.class, () -> Tokenizer.load(dir));
        assertTrue(e.getMessage().contains("tokenizer_config.json") && e.getMessage().contains("<nope>"), e.getMessage());
    }

    @Test
    void specErrorsNameTheKey() {
        QtoolException e = assertThrows(QtoolException.class, () -> TokenizerSpec.fromGgufMetadata(java.util.Map.of("tokenizer.ggml.model", "llama")));
        assertTrue(e.getMessage().contains("tokenizer.ggml.tokens"), e.getMessage());
        e = assertThrows(QtoolException.class, () -> Tokenizer.fromSpec(new TokenizerSpec("bert", null, new String[] {"a"}, null, null, null, -1, -1, -1, -1, false, false)));
        assertTrue(e.getMessage().contains("bert"), e.getMessage());
        e = assertThrows(QtoolException.class, () -> Tokenizer.fromSpec(new TokenizerSpec("gpt2", "no-such-pre", new String[] {"a"}, null, null, new String[0], -1, -1, -1, -1, false, false)));
        assertTrue(e.getMessage().contains("no-such-pre"), e.getMessage());
    }
}
