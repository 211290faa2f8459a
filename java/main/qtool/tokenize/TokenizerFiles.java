package qtool.tokenize;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.Json;

/** Finds and reads the tokenizer files of an HF model directory and its special-token settings. */
final class TokenizerFiles {
    private TokenizerFiles() {}

    static final String TOKENIZER_JSON = "tokenizer.json";
    static final String TOKENIZER_MODEL = "tokenizer.model";

    static Tokenizer load(Path path) {
        Path dir;
        Path file;
        if (Files.isDirectory(path)) {
            dir = path;
            if (Files.isRegularFile(dir.resolve(TOKENIZER_JSON))) file = dir.resolve(TOKENIZER_JSON);
            else if (Files.isRegularFile(dir.resolve(TOKENIZER_MODEL))) file = dir.resolve(TOKENIZER_MODEL);
            else throw new QtoolException(dir + ": no " + TOKENIZER_JSON + " or " + TOKENIZER_MODEL);
        } else if (Files.isRegularFile(path)) {
            file = path;
            dir = path.toAbsolutePath().getParent();
        } else {
            throw new QtoolException(path + ": no such file or directory");
        }
        PipelineTokenizer t = file.getFileName().toString().endsWith(".json")
                ? HfTokenizerJson.load(file) : SentencePieceModelFile.load(file);
        return applyConfig(t, dir);
    }

    /**
     * BOS, EOS and add_bos: tokenizer_config.json's bos_token/eos_token/add_bos_token first, then config.json's
     * bos_token_id/eos_token_id, then what the tokenizer file itself says (post-processor template,
     * SentencePiece's ids).
     */
    static PipelineTokenizer applyConfig(PipelineTokenizer t, Path dir) {
        Map<String, Object> tokenizerConfig = readIfPresent(dir.resolve("tokenizer_config.json"));
        Map<String, Object> modelConfig = readIfPresent(dir.resolve("config.json"));
        int bos = t.bos, eos = t.eos;
        boolean addBos = t.addBos;
        String configFile = dir.resolve("tokenizer_config.json").toString();
        Integer id = tokenId(t, tokenizerConfig.get("bos_token"), configFile + ": bos_token");
        if (id == null) id = configId(modelConfig.get("bos_token_id"), t);
        if (id != null) bos = id;
        id = tokenId(t, tokenizerConfig.get("eos_token"), configFile + ": eos_token");
        if (id == null) id = configId(modelConfig.get("eos_token_id"), t);
        if (id != null) eos = id;
        if (tokenizerConfig.get("add_bos_token") instanceof Boolean b) addBos = b;
        if (addBos && bos < 0) addBos = false;
        return t.withSpecials(bos, eos, addBos);
    }

    private static Map<String, Object> readIfPresent(Path file) {
        return Files.isRegularFile(file) ? Json.readObject(file) : Map.of();
    }

    /** A token named in tokenizer_config.json: a string or {"content": ...}; null when absent. */
    private static Integer tokenId(PipelineTokenizer t, Object v, String where) {
        String content = v instanceof String s ? s
                : v instanceof Map<?, ?> m && m.get("content") instanceof String s ? s : null;
        if (content == null) return null;
        for (int i = 0; i < t.pieces.length; i++) if (content.equals(t.pieces[i])) return i;
        throw new QtoolException(where + ": " + Regexes.quote(content) + " is not in the vocabulary of " + t.source);
    }

    /** config.json's bos_token_id / eos_token_id: a number or a list of numbers (the first is taken). */
    private static Integer configId(Object v, PipelineTokenizer t) {
        if (v instanceof List<?> l && !l.isEmpty()) v = l.getFirst();
        if (v instanceof Long n && n >= 0 && n < t.pieces.length) return n.intValue();
        return null;
    }
}
