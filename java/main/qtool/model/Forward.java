package qtool.model;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.QMatrix;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.load.ModelConfig;

/**
 * Runs a {@link LlamaModel} on a {@link Backend}: embedding, decoder layers (RMSNorm, q/k/v, RoPE, causal GQA
 * attention through a KV cache, o_proj, residual, RMSNorm, SwiGLU MLP, residual), final norm and lm_head.
 *
 * <p>Activations for up to {@code batch × maxSeq} rows are allocated once, in the backend's activation type for the
 * linear type ({@link Backend#activationType}: F16/BF16 on the GPU's fp16 path, else F32); the residual stream stays
 * F32, and the KV cache takes the activation type. Residual adds are fused into the o_proj and down_proj products
 * ({@link Backend#linearAdd}). Where the layers live is a {@link Placement}: resident on the device, streamed
 * (uploaded for the one call that needs them and freed after, so that only one layer's weights are on the device at a
 * time: how calibration and {@code --offload} handle models larger than GPU memory), or the first N resident and the
 * rest streamed; and whether GPTQ/EXL2 linears stay packed for the quantized kernels ({@link qtool.load.DType#QMATRIX}).
 * {@link #decodeStep} is one batch-1 decoding step whose token and position are read on the device, the form
 * {@link Decoder} captures once as a CUDA graph and replays per token.
 */
public final class Forward implements AutoCloseable {
    private static final int LOGIT_CHUNK_ROWS = 512;

    public final LlamaModel model;
    public final ModelConfig cfg;
    public final Backend backend;
    private final DType linearType, actType;
    private final int batch, maxSeq;
    private final Placement placement;

    private final Tensor embed, lmHead, finalNorm, invFreq;
    private final LlamaModel.Layer[] resident;
    /** Host copies of streamed layers in packed form, made once (building them is Java work worth keeping). */
    private final LlamaModel.Layer[] hostPacked;
    private final Tensor hidden, normed, q, k, v, attn, gate, up, ids, logits, nll, targets;
    private final Tensor[] kCache, vCache;
    private final List<Tensor> owned = new ArrayList<>();

    /**
     * @param linearType   type the linear weights take on the device: F32 (the fp32 path), or F16/BF16 (fp16 path)
     * @param cachePerLayer keep a KV cache per layer (generation); otherwise all layers share one, which suffices
     *                      when every call starts at position 0
     */
    public Forward(LlamaModel model, Backend backend, DType linearType, int batch, int maxSeq, boolean streamLayers,
                   boolean cachePerLayer, double ntkAlpha, double ropeScale) {
        this(model, backend, linearType, batch, maxSeq, streamLayers ? Placement.STREAMED : Placement.RESIDENT, cachePerLayer,
                ntkAlpha, ropeScale);
    }

    /**
     * Where the decoder layers live and in what form.
     *
     * @param residentLayers the first this many layers stay on the device; the others are streamed per call
     * @param packed         GPTQ and EXL2 linears (and an EXL2 lm_head) stay quantized for the backend's quantized
     *                       kernels instead of being dequantized on load
     */
    public record Placement(int residentLayers, boolean packed) {
        public static final Placement RESIDENT = new Placement(Integer.MAX_VALUE, false);
        public static final Placement STREAMED = new Placement(0, false);

        public Placement {
            if (residentLayers < 0) throw new IllegalArgumentException("resident layers " + residentLayers);
        }
    }

    /** Device memory a forward needs besides its decoder layers: a margin for the CUDA context and cuBLAS workspaces. */
    private static final long DEVICE_MARGIN_BYTES = 512L << 20;

