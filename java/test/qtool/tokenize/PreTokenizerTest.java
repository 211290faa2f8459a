package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * Pre-tokenizers against HF tokenizers: java/test/resources/tokenize/pre_tokenizer_splits.json holds, for tricky
 * texts (contractions in capitals, digit runs, Arabic-Indic digits, superscripts, runs of newlines and tabs, CJK,
 * no-break and ideographic spaces, trailing spaces), the pieces HF tokenizers 0.23 makes with each pre-tokenizer
 * configuration ({@code pre_tokenizer.pre_tokenize_str}): GPT-2's ByteLevel, SmolLM2's Digits + ByteLevel, Llama 3's
 * and Qwen2's Split regexes (Oniguruma syntax, translated to java.util.regex here), Metaspace, Whitespace.
 */
class PreTokenizerTest {

    @Test
    @SuppressWarnings("unchecked")
    void splitsAsHfTokenizersDoes() {
        Map<String, Object> golden = Json.readObject(Path.of("java/test/resources/tokenize/pre_tokenizer_splits.json"));
        List<Object> texts = Json.array(golden.get("texts"), "texts");
        Map<String, Object> cases = Json.object(golden.get("cases"), "cases");
        assertTrue(cases.size() >= 7);
        for (Map.Entry<String, Object> c : cases.entrySet()) {
            Map<String, Object> entry = Json.object(c.getValue(), c.getKey());
            PreTokenizer pre = HfTokenizerJson.preTokenizer(entry.get("config"), c.getKey());
            List<Object> expected = Json.array(entry.get("splits"), "splits");
            for (int i = 0; i < texts.size(); i++) {
                String text = (String) texts.get(i);
                assertEquals(expected.get(i), new ArrayList<Object>(pre.split(text, true)), c.getKey() + ": " + Regexes.quote(text));
            }
        }
    }

    @Test
    void ggmlPreNamesMapToLlamaCppRegexes() {
        assertEquals(List.of("\\p{N}", Regexes.GPT2), Regexes.ggmlPre("smollm").regexes());
        assertEquals(List.of(Regexes.LLAMA3), Regexes.ggmlPre("llama-bpe").regexes());
        assertTrue(Regexes.ggmlPre("llama-bpe").ignoreMerges());
        assertEquals(List.of(Regexes.QWEN2), Regexes.ggmlPre("qwen2").regexes());
        assertEquals(4, Regexes.ggmlPre(null).regexes().size()); // "default"
        QtoolException e = assertThrows(QtoolException.class, () -> Regexes.ggmlPre("no-such-pre"));
        assertTrue(e.getMessage().contains("no-such-pre"), e.getMessage());
        // every listed regex compiles in Java
        for (String name : List.of("default", "llama3", "gpt-2", "smollm", "qwen2", "qwen35", "gpt-4o", "tekken",
                "falcon", "deepseek-coder", "deepseek-v3", "bloom", "viking", "chatglm-bpe")) {
            for (String r : Regexes.ggmlPre(name).regexes()) Regexes.compile(r, name);
        }
    }

    @Test
    void unicodeClassesFollowOniguruma() {
        // \s covers no-break and ideographic spaces, \p{Han} needs Java's "Is" prefix
        assertTrue(Regexes.compile("^\\s+$", "t").matcher("\u00a0\u3000\u2009").matches());
        assertTrue(Regexes.compile("^\\p{Han}+$", "t").matcher("東京").matches());
        assertTrue(Regexes.compile("^\\p{N}+$", "t").matcher("١٢٣²").matches());
        QtoolException e = assertThrows(QtoolException.class, () -> Regexes.compile("(unclosed", "tokenizer.json: pre_tokenizer"));
        assertTrue(e.getMessage().startsWith("tokenizer.json: pre_tokenizer: regex"), e.getMessage());
    }
}
