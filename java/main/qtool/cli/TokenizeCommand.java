package qtool.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import qtool.QtoolException;
import qtool.load.Json;
import qtool.tokenize.Tokenizer;

/** {@code qtool tokenize}: the token ids of a text, as a JSON array or one id and piece per line. */
@Command(name = "tokenize", mixinStandardHelpOptions = true,
        description = "Print the token ids of a text.")
public final class TokenizeCommand implements Callable<Integer> {

    @Spec
    CommandSpec spec;

    @Option(names = {"-m", "--model"}, required = true, paramLabel = "MODEL",
            description = "HF model directory (tokenizer.json or tokenizer.model), one of those files, or a .gguf file.")
    Path model;

    static final class Input {
        @Option(names = {"-f", "--file"}, paramLabel = "FILE", description = "Read the text from a file (UTF-8).")
        Path file;

        @Option(names = {"-p", "--prompt"}, paramLabel = "TEXT", description = "The text.")
        String prompt;
    }

    @ArgGroup(exclusive = true, multiplicity = "1")
    Input input;

    @Option(names = "--ids", description = "Print the ids as one JSON array.")
    boolean idsOnly;

    @Option(names = "--bos", negatable = true,
            description = "Put BOS first (--no-bos: don't). Default: as the model's tokenizer config says.")
    Boolean bos;

    @Override
    public Integer call() {
        Tokenizer tokenizer = ModelOption.loadTokenizer(model);
        String text = input.prompt != null ? input.prompt : readText(input.file);
        int[] ids = tokenizer.encode(text, bos != null ? bos : tokenizer.addBosByDefault());
        PrintWriter out = spec.commandLine().getOut();
        if (idsOnly) {
            StringBuilder b = new StringBuilder(ids.length * 6 + 2).append('[');
            for (int i = 0; i < ids.length; i++) {
                if (i > 0) b.append(", ");
                b.append(ids[i]);
            }
            out.println(b.append(']'));
        } else {
            for (int id : ids) {
                // the text a token stands for; special tokens and lone bytes show their vocabulary entry
                String shown = tokenizer.isSpecial(id) ? tokenizer.piece(id) : decodeStrict(tokenizer.tokenBytes(id), tokenizer.piece(id));
                out.printf("%6d %s%n", id, Json.write(shown));
            }
        }
        out.flush();
        return 0;
    }

    private static String readText(Path file) {
        try {
            return StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(Files.readAllBytes(file))).toString();
        } catch (CharacterCodingException e) {
            throw new QtoolException(file + ": not UTF-8 text");
        } catch (IOException e) {
            throw new QtoolException(file + ": cannot read: " + e.getMessage());
        }
    }

    private static String decodeStrict(byte[] bytes, String fallback) {
        try {
            return StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(bytes)).toString();
        } catch (CharacterCodingException e) {
            return fallback;
        }
    }
}
