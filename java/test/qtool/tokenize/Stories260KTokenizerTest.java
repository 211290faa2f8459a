package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * stories260K (../shared/models/stories260K, a 512-token SentencePiece BPE vocabulary): its tokenizer.json and
 * tokenizer.model agree, and both encode as llama2.c does with the original tok512.bin.
 */
class Stories260KTokenizerTest {

    @Test
    void tokenizerJsonAndModelAgreeOverWikiText() throws IOException {
        Path dir = TestData.shared("models/stories260K");
        Tokenizer json = Tokenizer.load(dir.resolve("tokenizer.json"));
        Tokenizer model = Tokenizer.load(dir.resolve("tokenizer.model"));
        String text = TestData.wikiText();
        int[] a = json.encode(text, false);
        int[] b = model.encode(text, false);
        // 809,289 ids: HF tokenizers and sentencepiece give that count for this text (checked when this test was written)
        assertEquals(809_289, a.length);
        assertNull(TestData.firstDifference(a, b), "tokenizer.json vs tokenizer.model");
        assertEquals(text, json.decode(a));
        assertEquals(text, model.decode(b));
    }

    @Test
    void onceUponATimeEncodesAsLlama2c() {
        Tokenizer t = Tokenizer.load(TestData.shared("models/stories260K"));
        assertTrue(t.addBosByDefault());
        assertEquals(1, t.bos());
        assertEquals(2, t.eos());
        assertArrayEquals(new int[] {1, 403, 407, 261, 378}, t.encode("Once upon a time"));
        assertEquals("Once upon a time", t.decode(new int[] {1, 403, 407, 261, 378}));
    }

    /** llama2.c's own encoder (run.c, encode()) over tok512.bin, line by line over the start of wikitext. */
    @Test
    void linesEncodeAsLlama2cEncoderDoes() throws IOException {
        Llama2cEncoder reference = new Llama2cEncoder(TestData.shared("models/stories260K-llama2c/tok512.bin"), 512);
        Tokenizer json = Tokenizer.load(TestData.shared("models/stories260K"));
        Tokenizer model = Tokenizer.load(TestData.shared("models/stories260K/tokenizer.model"));
        int lines = 0, chars = 0;
        for (String line : TestData.wikiText().split("\n")) {
            if (line.isEmpty()) continue;
            int[] expected = reference.encode(line);
            assertArrayEquals(expected, json.encode(line, true), line);
            assertArrayEquals(expected, model.encode(line, true), line);
            lines++;
            chars += line.length();
            if (chars > 40_000) break;
        }
        assertTrue(lines > 50, "compared " + lines + " lines");
    }

    /**
     * A transcription of llama2.c's encode(): BOS, the dummy prefix " ", one token per UTF-8 character (byte
     * fallback: byte + 3), then repeatedly the best-scoring merge of two neighbours, the leftmost among equals.
     * Quadratic; fine for lines.
     */
    static final class Llama2cEncoder {
        final String[] vocab;
        final float[] scores;
        final Map<String, Integer> ids = new HashMap<>();

        Llama2cEncoder(Path tokenizerBin, int vocabSize) throws IOException {
            ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(tokenizerBin)).order(ByteOrder.LITTLE_ENDIAN);
            b.getInt(); // max_token_length
            vocab = new String[vocabSize];
            scores = new float[vocabSize];
            for (int i = 0; i < vocabSize; i++) {
                scores[i] = b.getFloat();
                byte[] s = new byte[b.getInt()];
                b.get(s);
                vocab[i] = new String(s, StandardCharsets.UTF_8);
                ids.putIfAbsent(vocab[i], i);
            }
        }

        int[] encode(String text) {
            List<Integer> tokens = new ArrayList<>();
            tokens.add(1);
            if (!text.isEmpty()) tokens.add(ids.get(" "));
            for (int i = 0; i < text.length(); ) {
                int cp = text.codePointAt(i);
                String ch = new String(Character.toChars(cp));
                Integer id = ids.get(ch);
                if (id != null) tokens.add(id);
                else for (byte x : ch.getBytes(StandardCharsets.UTF_8)) tokens.add((x & 0xFF) + 3);
                i += Character.charCount(cp);
            }
            while (true) {
                float best = -1e10f;
                int bestId = -1, bestIdx = -1;
                for (int i = 0; i + 1 < tokens.size(); i++) {
                    Integer id = ids.get(vocab[tokens.get(i)] + vocab[tokens.get(i + 1)]);
                    if (id != null && scores[id] > best) {
                        best = scores[id];
                        bestId = id;
                        bestIdx = i;
                    }
                }
                if (bestIdx < 0) break;
                tokens.set(bestIdx, bestId);
                tokens.remove(bestIdx + 1);
            }
            return tokens.stream().mapToInt(Integer::intValue).toArray();
        }
    }
}