    /**
     * The placement that keeps as many leading layers resident as fit in {@code capBytes} of device memory, after the
     * embedding, lm_head, KV caches, activation buffers, the scratch weight of a packed product over many rows, a margin,
     * and room for one streamed layer. Layer sizes come from layer 0 (Llama layers are alike).
     */
    public static Placement fit(LlamaModel model, DType linearType, boolean packed, int batch, int maxSeq, long capBytes) {
        ModelConfig c = model.config;
        long rows = (long) batch * maxSeq, act = linearType.bytes;
        LlamaModel.Layer layer0 = packed ? model.layer(0, true) : model.layer(0);
        long perLayer = 0, largestLinear = 0;
        for (Tensor t : layer0.all()) {
            if (t == null) continue;
            perLayer += t.shape().length == 1 ? t.numel() * 4 : deviceBytes(t, linearType);
            if (t.shape().length == 2) largestLinear = Math.max(largestLinear, t.numel() * 2);
        }
        long embed = (long) c.vocabSize() * c.hiddenSize() * act;
        long head = model.headTied() ? 0 : deviceBytes(model.lmHead(packed), linearType);
        long caches = 2L * c.numLayers() * rows * c.kvDim() * act;
        long activations = rows * (c.hiddenSize() * (4 + act) + 2 * act * (c.qDim() + c.kvDim() + c.intermediateSize()))
                + Math.min(rows, LOGIT_CHUNK_ROWS) * (long) c.vocabSize() * 4;
        long fixed = embed + head + caches + activations + (packed ? largestLinear : 0) + DEVICE_MARGIN_BYTES;
        long room = capBytes - fixed - perLayer;
        if (room < 0) {
            throw new QtoolException(String.format("%.2f GiB of GPU memory is less than this model needs with one layer on the device "
                    + "(%.2f GiB: embedding, head, caches, buffers and one layer)", capBytes / GIB, (fixed + perLayer) / GIB));
        }
        return new Placement((int) Math.min(c.numLayers(), room / perLayer), packed);
    }

    private static final double GIB = 1L << 30;

    /** Bytes a weight takes on the device as {@code linearType}: dense, or the arrays of a packed quantized matrix. */
    static long deviceBytes(Tensor t, DType linearType) {
        return t.dtype() == DType.QMATRIX ? QMatrix.bytes(t) : t.numel() * linearType.bytes;
    }

