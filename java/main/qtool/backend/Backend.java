package qtool.backend;

import java.lang.foreign.MemorySegment;
import qtool.load.DType;

/**
 * The arithmetic a model needs, on one device. Java code (model, calibration, quantizers) is written once against
 * this interface; {@link CpuBackend} does it in plain Java and is the reference, {@code CudaBackend} hands each call
 * to one kernel or cuBLAS call in libqtool.
 *
 * <p>Conventions: activations are 2-D row-major {@code [rows, cols]} (a batch of sequences is flattened to
 * {@code [batch * seqLen, cols]}, sequence-major). Weights are {@code [outFeatures, inFeatures]} as in HF
 * checkpoints, in F32, F16 or BF16; sums accumulate in F32. Calls on one backend are ordered; results are visible
 * to {@link #copyToHost} (which waits for them).
 *
 * <p>Activation types. Activations are F32 unless a backend offers a 16-bit activation type for a 16-bit linear
 * type ({@link #activationType}; the CPU backend never does). With one, the model's intermediate activations (norm
 * outputs, q/k/v, attention output, MLP gate/up) and the KV cache live in that type, and only the residual stream,
 * logits and losses stay F32: {@link #rmsNorm} reads F32 and may write the activation type, {@link #linear} reads F32
 * or the activation type and writes either, {@link #linearAdd} accumulates into F32, and {@link #rope},
 * {@link #attention} and {@link #siluMul} work in whichever of the two their tensors hold (one type per call).
 * Where an operation below says "F32", it means F32 on every backend.
 */
public interface Backend extends AutoCloseable {

    /** "cpu" or "cuda". */
    String name();

    /** One line for the user: device name, memory, why this backend was chosen. */
    String description();

    /** Uninitialized tensor on this device. */
    Tensor allocate(DType dtype, long... shape);

    /** Frees a tensor made by {@link #allocate} or {@link #upload}; host tensors not owned by the backend are ignored. */
    void free(Tensor t);

    /**
     * Puts a host tensor (e.g. a mapped weight) on this device as {@code as} (F32, F16 or BF16, converting when the
     * types differ). The CPU backend returns the host tensor itself when no conversion is needed: zero-copy.
     * A {@link DType#QMATRIX} host tensor stays QMATRIX whatever {@code as}: the CPU backend returns it as it is,
     * the CUDA backend copies its arrays to the device ({@link #free} frees them).
     */
    Tensor upload(Tensor host, DType as);

    /**
     * A host copy of {@code host} that this backend uploads fastest from, for weights uploaded again and again (layers
     * streamed per forward pass): page-locked memory for QMATRIX tensors on CUDA; the tensor itself elsewhere. Lives
     * until the backend closes.
     */
    default Tensor stage(Tensor host) {
        return host;
    }

    /** Copies a whole device tensor to host memory ({@code dst.byteSize() >= src.byteSize()}); waits for pending work. */
    void copyToHost(Tensor src, MemorySegment dst);

    /** Copies host bytes into a device tensor (same byte count). */
    void copyFromHost(MemorySegment src, Tensor dst);

    /**
     * The type this backend keeps activations in when linear weights are {@code linearType} and attention heads are
     * {@code headDim} wide: F32 (the default, and always on the CPU), or a 16-bit type equal to {@code linearType}
     * when the backend has 16-bit kernels for every activation operation at that head size (see the class comment).
     */
    default DType activationType(DType linearType, int headDim) {
        return DType.F32;
    }

    /** out[r, :] = table[ids[r], :] converted to F32. ids: I32 [rows]. */
    void embedding(Tensor out, Tensor table, Tensor ids);

    /**
     * out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight. x F32; out F32 or the activation type (rounded
     * once). out may be x when both are F32.
     */
    void rmsNorm(Tensor out, Tensor x, Tensor weight, float eps);

    /**
     * out[r, o] = sum_i x[r, i] * weight[o, i] (+ bias[o] when bias is not null), [rows, outF]. x is F32 or the
     * activation type; out is F32 or the activation type (rounded once from the F32 sum).
     *
     * <p>weight may be a {@link DType#QMATRIX} tensor from {@link #upload} (a quantized linear; x and out then F32
     * or F16): the CPU backend dequantizes it (the reference), the CUDA backend multiplies from the packed codes for
     * up to 64 rows and otherwise dequantizes it to an F16 scratch weight for its dense product.
     */
    void linear(Tensor out, Tensor x, Tensor weight, Tensor bias);

    /**
     * Products of one input, in order: {@code outs[j] = x · weights[j]ᵀ (+ biases[j])}, each as {@link #linear} (q/k/v,
     * gate/up). A backend may share work between them: the CUDA backend puts x into a quantized weight's input order
     * once for consecutive weights with the same order (the linears of one input in an EXL2 or act-order GPTQ model).
     * {@code biases} may be null.
     */
    default void linears(Tensor x, Tensor[] outs, Tensor[] weights, Tensor[] biases) {
        for (int j = 0; j < outs.length; j++) linear(outs[j], x, weights[j], biases == null ? null : biases[j]);
    }

    /**
     * out[r, o] += sum_i x[r, i] * weight[o, i] (+ bias[o]): the residual add fused into the product. out F32
     * [rows, outF]; x as for {@link #linear}. This default runs {@link #linear} into a temporary and {@link #add}s it.
     */
    default void linearAdd(Tensor out, Tensor x, Tensor weight, Tensor bias) {
        Tensor t = allocate(DType.F32, out.shape());
        try {
            linear(t, x, weight, bias);
            add(out, t);
        } finally {
            free(t);
        }
    }

