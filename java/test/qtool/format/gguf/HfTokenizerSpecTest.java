package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.tokenize.HfTokenizerSpec;
import qtool.tokenize.Tokenizer;
import qtool.tokenize.TokenizerSpec;

/**
 * {@link HfTokenizerSpec} on the models' own HF tokenizer files, against the vocabularies llama.cpp's converter put
 * into the GGUF files of ../shared: SmolLM2's tokenizer.json (byte-level BPE, pre "smollm") and Llama 2's
 * tokenizer.model (SentencePiece) give the same tokens, types, merges or scores; Llama 2's tokenizer.json alone (no
 * tokenizer.model) gives the same tokens and types, and scores that tokenize the same.
 */
class HfTokenizerSpecTest {
    @TempDir
    Path dir;

    static TokenizerSpec ggufSpec(String relative) {
        try (GgufFile g = GgufFile.open(GgufTestFiles.requireShared(relative))) {
            return GgufTokenizer.spec(g);
        }
    }

    @Test
    void smolLm2TokenizerJsonIsWhatTheConverterWrote() {
        Path model = GgufTestFiles.requireShared("models/smollm2-135m");
        TokenizerSpec mine = HfTokenizerSpec.read(model, 49152, null);
        TokenizerSpec theirs = ggufSpec("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assertEquals("gpt2", mine.model());
        assertEquals("smollm", mine.pre());
        assertArrayEquals(theirs.tokens(), mine.tokens());
        assertArrayEquals(theirs.tokenTypes(), mine.tokenTypes());
        assertArrayEquals(theirs.merges(), mine.merges());
        assertEquals(List.of(theirs.bos(), theirs.eos(), theirs.addBos()), List.of(mine.bos(), mine.eos(), mine.addBos()));
        assertTrue(HfTokenizerSpec.chatTemplate(model) == null, "this folder's tokenizer_config.json has no chat template");
    }

    @Test
    void llama2TokenizerModelIsWhatTheConverterWrote() throws IOException {
        Path llama2 = GgufTestFiles.requireShared("tokenizers/llama2");
        TokenizerSpec theirs = ggufSpec("models/tiny-random-gguf/llama-2-tiny-random.gguf");
        TokenizerSpec mine = HfTokenizerSpec.read(llama2, 32000, null);
        assertEquals("llama", mine.model());
        assertArrayEquals(theirs.tokens(), mine.tokens());
        assertArrayEquals(theirs.scores(), mine.scores());
        assertArrayEquals(theirs.tokenTypes(), mine.tokenTypes());
        assertEquals(List.of(1, 2, 0, true, false, true),
                List.of(mine.bos(), mine.eos(), mine.unk(), mine.addBos(), mine.addEos(), mine.addSpacePrefix()));

        // tokenizer.json alone: the merges' ranks stand in for the scores
        Path jsonOnly = dir.resolve("llama2-json");
        Files.createDirectories(jsonOnly);
        Files.copy(llama2.resolve("tokenizer.json"), jsonOnly.resolve("tokenizer.json"));
        TokenizerSpec fromJson = HfTokenizerSpec.read(jsonOnly, 32000, null);
        assertEquals("llama", fromJson.model());
        assertArrayEquals(theirs.tokens(), fromJson.tokens());
        assertArrayEquals(theirs.tokenTypes(), fromJson.tokenTypes());
        assertEquals(List.of(1, 2, 0, true, false, true),
                List.of(fromJson.bos(), fromJson.eos(), fromJson.unk(), fromJson.addBos(), fromJson.addEos(), fromJson.addSpacePrefix()));
        String text = Files.readString(GgufTestFiles.requireShared("data/wiki.test.raw"), StandardCharsets.UTF_8).substring(0, 100_000);
        assertArrayEquals(Tokenizer.fromSpec(theirs).encode(text, false), Tokenizer.fromSpec(fromJson).encode(text, false));
    }

    @Test
    void vocabularyIsPaddedToTheModelsSize() {
        Path model = GgufTestFiles.requireShared("models/stories260K");
        TokenizerSpec s = HfTokenizerSpec.read(model, 520, null);
        assertEquals(520, s.tokens().length);
        assertEquals("[PAD515]", s.tokens()[515]);
        assertEquals(TokenizerSpec.TYPE_UNUSED, s.type(515));
        assertFalse(s.tokens()[511].startsWith("[PAD"));
    }
}
