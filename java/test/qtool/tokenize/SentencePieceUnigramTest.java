package qtool.tokenize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * Unigram tokenizer.model files. The two models in java/test/resources/tokenize/ were written for this test (a
 * 29-piece made-up vocabulary, a user-defined "<sep>"): unigram-bytes.model with byte fallback and identity
 * normalization, unigram-unk.model without byte fallback and with remove_extra_whitespaces. The expected ids are
 * sentencepiece 0.2's {@code SentencePieceProcessor(model_file=...).encode(text)}.
 */
class SentencePieceUnigramTest {

    static final String[] TEXTS = {"the cat sat on the hat", "thethe  cat", "\u00e9 unknown \u00fc!", "<sep>the<sep> hat",
            "  a  cat  ", "", "hathat catcat"};

    @Test
    void byteFallbackModelEncodesAsSentencePiece() {
        Tokenizer t = Tokenizer.load(Path.of("java/test/resources/tokenize/unigram-bytes.model"));
        int[][] expected = {
            {261, 275, 281, 282, 261, 276}, {261, 284, 260, 275},
            {260, 198, 172, 260, 120, 270, 110, 270, 269, 122, 270, 260, 198, 191, 36},
            {260, 259, 284, 259, 276}, {260, 260, 262, 260, 275, 260, 260}, {}, {276, 264, 274, 275, 267, 274}};
        for (int i = 0; i < TEXTS.length; i++) {
            assertArrayEquals(expected[i], t.encode(TEXTS[i], false), TEXTS[i]);
            assertEquals(TEXTS[i], t.decode(expected[i]), TEXTS[i]);
        }
        assertEquals(1, t.bos());
        assertArrayEquals(new int[] {1, 261}, t.encode("the", true));
    }

    @Test
    void unknownModelFusesUnknownsAndCollapsesSpaces() {
        Tokenizer t = Tokenizer.load(Path.of("java/test/resources/tokenize/unigram-unk.model"));
        int[][] expected = {
            {5, 19, 25, 26, 5, 20}, {5, 28, 19}, {4, 0, 4, 0, 14, 0, 14, 13, 0, 14, 4, 0}, {4, 3, 28, 3, 20},
            {6, 19}, {}, {20, 8, 18, 19, 11, 18}};
        for (int i = 0; i < TEXTS.length; i++) assertArrayEquals(expected[i], t.encode(TEXTS[i], false), TEXTS[i]);
        // the unknown token is special: decode leaves it out
        assertEquals(" nnon ", t.decode(expected[2]));
    }
}
