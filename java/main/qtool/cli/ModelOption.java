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
import qtool.model.Forward;
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

    @Option(names = "--dequantize", description = "GPTQ/EXL2 models: multiply fp16 copies dequantized on load instead of using the "
            + "quantized kernels (the reference the kernels are checked against; needs ~4x the GPU memory).")
    boolean dequantize;

    @Option(names = "--offload", paramLabel = "N", description = "Keep only the first N decoder layers on the GPU and stream the "
            + "others from host memory in every forward pass (models larger than the GPU).")
    Integer offload;

    @Option(names = "--gpu-mem", paramLabel = "GIB", description = "GPU memory the model may use, in GiB: as many layers as fit stay "
            + "resident, the rest stream (as --offload).")
    Double gpuMem;

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

    /**
     * Where the layers live for a forward of {@code batch × maxSeq} rows: quantized GPTQ/EXL2 linears stay packed on
     * CUDA unless --dequantize; every layer resident unless --offload N or --gpu-mem says otherwise.
     */
    Forward.Placement placement(Backend b, LlamaModel m, int batch, int maxSeq) {
        boolean cuda = !b.name().equals("cpu");
        boolean packed = cuda && !dequantize && !fp32 && (m.gptq != null || m.exl2 != null);
        if (offload != null && gpuMem != null) throw new QtoolException("give --offload or --gpu-mem, not both");
        if (offload != null) {
            if (offload < 0) throw new QtoolException("--offload must be 0 or more, not " + offload);
            return new Forward.Placement(offload, packed);
        }
        if (gpuMem == null) return new Forward.Placement(Integer.MAX_VALUE, packed);
        if (!(gpuMem > 0)) throw new QtoolException("--gpu-mem must be a positive number of GiB, not " + gpuMem);
        Forward.Placement p = Forward.fit(m, linearType(b, m), packed, batch, maxSeq, (long) (gpuMem * (1L << 30)));
        System.err.printf("qtool: --gpu-mem %.1f GiB: %s of %d layers resident%n", gpuMem,
                Math.min(p.residentLayers(), m.config.numLayers()), m.config.numLayers());
        return p;
    }

    /** F32 on the CPU or with --fp32; otherwise the stored half type (fp32 checkpoints run as fp16). */
    DType linearType(Backend b, LlamaModel m) {
        if (fp32 || b.name().equals("cpu")) return DType.F32;
        Tensor q = m.layer(0).q();
        return q.dtype() == DType.BF16 ? DType.BF16 : DType.F16;
    }
}
