package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import org.junit.jupiter.api.Test;

/**
 * The whole of wikitext-2's test split (../shared/data/wiki.test.raw, 1,290,590 bytes, read as UTF-8, no BOS)
 * tokenized exactly as the reference tools do. The fixtures in java/test/resources/tokenize/ are gzipped text, one
 * id per line, made with llama.cpp's tokenizer (llama-cpp-python 0.3.36's llama-tokenize, from
 * ../shared/peers/llama.cpp):
 * <pre>
 * llama-tokenize -m MODEL.gguf -f ../shared/data/wiki.test.raw --ids --no-bos --log-disable
 * </pre>
 * <ul>
 * <li>wiki.test.raw.smollm2-135m.ids.gz: MODEL = ../shared/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
 *     (tokenizer.ggml.pre "smollm"); 303,415 ids, the same as HF tokenizers 0.23 with that folder's tokenizer.json
 *     ({@code encode(text, add_special_tokens=False)}).</li>
 * <li>wiki.test.raw.llama2.ids.gz: MODEL = ../shared/models/tiny-random-gguf/llama-2-tiny-random.gguf (the full
 *     Llama-2 vocabulary, tokenizer.ggml.model "llama"); 335,687 ids. {@code --no-bos} only drops BOS: llama.cpp
 *     still puts the SentencePiece dummy-prefix space before the text, so the ids start 259 ("▁▁") 13 ("\n") for the
 *     text's leading " \n". They equal HF tokenizers with ../shared/tokenizers/llama2/tokenizer.json
 *     ({@code add_special_tokens=False}) and sentencepiece 0.2 with its tokenizer.model ({@code encode(text)}).</li>
 * </ul>
 */
class WikiTextFixtureTest {

    static final String SMOLLM2_FIXTURE = "wiki.test.raw.smollm2-135m.ids.gz";
    static final String LLAMA2_FIXTURE = "wiki.test.raw.llama2.ids.gz";

    @Test
    void smolLM2TokenizerJsonMatchesLlamaCpp() throws IOException {
        assertMatchesFixture(Tokenizer.load(TestData.shared("models/smollm2-135m")), SMOLLM2_FIXTURE, 303_415);
    }

    @Test
    void llama2TokenizerJsonMatchesLlamaCpp() throws IOException {
        assertMatchesFixture(Tokenizer.load(TestData.shared("tokenizers/llama2/tokenizer.json")), LLAMA2_FIXTURE, 335_687);
    }

    @Test
    void llama2TokenizerModelMatchesLlamaCpp() throws IOException {
        assertMatchesFixture(Tokenizer.load(TestData.shared("tokenizers/llama2/tokenizer.model")), LLAMA2_FIXTURE, 335_687);
    }

    /** Encodes the whole text, compares with the fixture, and decodes it back to the same text. */
    static void assertMatchesFixture(Tokenizer tokenizer, String fixture, int expectedCount) throws IOException {
        String text = TestData.wikiText();
        int[] expected = TestData.fixtureIds(fixture);
        assertEquals(expectedCount, expected.length, fixture);
        long t0 = System.nanoTime();
        int[] ids = tokenizer.encode(text, false);
        double seconds = (System.nanoTime() - t0) / 1e9;
        System.out.printf("%s: %d ids in %.2f s%n", tokenizer, ids.length, seconds);
        assertNull(TestData.firstDifference(expected, ids), tokenizer + " vs " + fixture);
        assertTrue(seconds < 30, "encoding 1.3 MB took " + seconds + " s");
        assertEquals(text, tokenizer.decode(ids), "decode(encode(text))");
    }
}
