package qtool.tokenize;

import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;
import qtool.QtoolException;

/**
 * Pre-tokenizer regular expressions: translation of the Oniguruma/Rust-regex patterns found in tokenizer.json files to
 * java.util.regex, and the pattern lists llama.cpp uses for each {@code tokenizer.ggml.pre} name.
 */
final class Regexes {
    private Regexes() {}

    /** The GPT-2 split, as HF's ByteLevel pre-tokenizer applies it when {@code use_regex} is true. */
    static final String GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

    /** Llama 3's split as its tokenizer.json spells it. */
    static final String LLAMA3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    /** Qwen2's: Llama 3's with single digits. */
    static final String QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    static final String QWEN35 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    static final String GPT4O = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    static final String TEKKEN = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    /**
     * How llama.cpp pre-tokenizes a byte-level BPE vocabulary of a given {@code tokenizer.ggml.pre} name: the regexes
     * are applied one after the other, each splitting every piece the previous one left into matches and the gaps
     * between them (HF's Split with behavior "Isolated"); {@code ignoreMerges}: a piece that is itself a token is
     * emitted whole (llama.cpp's and HF's {@code ignore_merges}); {@code addBos}: llama.cpp's default for
     * {@code add_bos_token} when the GGUF does not say.
     */
    record GgmlPre(List<String> regexes, boolean ignoreMerges, boolean addBos) {}

    // From llama.cpp src/llama-vocab.cpp (llm_tokenizer_bpe and the tokenizer_pre name table), with the regexes in the
    // form of the models' tokenizer.json where llama.cpp notes it (Oniguruma accepts both).
    private static final GgmlPre DEFAULT = new GgmlPre(List.of(
            "[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"), false, false);
    private static final GgmlPre PRE_GPT2 = new GgmlPre(List.of(GPT2), false, false);
    private static final GgmlPre PRE_DIGITS_GPT2 = new GgmlPre(List.of("\\p{N}", GPT2), false, false);
    private static final GgmlPre PRE_LLAMA3 = new GgmlPre(List.of(LLAMA3), true, true);
    private static final GgmlPre PRE_LLAMA3_MERGES = new GgmlPre(List.of(LLAMA3), false, false);
    private static final GgmlPre PRE_QWEN2 = new GgmlPre(List.of(QWEN2), false, false);

