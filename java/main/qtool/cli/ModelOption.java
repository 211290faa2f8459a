package qtool.cli;

import java.nio.file.Path;
import picocli.CommandLine.Option;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/** {@code -m MODEL} and the precision flags shared by the commands that run a model. */
public final class ModelOption {
    @Option(names = {"-m", "--model"}, required = true, paramLabel = "MODEL", description = "Model directory (HF layout).")
    Path model;

    @Option(names = "--fp32", description = "Keep linear weights in fp32 on the GPU (the reference path); default: fp16/bf16 as stored.")
    boolean fp32;

    @Option(names = {"-ra", "--rope-alpha"}, defaultValue = "1.0", description = "RoPE NTK alpha (default ${DEFAULT-VALUE}).")
    double ropeAlpha;

    @Option(names = {"-rs", "--rope-scale"}, defaultValue = "1.0", description = "RoPE linear scale (default ${DEFAULT-VALUE}).")
    double ropeScale;

    LlamaModel open() {
        return LlamaModel.open(model);
    }

    Tokenizer tokenizer(LlamaModel m) {
        Tokenizer t = Tokenizer.load(model);
        if (t.vocabSize() > m.config.vocabSize()) {
            throw new QtoolException(model + ": the tokenizer has " + t.vocabSize() + " tokens but the model's vocabulary holds "
                    + m.config.vocabSize());
        }
        return t;
    }

    /** F32 on the CPU or with --fp32; otherwise the stored half type (fp32 checkpoints run as fp16). */
    DType linearType(Backend b, LlamaModel m) {
        if (fp32 || b.name().equals("cpu")) return DType.F32;
        Tensor q = m.layer(0).q();
        return q.dtype() == DType.BF16 ? DType.BF16 : DType.F16;
    }
}
