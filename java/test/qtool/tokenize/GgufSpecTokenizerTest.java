package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.load.Json;

/**
 * GGUF vocabularies ({@code tokenizer.ggml.*} of the two GGUF files in ../shared) through {@link TokenizerSpec}:
 * {@link Tokenizer#fromSpec} tokenizes wikitext as llama.cpp does with the same file (the fixtures of
 * {@link WikiTextFixtureTest}), and so does the HF directory {@link TokenizerJsonWriter} makes of the spec.
 */
class GgufSpecTokenizerTest {

    static TokenizerSpec spec(String gguf) throws IOException {
        return TokenizerSpec.fromGgufMetadata(GgufMetadata.read(TestData.shared(gguf)));
    }

    @Test
    void smolLM2GgufSpecMatchesLlamaCpp(@TempDir Path dir) throws IOException {
        TokenizerSpec spec = spec("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assertEquals("gpt2", spec.model());
        assertEquals("smollm", spec.pre());
        assertFalse(spec.addBos());
        Tokenizer fromSpec = Tokenizer.fromSpec(spec);
        WikiTextFixtureTest.assertMatchesFixture(fromSpec, WikiTextFixtureTest.SMOLLM2_FIXTURE, 303_415);

        TokenizerJsonWriter.write(spec, dir);
        Tokenizer written = Tokenizer.load(dir);
        WikiTextFixtureTest.assertMatchesFixture(written, WikiTextFixtureTest.SMOLLM2_FIXTURE, 303_415);
        assertEquals(1, written.bos());
        assertEquals(2, written.eos());
        assertFalse(written.addBosByDefault());

        // the same structure as the model's own tokenizer.json
        Map<String, Object> mine = Json.readObject(dir.resolve("tokenizer.json"));
        Map<String, Object> theirs = Json.readObject(TestData.shared("models/smollm2-135m/tokenizer.json"));
        for (String key : List.of("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")) {
            assertEquals(theirs.get(key), mine.get(key), key);
        }
        assertEquals(Json.object(theirs.get("model"), "model").get("vocab"), Json.object(mine.get("model"), "model").get("vocab"));
        assertEquals(Json.object(theirs.get("model"), "model").get("merges"), Json.object(mine.get("model"), "model").get("merges"));
    }

    @Test
    void llama2GgufSpecMatchesLlamaCpp(@TempDir Path dir) throws IOException {
        TokenizerSpec spec = spec("models/tiny-random-gguf/llama-2-tiny-random.gguf");
        assertEquals("llama", spec.model());
        assertTrue(spec.addBos());
        assertTrue(spec.addSpacePrefix());
        Tokenizer fromSpec = Tokenizer.fromSpec(spec);
        WikiTextFixtureTest.assertMatchesFixture(fromSpec, WikiTextFixtureTest.LLAMA2_FIXTURE, 335_687);
        assertEquals(1, fromSpec.encode("Hello")[0]);

        TokenizerJsonWriter.write(spec, dir);
        Tokenizer written = Tokenizer.load(dir);
        WikiTextFixtureTest.assertMatchesFixture(written, WikiTextFixtureTest.LLAMA2_FIXTURE, 335_687);
        assertTrue(written.addBosByDefault());
        assertEquals(1, written.bos());

        // merges derived from the scores are the ones Llama 2's own tokenizer.json lists, in the same order
        Map<String, Object> mine = Json.readObject(dir.resolve("tokenizer.json"));
        Map<String, Object> theirs = Json.readObject(TestData.shared("tokenizers/llama2/tokenizer.json"));
        Object myMerges = Json.object(mine.get("model"), "model").get("merges");
        Object theirMerges = Json.object(theirs.get("model"), "model").get("merges");
        assertEquals(theirMerges, myMerges);
        for (String key : List.of("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")) {
            assertEquals(theirs.get(key), mine.get(key), key);
        }
    }

    /** Ids and decoded text as HF tokenizers 0.23 gives them with Llama 2's tokenizer.json (add_special_tokens=True). */
    @Test
    void specAndHfFileAgreeWithHfOnShortTexts() throws IOException {
        Tokenizer gguf = Tokenizer.fromSpec(spec("models/tiny-random-gguf/llama-2-tiny-random.gguf"));
        Tokenizer hf = Tokenizer.load(TestData.shared("tokenizers/llama2"));
        Tokenizer sp = Tokenizer.load(TestData.shared("tokenizers/llama2/tokenizer.model"));
        Object[][] cases = {
            {"<s>Hi</s> there", new int[] {1, 1, 6324, 2, 29871, 727}, "Hi  there"},
            {"Hello world", new int[] {1, 15043, 3186}, "Hello world"},
            {"  two spaces", new int[] {1, 259, 1023, 8162}, "  two spaces"},
            {"tab\there", new int[] {1, 4434, 12, 4150}, "tab\there"},
            {"emoji \uD83E\uDD99 and \u00fcn\u00efc\u00f6d\u00e9",
                new int[] {1, 953, 29877, 2397, 29871, 243, 162, 169, 156, 322, 2505, 29876, 30085, 29883, 9289, 29948},
                "emoji \uD83E\uDD99 and \u00fcn\u00efc\u00f6d\u00e9"},
            {"", new int[] {1}, ""},
        };
        for (Object[] c : cases) {
            String text = (String) c[0];
            int[] ids = (int[]) c[1];
            for (Tokenizer t : List.of(gguf, hf, sp)) {
                assertNull(TestData.firstDifference(ids, t.encode(text, true)), t + ": " + text);
                assertEquals(c[2], t.decode(ids), t + ": " + text);
            }
        }
    }
}