    private static final Map<String, GgmlPre> GGML_PRE = Map.ofEntries(
            Map.entry("default", DEFAULT),
            Map.entry("llama3", PRE_LLAMA3), Map.entry("llama-v3", PRE_LLAMA3), Map.entry("llama-bpe", PRE_LLAMA3),
            Map.entry("falcon3", PRE_LLAMA3), Map.entry("falcon-h1", PRE_LLAMA3), Map.entry("pixtral", PRE_LLAMA3),
            Map.entry("midm-2.0", PRE_LLAMA3), Map.entry("lfm2", PRE_LLAMA3),
            Map.entry("dbrx", PRE_LLAMA3_MERGES), Map.entry("smaug-bpe", PRE_LLAMA3_MERGES),
            Map.entry("chatglm-bpe", PRE_LLAMA3_MERGES), Map.entry("glm4", PRE_LLAMA3_MERGES),
            Map.entry("gpt-2", PRE_GPT2), Map.entry("phi-2", PRE_GPT2), Map.entry("jina-es", PRE_GPT2),
            Map.entry("jina-de", PRE_GPT2), Map.entry("gigachat", PRE_GPT2), Map.entry("jina-v2-es", PRE_GPT2),
            Map.entry("jina-v2-de", PRE_GPT2), Map.entry("a.x-4.0", PRE_GPT2), Map.entry("mellum", PRE_GPT2),
            Map.entry("modern-bert", PRE_GPT2), Map.entry("jina-v1-en", PRE_GPT2), Map.entry("jina-v2-code", PRE_GPT2),
            Map.entry("roberta-bpe", PRE_GPT2), Map.entry("mpt", PRE_GPT2), Map.entry("olmo", PRE_GPT2),
            Map.entry("jais", PRE_GPT2), Map.entry("trillion", PRE_GPT2), Map.entry("granite-docling", PRE_GPT2),
            Map.entry("exaone4", PRE_GPT2),
            Map.entry("smollm", PRE_DIGITS_GPT2), Map.entry("starcoder", PRE_DIGITS_GPT2),
            Map.entry("refact", PRE_DIGITS_GPT2), Map.entry("command-r", PRE_DIGITS_GPT2),
            Map.entry("codeshell", PRE_DIGITS_GPT2), Map.entry("exaone", PRE_DIGITS_GPT2),
            Map.entry("minerva-7b", PRE_DIGITS_GPT2), Map.entry("mellum2", PRE_DIGITS_GPT2),
            Map.entry("qwen2", PRE_QWEN2), Map.entry("deepseek-r1-qwen", PRE_QWEN2), Map.entry("stablelm2", PRE_QWEN2),
            Map.entry("hunyuan", PRE_QWEN2), Map.entry("megrez", PRE_QWEN2), Map.entry("solar-open", PRE_QWEN2),
            Map.entry("kormo", PRE_QWEN2), Map.entry("f2llmv2", PRE_QWEN2),
            Map.entry("qwen35", new GgmlPre(List.of(QWEN35), false, false)),
            Map.entry("gpt-4o", new GgmlPre(List.of(GPT4O), false, false)),
            Map.entry("llama4", new GgmlPre(List.of(GPT4O), false, false)),
            Map.entry("tekken", new GgmlPre(List.of(TEKKEN), true, true)),
            Map.entry("falcon", new GgmlPre(List.of(
                    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
                    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
                    "[0-9][0-9][0-9]"), false, false)),
            Map.entry("deepseek-coder", new GgmlPre(List.of(
                    "[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"), false, false)),
            Map.entry("deepseek-v3", new GgmlPre(List.of(
                    "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
                    false, false)),
            Map.entry("poro-chat", new GgmlPre(List.of(" ?[^(\\s|.,!?…。，、।۔،)]+"), false, false)),
            Map.entry("bloom", new GgmlPre(List.of(" ?[^(\\s|.,!?…。，、।۔،)]+"), false, false)),
            Map.entry("gpt3-finnish", new GgmlPre(List.of(" ?[^(\\s|.,!?…。，、।۔،)]+"), false, false)),
            Map.entry("viking", new GgmlPre(List.of(" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"), false, false)));

    /** The pre-tokenization llama.cpp applies for {@code tokenizer.ggml.pre}; an absent name means "default". */
    static GgmlPre ggmlPre(String name) {
        GgmlPre p = GGML_PRE.get(name == null || name.isEmpty() ? "default" : name);
        if (p == null) throw new QtoolException("tokenizer.ggml.pre '" + name + "' is not supported (known: "
                + new java.util.TreeSet<>(GGML_PRE.keySet()) + ")");
        return p;
    }

    /**
     * Compiles an Oniguruma / Rust-regex pattern as java.util.regex. With UNICODE_CHARACTER_CLASS, \s, \d, \w and
     * case folding follow Unicode as they do there (plain Java's \s is ASCII only and would miss U+00A0, U+3000...);
     * \p{L}, \p{N}, lookahead and possessive quantifiers read the same. Script names (\p{Han}) need Java's "Is"
     * prefix.
     */
    static Pattern compile(String pattern, String where) {
        String java = translate(pattern);
        try {
            return Pattern.compile(java, Pattern.UNICODE_CHARACTER_CLASS);
        } catch (PatternSyntaxException e) {
            throw new QtoolException(where + ": regex " + quote(pattern) + " is not supported: " + e.getDescription());
        }
    }

    static String translate(String p) {
        StringBuilder out = new StringBuilder(p.length() + 16);
        for (int i = 0; i < p.length(); i++) {
            char c = p.charAt(i);
            if (c == '\\' && i + 1 < p.length()) {
                char n = p.charAt(i + 1);
                if ((n == 'p' || n == 'P') && i + 2 < p.length() && p.charAt(i + 2) == '{') {
                    int close = p.indexOf('}', i + 3);
                    if (close > 0) {
                        String name = p.substring(i + 3, close);
                        out.append('\\').append(n).append('{').append(javaPropertyName(name)).append('}');
                        i = close;
                        continue;
                    }
                }
                out.append(c).append(n);
                i++;
                continue;
            }
            out.append(c);
        }
        return out.toString();
    }

    private static String javaPropertyName(String name) {
        if (accepts("\\p{" + name + "}")) return name;
        if (accepts("\\p{Is" + name + "}")) return "Is" + name;
        return name; // let compile() report it
    }

    private static boolean accepts(String p) {
        try {
            Pattern.compile(p);
            return true;
        } catch (PatternSyntaxException e) {
            return false;
        }
    }

    static String quote(String s) {
        return qtool.load.Json.write(s);
    }
}