    /**
     * Rotary embedding in place, HF layout (rotate_half: dimension j pairs with j + headDim/2 inside each head).
     * x: [batch * seqLen, heads * headDim], F32 or the activation type; row r has position startPos + r % seqLen;
     * angle = position * invFreq[j].
     * invFreq: F32 [headDim / 2] on this device, computed by the caller (it holds every RoPE scaling variant).
     */
    void rope(Tensor x, int heads, int headDim, int seqLen, int startPos, Tensor invFreq);

    /**
     * Causal grouped-query attention with a KV cache. q: [batch * seqLen, heads * headDim]; k, v: [batch * seqLen,
     * kvHeads * headDim]; kCache, vCache: [batch, maxSeq, kvHeads * headDim]. Stores k, v at positions
     * [startPos, startPos + seqLen) of each sequence's cache, then for each query at position p attends over cache
     * positions [0, p] with scale 1/sqrt(headDim). Query head h uses kv head h / (heads / kvHeads).
     * out: [batch * seqLen, heads * headDim]. All six tensors are F32, or all are of the activation type (then the
     * caches are 16-bit too, and the arithmetic is the backend's 16-bit attention: 16-bit products, F32 softmax and
     * sums); a caller allocates the caches in {@link #activationType}.
     */
    void attention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache,
                   int batch, int seqLen, int startPos, int heads, int kvHeads, int headDim);

    /**
     * One decoding step of {@link #attention} with the position on the device, RoPE included: {@code batch}
     * sequences of one new token each, all at position {@code pos[0]} (I32 [1] on this device, read when the work
     * runs, so that a captured CUDA graph serves every step). q [batch, heads * headDim] and k [batch, kvHeads *
     * headDim] are this token's projections before RoPE and are rotated in place (angle = pos · invFreq[j]); k and
     * v are stored at that position of the caches [batch, maxSeq, kvHeads * headDim]; out as {@link #attention}'s.
     * All tensors F32, or all F16 on the CUDA backend. This default reads the position back (a wait) and runs
     * {@link #rope} and {@link #attention}: the CPU backend's reference.
     */
    default void decodeAttention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache, int batch, int heads,
                                 int kvHeads, int headDim, Tensor pos, Tensor invFreq) {
        if (pos.dtype() != DType.I32 || pos.numel() != 1) throw new IllegalArgumentException("decodeAttention pos: expected I32[1], got " + pos);
        int[] position = new int[1];
        copyToHost(pos, MemorySegment.ofArray(position));
        rope(q, heads, headDim, 1, position[0], invFreq);
        rope(k, kvHeads, headDim, 1, position[0], invFreq);
        attention(out, q, k, v, kCache, vCache, batch, 1, position[0], heads, kvHeads, headDim);
    }

    /**
     * Sets aside what {@link #decodeAttention} needs for these sizes (caches of {@code maxSeq} positions), so that no
     * decoding step allocates (a CUDA graph capture must not). Nothing to do on the CPU.
     */
    default void prepareDecode(int batch, int maxSeq, int heads, int kvHeads, int headDim) {
    }

    /** out = silu(gate) * up, elementwise; all three F32 or all of the activation type. out may be gate. */
    void siluMul(Tensor out, Tensor gate, Tensor up);

    /** x += y, elementwise. */
    void add(Tensor x, Tensor y);

    /** out[r] = logsumexp(logits[r, :]) - logits[r, targets[r]] (negative log-likelihood). out F32 [rows]; targets I32. */
    void crossEntropy(Tensor out, Tensor logits, Tensor targets);

    /** dst ← src (same byte size), on the device. */
    void copy(Tensor dst, Tensor src);

    /** h += xᵀ·x: h F32 [in, in], x F32 [rows, in]. Calibration sums each linear input's Gram matrix this way. */
    void accumulateGram(Tensor h, Tensor x);

    /**
     * GPTQ of one linear layer (see {@link qtool.quantize.Gptq}, the CPU reference this must agree with):
     * {@code weight} F32 [out, in] and {@code hessian} F32 [in, in] on this device, neither modified. The result
     * lives in host memory (codes, group parameters, the dequantized weight for the next layer's inputs).
     */
    qtool.quantize.GptqResult gptq(Tensor weight, Tensor hessian, qtool.quantize.GptqParams params);

    /**
     * EXL2, step 1 of 2 ({@link qtool.quantize.Exl2Gptq#prepare}, the CPU reference): the act-order permutation and
     * the factor of the damped H⁻¹ of one linear input, {@code hessian} F32 [in, in] on this device (not modified).
     * The factor stays where this backend's {@link #exl2Quantize} reads it and serves every option of every linear
     * reading that input; close it after the last one.
     */
    qtool.quantize.Exl2Gptq.Factor exl2Prepare(Tensor hessian);

    /**
     * EXL2, step 2 of 2 ({@link qtool.quantize.Exl2Gptq#quantize}): quantizes {@code weight} F32 [out, in] on this
     * device (not modified) with one option, given its input's factor from this backend. The result lives in host
     * memory; its dequantized weight [out, in] is what the model uses next.
     */
    qtool.quantize.Exl2Tensor exl2Quantize(qtool.quantize.Exl2Gptq.Factor factor, Tensor weight, qtool.quantize.Exl2Params params);

    /**
     * AWQ's clipping search of one linear ({@link qtool.quantize.Awq#searchClip}, the CPU reference): {@code weight}
     * F32 [out, in] and its sampled inputs {@code x} F32 [tokens, in] (divided by the scale search's scales) on this
     * device, neither modified; {@code asymmetric} as for searchClip. Returns {lo, hi} per [out, groups] in host
     * memory, for {@link qtool.quantize.Awq#applyClip}.
     */
    float[] awqClip(Tensor weight, Tensor x, qtool.quantize.AwqParams params, boolean asymmetric);

    /** Waits for all work queued on this backend. */
    void synchronize();

    @Override
    void close();
}
