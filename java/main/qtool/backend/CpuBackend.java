package qtool.backend;

import java.lang.foreign.MemorySegment;
import qtool.load.DType;

/**
 * PLACEHOLDER so the cuda branch compiles on its own: the real CPU backend is written on another branch and
 * replaces this file at merge. Every operation throws UnsupportedOperationException.
 */
public final class CpuBackend implements Backend {
    private static UnsupportedOperationException missing() {
        return new UnsupportedOperationException("CpuBackend is a placeholder on this branch");
    }

    @Override public String name() { return "cpu"; }
    @Override public String description() { return "cpu (placeholder)"; }
    @Override public Tensor allocate(DType dtype, long... shape) { throw missing(); }
    @Override public void free(Tensor t) { throw missing(); }
    @Override public Tensor upload(Tensor host, DType as) { throw missing(); }
    @Override public void copyToHost(Tensor src, MemorySegment dst) { throw missing(); }
    @Override public void copyFromHost(MemorySegment src, Tensor dst) { throw missing(); }
    @Override public void embedding(Tensor out, Tensor table, Tensor ids) { throw missing(); }
    @Override public void rmsNorm(Tensor out, Tensor x, Tensor weight, float eps) { throw missing(); }
    @Override public void linear(Tensor out, Tensor x, Tensor weight, Tensor bias) { throw missing(); }
    @Override public void rope(Tensor x, int heads, int headDim, int seqLen, int startPos, Tensor invFreq) { throw missing(); }
    @Override public void attention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache,
                                    int batch, int seqLen, int startPos, int heads, int kvHeads, int headDim) { throw missing(); }
    @Override public void siluMul(Tensor out, Tensor gate, Tensor up) { throw missing(); }
    @Override public void add(Tensor x, Tensor y) { throw missing(); }
    @Override public void crossEntropy(Tensor out, Tensor logits, Tensor targets) { throw missing(); }
    @Override public void synchronize() { throw missing(); }
    @Override public void close() {}
}