    public Forward(LlamaModel model, Backend backend, DType linearType, int batch, int maxSeq, Placement placement,
                   boolean cachePerLayer, double ntkAlpha, double ropeScale) {
        this.model = model;
        this.cfg = model.config;
        this.backend = backend;
        this.linearType = linearType;
        this.batch = batch;
        this.maxSeq = maxSeq;
        this.placement = placement;
        int rows = batch * maxSeq;
        this.actType = backend.activationType(linearType, cfg.headDim());
        try {
            embed = keep(backend.upload(model.embedTokens(), linearType));
            lmHead = model.headTied() ? embed : keep(backend.upload(model.lmHead(placement.packed()), linearType));
            finalNorm = keep(backend.upload(model.finalNorm(), DType.F32));
            if (!backend.name().equals("cpu")) { // on the device now: their mapped pages need not stay resident
                for (Tensor t : new Tensor[] {model.embedTokens(), model.lmHead()}) if (t.data().isMapped()) t.data().unload();
            }
            float[] inv = cfg.ropeInvFreq(ntkAlpha, ropeScale);
            invFreq = keep(backend.upload(new Tensor(MemorySegment.ofArray(inv), DType.F32, new long[] {inv.length}), DType.F32));
            resident = new LlamaModel.Layer[cfg.numLayers()];
            hostPacked = new LlamaModel.Layer[cfg.numLayers()];
            for (int i = 0; i < Math.min(placement.residentLayers(), cfg.numLayers()); i++) resident[i] = uploadLayer(i);
            hidden = alloc(DType.F32, rows, cfg.hiddenSize());
            normed = alloc(actType, rows, cfg.hiddenSize());
            q = alloc(actType, rows, cfg.qDim());
            k = alloc(actType, rows, cfg.kvDim());
            v = alloc(actType, rows, cfg.kvDim());
            attn = alloc(actType, rows, cfg.qDim());
            gate = alloc(actType, rows, cfg.intermediateSize());
            up = alloc(actType, rows, cfg.intermediateSize());
            ids = alloc(DType.I32, rows, 1);
            int chunk = Math.min(rows, LOGIT_CHUNK_ROWS);
            logits = alloc(DType.F32, chunk, cfg.vocabSize());
            nll = alloc(DType.F32, rows, 1);
            targets = alloc(DType.I32, rows, 1);
            int caches = cachePerLayer ? cfg.numLayers() : 1;
            kCache = new Tensor[caches];
            vCache = new Tensor[caches];
            for (int i = 0; i < caches; i++) {
                kCache[i] = alloc(actType, batch, maxSeq, cfg.kvDim());
                vCache[i] = alloc(actType, batch, maxSeq, cfg.kvDim());
            }
            if (allResident() && !backend.name().equals("cpu")) warmUp();
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    /**
     * Load-time preparation on a GPU: layer 0 once over all batch × maxSeq rows, then one chunk of logits and losses,
     * on token 0. The one-time costs of first launches (cuBLAS choosing and loading its kernels for this forward's
     * shapes, CUDA loading kernel modules lazily) then fall here rather than in the first real pass: they made a 7B
     * model's first 2048-token window on an H100 0.19 s slower than the next (0.09 s at 16 × 2048, partly hidden
     * behind queued work); with this, the first window is as fast as the rest. PyTorch's timings skip the same costs
     * in their warm-up passes. Leaves nothing a later call reads: the cache positions it writes are rewritten before
     * any query attends to them. Skipped on the CPU (no such cost; a layer over every row would be slow) and when
     * layers stream.
     */
    private void warmUp() {
        int rows = batch * maxSeq;
        embed(new int[rows]);
        layer(0, batch, maxSeq, 0);
        int n = Math.min(rows, logits.rows());
        nll(hidden.rowSlice(0, n), new int[n]);  // waits for all of it
    }

    private Tensor alloc(DType t, long... shape) {
        return keep(backend.allocate(t, shape));
    }

    private Tensor keep(Tensor t) {
        owned.add(t);
        return t;
    }

    private LlamaModel.Layer uploadLayer(int i) {
        boolean streamed = i >= placement.residentLayers();
        if (placement.packed()) {
            LlamaModel.Layer host = hostPacked[i];
            if (host == null) {
                host = model.layer(i, true);
                if (streamed) hostPacked[i] = host = host.map(backend::stage);  // uploaded every pass: from page-locked memory
            }
            return upload(host);
        }
        LlamaModel.Layer host = model.layer(i);
        LlamaModel.Layer dev = upload(host);
        if (streamed && !backend.name().equals("cpu")) LlamaModel.release(host); // the CPU backend may use them in place
        return dev;
    }

    /** Whether every decoder layer stays on the device (no layer is streamed). */
    public boolean allResident() {
        return placement.residentLayers() >= cfg.numLayers();
    }

    private void freeLayer(LlamaModel.Layer l) {
        for (Tensor t : l.all()) if (t != null) backend.free(t);
    }

    public int batch() {
        return batch;
    }

    /** Type the linear weights take on the device. */
    public DType linearType() {
        return linearType;
    }

    /** Type of the layer activations and of KV caches passed to {@link #layer(LlamaModel.Layer, Tensor, Tensor, Tensor, int, int, int, SiteObserver)}. */
    public DType activationType() {
        return actType;
    }

    /** Embeds {@code tokens} (batch × seqLen, sequence-major) into the residual stream. */
    public void embed(int[] tokens) {
        embed(tokens, hidden.rowSlice(0, tokens.length));
    }

    /** Embeds tokens into the given residual rows (at most batch × maxSeq of them at once). */
    public void embed(int[] tokens, Tensor dst) {
        int rows = tokens.length;
        if (rows > batch * maxSeq) throw new IllegalArgumentException(rows + " tokens, room for " + batch * maxSeq);
        for (int t : tokens) {
            if (t < 0 || t >= cfg.vocabSize()) throw new IllegalArgumentException("token id " + t + " outside the vocabulary of " + cfg.vocabSize());
        }
        Tensor idView = ids.rowSlice(0, rows);
        backend.copyFromHost(MemorySegment.ofArray(tokens), idView);
        backend.embedding(dst, embed, idView);
    }

    /** Runs decoder layer {@code i} in place on the residual stream of {@code batchRows × seqLen} rows. */
    public void layer(int i, int batchRows, int seqLen, int startPos) {
        boolean streamed = resident[i] == null;
        LlamaModel.Layer w = streamed ? uploadLayer(i) : resident[i];
        try {
            layer(w, hidden.rowSlice(0, batchRows * seqLen), cacheK(i), cacheV(i), batchRows, seqLen, startPos, null);
        } finally {
            if (streamed) freeLayer(w);
        }
    }

    public Tensor cacheK(int layer) {
        return kCache[Math.min(layer, kCache.length - 1)];
    }

    public Tensor cacheV(int layer) {
        return vCache[Math.min(layer, vCache.length - 1)];
    }

    /** Where a decoder layer's linears read their input; q/k/v share one, gate/up share one. */
    public enum Site {
        ATTN_IN, O_IN, MLP_IN, DOWN_IN;

        /** The site whose rows feed a decoder linear, named "self_attn.q_proj" or just "q_proj". */
        public static Site of(String linear) {
            return switch (linear.substring(linear.lastIndexOf('.') + 1)) {
                case "q_proj", "k_proj", "v_proj" -> ATTN_IN;
                case "o_proj" -> O_IN;
                case "gate_proj", "up_proj" -> MLP_IN;
                case "down_proj" -> DOWN_IN;
                default -> throw new IllegalArgumentException("not a decoder linear: " + linear);
            };
        }
    }

    /**
     * Sees the input of each linear site as the layer runs (calibration collects Hessians through it). The tensor is
     * always F32: with 16-bit activations, a converted copy that lives for the call only.
     */
    @FunctionalInterface
    public interface SiteObserver {
        void input(Site site, Tensor x);
    }

    /**
     * One decoder layer with the given device weights, in place on residual rows {@code x} ([batchRows × seqLen,
     * hidden], any rows of any tensor: calibration passes slices of its own state buffer). {@code observer} may be
     * null. {@code kc}, {@code vc}: caches of {@link #activationType()}.
     */
    public void layer(LlamaModel.Layer w, Tensor x, Tensor kc, Tensor vc, int batchRows, int seqLen, int startPos, SiteObserver observer) {
        attentionHalf(w, x, kc, vc, batchRows, seqLen, startPos, observer);
        mlpHalf(w, x, observer);
    }

    /** The first half of {@link #layer}: x += o_proj(attention(q/k/v(RMSNorm(x)))). EXL2 measures the halves apart. */
    public void attentionHalf(LlamaModel.Layer w, Tensor x, Tensor kc, Tensor vc, int batchRows, int seqLen, int startPos, SiteObserver observer) {
        Tensor n = normed.rowSlice(0, batchRows * seqLen);
        backend.rmsNorm(n, x, w.inputNorm(), cfg.rmsNormEps());
        observe(observer, Site.ATTN_IN, n);
        Tensor a = attend(w, n, kc, vc, batchRows, seqLen, startPos);
        observe(observer, Site.O_IN, a);
        backend.linearAdd(x, a, w.o(), w.oBias());
    }

    /** The second half of {@link #layer}: x += down(silu(gate(RMSNorm(x))) · up(RMSNorm(x))). */
    public void mlpHalf(LlamaModel.Layer w, Tensor x, SiteObserver observer) {
        int rows = x.rows();
        Tensor n = normed.rowSlice(0, rows);
        backend.rmsNorm(n, x, w.postNorm(), cfg.rmsNormEps());
        observe(observer, Site.MLP_IN, n);
        Tensor g = gatedUp(w, n, rows);
        observe(observer, Site.DOWN_IN, g);
        backend.linearAdd(x, g, w.down(), null);
    }

    /** q/k/v of the normed rows {@code n}, RoPE, causal attention: the o_proj input (this forward's buffer). */
    private Tensor attend(LlamaModel.Layer w, Tensor n, Tensor kc, Tensor vc, int batchRows, int seqLen, int startPos) {
        int rows = batchRows * seqLen;
        Tensor qv = q.rowSlice(0, rows), kv = k.rowSlice(0, rows), vv = v.rowSlice(0, rows), a = attn.rowSlice(0, rows);
        Backend b = backend;
        b.linears(n, new Tensor[] {qv, kv, vv}, new Tensor[] {w.q(), w.k(), w.v()}, new Tensor[] {w.qBias(), w.kBias(), w.vBias()});
        b.rope(qv, cfg.numHeads(), cfg.headDim(), seqLen, startPos, invFreq);
        b.rope(kv, cfg.numKvHeads(), cfg.headDim(), seqLen, startPos, invFreq);
        b.attention(a, qv, kv, vv, kc, vc, batchRows, seqLen, startPos, cfg.numHeads(), cfg.numKvHeads(), cfg.headDim());
        return a;
    }

    /** silu(gate(n)) · up(n): the down_proj input (this forward's buffer). */
    private Tensor gatedUp(LlamaModel.Layer w, Tensor n, int rows) {
        Tensor g = gate.rowSlice(0, rows), u = up.rowSlice(0, rows);
        backend.linears(n, new Tensor[] {g, u}, new Tensor[] {w.gate(), w.up()}, null);
        backend.siluMul(g, g, u);
        return g;
    }

    /**
     * The attention block alone (HF's {@code self_attn} module): o_proj(attention(q, k, v)) of already-normed rows
     * {@code n} ([batchRows × seqLen, hidden], positions from 0), written to {@code out} (F32 [rows, hidden]), no
     * residual. What AWQ's scale search compares for the q/k/v group.
     */
    public void attentionBlock(LlamaModel.Layer w, Tensor n, Tensor out, int batchRows, int seqLen) {
        backend.linear(out, attend(w, n, cacheK(0), cacheV(0), batchRows, seqLen, 0), w.o(), w.oBias());
    }

    /** The MLP block alone (HF's {@code mlp}): down(silu(gate(n)) · up(n)) into {@code out}, no residual. */
    public void mlpBlock(LlamaModel.Layer w, Tensor n, Tensor out) {
        backend.linear(out, gatedUp(w, n, n.rows()), w.down(), null);
    }

    private void observe(SiteObserver observer, Site site, Tensor t) {
        if (observer == null) return;
        if (t.dtype() == DType.F32) {
            observer.input(site, t);
            return;
        }
        Tensor f = backend.upload(t, DType.F32);  // device to device, converting
        try {
            observer.input(site, f);
        } finally {
            backend.free(f);
        }
    }

    /** Uploads layer {@code i}'s weights as this forward's types (callers that stream layers themselves). */
    public LlamaModel.Layer upload(LlamaModel.Layer host) {
        return host.map(t -> backend.upload(t, t.shape().length == 1 ? DType.F32 : linearType));
    }

    public void free(LlamaModel.Layer deviceLayer) {
        freeLayer(deviceLayer);
    }

    /**
     * One decoding step of one sequence with every layer resident: embeds the token id {@code step[0]}, runs every layer
     * at position {@code step[1]} ({@code step}: I32 [2, 1] on this device, read when the kernels run) and writes the
     * logits that {@link #stepLogits} reads. It neither waits nor allocates, so a CUDA graph can capture it once and
     * replay it at every position (the backend's {@link Backend#decodeAttention} reads the position on the device).
     * Needs a KV cache per layer holding positions [0, step[1]).
     */
    public void decodeStep(Tensor step) {
        if (!allResident() || kCache.length < cfg.numLayers()) throw new IllegalStateException("decodeStep needs resident layers and a cache per layer");
        Tensor x = hidden.rowSlice(0, 1), n = normed.rowSlice(0, 1), pos = step.rowSlice(1, 1);
        backend.embedding(x, embed, step.rowSlice(0, 1));
        Tensor qv = q.rowSlice(0, 1), kv = k.rowSlice(0, 1), vv = v.rowSlice(0, 1), a = attn.rowSlice(0, 1);
        for (int i = 0; i < cfg.numLayers(); i++) {
            LlamaModel.Layer w = resident[i];
            backend.rmsNorm(n, x, w.inputNorm(), cfg.rmsNormEps());
            backend.linears(n, new Tensor[] {qv, kv, vv}, new Tensor[] {w.q(), w.k(), w.v()}, new Tensor[] {w.qBias(), w.kBias(), w.vBias()});
            backend.decodeAttention(a, qv, kv, vv, kCache[i], vCache[i], 1, cfg.numHeads(), cfg.numKvHeads(), cfg.headDim(), pos, invFreq);
            backend.linearAdd(x, a, w.o(), w.oBias());
            mlpHalf(w, x, null);
        }
        backend.rmsNorm(n, x, finalNorm, cfg.rmsNormEps());
        backend.linear(logits.rowSlice(0, 1), n, lmHead, null);
    }

    /** The logits {@link #decodeStep} wrote (waits for it). */
    public float[] stepLogits() {
        float[] out = new float[cfg.vocabSize()];
        backend.copyToHost(logits.rowSlice(0, 1), MemorySegment.ofArray(out));
        return out;
    }

    /** Embedding plus every layer. */
    public void forward(int[] tokens, int batchRows, int seqLen, int startPos) {
        embed(tokens);
        for (int i = 0; i < cfg.numLayers(); i++) layer(i, batchRows, seqLen, startPos);
    }

    /** Logits of residual row {@code row} after the final norm: float[vocab]. */
    public float[] logits(int row) {
        Tensor n = normed.rowSlice(0, 1), l = logits.rowSlice(0, 1);
        backend.rmsNorm(n, hidden.rowSlice(row, 1), finalNorm, cfg.rmsNormEps());
        backend.linear(l, n, lmHead, null);
        float[] out = new float[cfg.vocabSize()];
        backend.copyToHost(l, MemorySegment.ofArray(out));
        return out;
    }

    /**
     * Negative log-likelihood of each next token after {@link #forward}: {@code targets[r]} is the token that row r
     * predicts; rows whose target is negative are skipped (their value is 0). Logits are made in chunks of rows
     * so that a vocabulary-wide [rows, vocab] buffer never has to exist.
     */
    public float[] nll(int[] targetIds) {
        return nll(hidden.rowSlice(0, targetIds.length), targetIds);
    }

    /** {@link #nll(int[])} over given residual rows (at most batch × maxSeq of them). */
    public float[] nll(Tensor x, int[] targetIds) {
        return nll(x, targetIds, lmHead);
    }

    /** {@link #nll(Tensor, int[])} through another head of the same shape (EXL2: the quantized lm_head, on this device). */
    public float[] nll(Tensor x, int[] targetIds, Tensor head) {
        int rows = targetIds.length;
        if (rows > targets.rows()) throw new IllegalArgumentException(rows + " targets, room for " + targets.rows());
        int[] tg = new int[rows];
        for (int j = 0; j < rows; j++) tg[j] = Math.max(0, targetIds[j]);
        // All targets up, every chunk's losses into one buffer, all losses down: two waits per call, not two a chunk.
        backend.copyFromHost(MemorySegment.ofArray(tg), targets.rowSlice(0, rows));
        int chunk = logits.rows();
        for (int r0 = 0; r0 < rows; r0 += chunk) {
            int n = Math.min(chunk, rows - r0);
            backend.rmsNorm(normed.rowSlice(0, n), x.rowSlice(r0, n), finalNorm, cfg.rmsNormEps());
            Tensor l = logits.rowSlice(0, n);
            backend.linear(l, normed.rowSlice(0, n), head, null);
            backend.crossEntropy(nll.rowSlice(r0, n), l, targets.rowSlice(r0, n));
        }
        float[] result = new float[rows];
        backend.copyToHost(nll.rowSlice(0, rows), MemorySegment.ofArray(result));
        for (int j = 0; j < rows; j++) if (targetIds[j] < 0) result[j] = 0;
        return result;
    }

    @Override
    public void close() {
        if (resident != null) for (LlamaModel.Layer l : resident) if (l != null) freeLayer(l);
        for (Tensor t : owned) backend.free(t);
        owned.clear();
    }
}
