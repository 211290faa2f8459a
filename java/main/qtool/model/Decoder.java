package qtool.model;

import java.lang.foreign.MemorySegment;
import qtool.QtoolException;
import qtool.backend.CudaBackend;
import qtool.backend.NativeLibrary;
import qtool.backend.Tensor;
import qtool.load.DType;

/**
 * Decodes one token at a time after a prompt (batch 1). On CUDA, with every layer resident and 16-bit activations,
 * the first step runs {@link Forward#decodeStep} op by op (which also sizes every lazily made scratch buffer), then
 * that step is captured once as a CUDA graph and replayed for every later token: per token Java makes three native
 * calls (token and position up, replay, logits down) whatever the model's depth, and the GPU runs the step's few hundred
 * kernels without launch gaps. Elsewhere (the CPU, {@code --offload}, {@code --fp32}) each step is
 * {@link Forward#forward} of one token, op by op.
 */
public final class Decoder implements AutoCloseable {
    private final Forward f;
    private final CudaBackend cuda;  // null: op by op through Forward.forward
    private final Tensor step;       // I32 [2, 1]: token id, position
    private MemorySegment graph;
    private boolean graphFailed;

    public Decoder(Forward f) {
        this.f = f;
        this.cuda = f.backend instanceof CudaBackend c && f.allResident() && f.activationType() != DType.F32 ? c : null;
        this.step = cuda == null ? null : cuda.allocate(DType.I32, 2, 1);
    }

    /** Whether steps replay a captured CUDA graph (after the first). */
    public boolean graphs() {
        return cuda != null && !graphFailed;
    }

    /** Logits [vocab] after feeding {@code token} at position {@code pos}; the cache holds positions [0, pos). */
    public float[] next(int token, int pos) {
        if (cuda == null) {
            f.forward(new int[] {token}, 1, 1, pos);
            return f.logits(0);
        }
        if (token < 0 || token >= f.cfg.vocabSize()) throw new IllegalArgumentException("token id " + token + " outside the vocabulary");
        cuda.copyFromHost(MemorySegment.ofArray(new int[] {token, pos}), step);
        if (graph != null) {
            cuda.graphLaunch(graph);
            return f.stepLogits();
        }
        f.decodeStep(step);
        float[] logits = f.stepLogits();
        if (!graphFailed) capture();
        return logits;
    }

    /** Records one step as a graph; if the capture fails (a call that cannot be captured), later steps run op by op. */
    private void capture() {
        try {
            cuda.graphBegin();
            try {
                f.decodeStep(step);
            } finally {
                graph = cuda.graphEnd();
            }
        } catch (QtoolException | IllegalStateException e) {
            graph = null;
            graphFailed = true;
            System.err.println("qtool: CUDA graph capture failed, decoding op by op (" + NativeLibrary.summary(e) + ")");
        }
    }

    @Override
    public void close() {
        if (graph != null) cuda.graphDestroy(graph);
        graph = null;
        if (step != null) cuda.free(step);
    }
}
