package qtool.cli;

import java.nio.file.Files;
import java.nio.file.Path;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.format.gguf.GgufFile;
import qtool.format.gguf.GgufToHf;
import qtool.format.gguf.GgufTokenizer;
import qtool.load.DType;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/**
 * {@code -m MODEL} and the precision flags shared by the commands that run a model. MODEL is an HF directory or a
 * llama GGUF file; a GGUF is imported (fp16, {@link GgufToHf}) into a temporary directory deleted at exit, and
 * tokenizes with its own {@code tokenizer.ggml.*} vocabulary, as llama.cpp does.
 */
public final class ModelOption {
    @Option(names = {"-m", "--model"}, required = true, paramLabel = "MODEL",
            description = "Model directory (HF layout), or a llama .gguf file.")
    Path model;

    @Option(names = "--fp32", description = "Keep linear weights in fp32 on the GPU (the reference path); default: fp16/bf16 as stored.")
    boolean fp32;

    @Option(names = {"-ra", "--rope-alpha"}, defaultValue = "1.0", description = "RoPE NTK alpha (default ${DEFAULT-VALUE}).")
    double ropeAlpha;

    @Option(names = {"-rs", "--rope-scale"}, defaultValue = "1.0", description = "RoPE linear scale (default ${DEFAULT-VALUE}).")
    double ropeScale;

    /** The HF directory the model runs from: MODEL itself, or MODEL.gguf imported once. */
    private Path directory;

    LlamaModel open() {
        return LlamaModel.open(directory());
    }

    Path directory() {
        if (directory == null) {
            if (isGguf(model)) {
                System.err.println("qtool: importing " + model + " (fp16) into a temporary directory");
                directory = GgufToHf.convertToTemporary(model, DType.F16, null);
            } else {
                directory = model;
            }
        }
        return directory;
    }

    Tokenizer tokenizer(LlamaModel m) {
        Tokenizer t = loadTokenizer(model);
        if (t.vocabSize() > m.config.vocabSize()) {
            throw new QtoolException(model + ": the tokenizer has " + t.vocabSize() + " tokens but the model's vocabulary holds "
                    + m.config.vocabSize());
        }
        return t;
    }

    /** Whether MODEL names a GGUF file (by its extension or its magic). */
    static boolean isGguf(Path p) {
        return Files.isRegularFile(p) && (p.getFileName().toString().endsWith(".gguf") || GgufFile.looksLikeGguf(p));
    }

    /** The tokenizer of an HF directory (or tokenizer file), or of a GGUF file's metadata. */
    static Tokenizer loadTokenizer(Path model) {
        if (!isGguf(model)) return Tokenizer.load(model);
        try (GgufFile g = GgufFile.open(model)) {
            if (!g.has(GgufTokenizer.MODEL)) throw new QtoolException(model + ": no tokenizer (tokenizer.ggml.model) in the GGUF metadata");
            return Tokenizer.fromSpec(GgufTokenizer.spec(g));
        }
    }

    /** F32 on the CPU or with --fp32; otherwise the stored half type (fp32 checkpoints run as fp16). */
    DType linearType(Backend b, LlamaModel m) {
        if (fp32 || b.name().equals("cpu")) return DType.F32;
        Tensor q = m.layer(0).q();
        return q.dtype() == DType.BF16 ? DType.BF16 : DType.F16;
    }
}
