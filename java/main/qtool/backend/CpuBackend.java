package qtool.backend;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinTask;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.IntConsumer;
import java.util.stream.IntStream;
import qtool.load.DType;

/**
 * The model's arithmetic in plain Java: the fallback on machines without a GPU and the reference the CUDA backend
 * is tested against. Every tensor it owns is a heap {@code float[]} (or {@code int[]}) wrapped as a segment: plain
 * arrays let the JIT unroll and bounds-check-eliminate the inner loops, which mapped segments do not. Weights are
 * therefore converted to F32 arrays on {@link #upload}.
 *
 * <p>The inner loops are {@link CpuKernels}: SIMD through the Vector API when the JVM has
 * {@code --add-modules jdk.incubator.vector} (scripts/qtool passes it), plain Java otherwise. Matrix products
 * (linear, attention's QK^T and PV) go through one GEMM: B is packed into panels of {@link CpuKernels#panelWidth}
 * columns, and a 4-row micro-kernel ({@link CpuKernels#tile}) keeps a 4 × panel tile of C in registers over the
 * whole k loop. Work is split into tasks taken by the calling thread and the common pool's workers; operations
 * under {@link #SERIAL_WORK} run on the calling thread alone, since handing work over costs tens of µs.
 */
public final class CpuBackend implements Backend {
    private static final CpuKernels BEST = CpuKernels.load();
    /** Rows per micro-tile. */
    private static final int MR = 4;
    private static final int THREADS = Runtime.getRuntime().availableProcessors();
    /** Multiply-adds (or elements, for elementwise work) below which an operation stays on the calling thread. */
    private static final long SERIAL_WORK = 1 << 18;
    /** Packed weight floats per linear task: 256 KiB, so that a task's panels stay in L2 while every row streams by. */
    private static final int L2_FLOATS = 64 * 1024;
    /** Linear with fewer rows takes dot products against the weight rows as stored: packing would cost more than it saves. */
    private static final int PACK_MIN_ROWS = 16;

    /** Per-thread scratch: a linear task's packed weight panels, an attention task's panels. */
    private static final ThreadLocal<float[][]> SCRATCH = ThreadLocal.withInitial(() -> new float[2][0]);

    final CpuKernels kernels;
    /** Columns per packed panel: the micro-kernel's width. */
    private final int nr;
    /** Attention's V^T per sequence and kv head, grown as needed (calls on a backend are ordered). */
    private float[] vTransposed = new float[0];
    /** cos/sin of the last RoPE call, reused while positions and frequencies stay the same (q and k, every layer). */
    private RopeTable rope;
    /** Dequantized QMATRIX weights by struct contents, least recently used first; see {@link #dequantized}. */
    private final LinkedHashMap<List<Long>, float[]> qmatrixCache = new LinkedHashMap<>(16, 0.75f, true);
    private long qmatrixCacheFloats;
    private static final long QMATRIX_CACHE_FLOATS = Runtime.getRuntime().maxMemory() / 16;  // a quarter of the heap

    /** With the fastest kernels this JVM allows (see {@link CpuKernels#load}). */
    public CpuBackend() {
        this(BEST);
    }

    /** With the given kernels (tests run both sets). */
    CpuBackend(CpuKernels kernels) {
        this.kernels = kernels;
        this.nr = kernels.panelWidth();
    }

    @Override
    public String name() {
        return "cpu";
    }

    @Override
    public String description() {
        return "cpu (" + THREADS + " threads, " + kernels.describe() + ", Java " + Runtime.version().feature() + ")";
    }

    @Override
    public Tensor allocate(DType dtype, long... shape) {
        long n = 1;
        for (long d : shape) n *= d;
        int count = Math.toIntExact(n);
        MemorySegment seg = switch (dtype) {
            case F32 -> MemorySegment.ofArray(new float[count]);
            case I32 -> MemorySegment.ofArray(new int[count]);
            default -> throw new IllegalArgumentException("cpu backend holds F32 and I32 tensors, not " + dtype);
        };
        return new Tensor(seg, dtype, shape);
    }

    @Override
    public void free(Tensor t) {
        // heap arrays: the garbage collector frees them
    }

    @Override
    public Tensor upload(Tensor host, DType as) {
        if (host.dtype() == DType.QMATRIX) return host;  // dequantized by linear, see dequantized()
        if (host.dtype() == DType.I32) {
            Tensor t = allocate(DType.I32, host.shape());
            MemorySegment.copy(host.data(), 0, t.data(), 0, host.byteSize());
            return t;
        }
        Tensor t = allocate(DType.F32, host.shape());
        float[] dst = f(t);
        MemorySegment src = host.data();
        switch (host.dtype()) {
            case F32 -> MemorySegment.copy(src, ValueLayout.JAVA_FLOAT_UNALIGNED, 0, dst, 0, dst.length);
            case F16 -> IntStream.range(0, dst.length).parallel()
                    .forEach(i -> dst[i] = Float.float16ToFloat(src.getAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, i)));
            case BF16 -> IntStream.range(0, dst.length).parallel()
                    .forEach(i -> dst[i] = Float.intBitsToFloat(src.getAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, i) << 16));
            default -> {
                for (int i = 0; i < dst.length; i++) dst[i] = host.getFloat(i);
            }
        }
        if (as == DType.F16 || as == DType.BF16) roundTo(dst, as); // same rounding the GPU's fp16 path sees
        return t;
    }

    private static void roundTo(float[] a, DType as) {
        for (int i = 0; i < a.length; i++) {
            a[i] = as == DType.F16 ? Float.float16ToFloat(Float.floatToFloat16(a[i]))
                    : Float.intBitsToFloat((Float.floatToRawIntBits(a[i]) + 0x7FFF + ((Float.floatToRawIntBits(a[i]) >> 16) & 1)) & 0xFFFF0000);
        }
    }

    @Override
    public void copyToHost(Tensor src, MemorySegment dst) {
        MemorySegment.copy(src.data(), 0, dst, 0, src.byteSize());
    }

    @Override
    public void copyFromHost(MemorySegment src, Tensor dst) {
        MemorySegment.copy(src, 0, dst.data(), 0, dst.byteSize());
    }

    static float[] f(Tensor t) {
        return (float[]) t.data().heapBase().orElseThrow(() -> new IllegalArgumentException("not a cpu tensor: " + t));
    }

    static int[] i32(Tensor t) {
        return (int[]) t.data().heapBase().orElseThrow(() -> new IllegalArgumentException("not a cpu tensor: " + t));
    }

    /** Element offset of a tensor view inside its backing array (row slices share the array). */
    static int off(Tensor t) {
        return (int) (t.data().address() / t.dtype().bytes);
    }

    @Override
    public void embedding(Tensor out, Tensor table, Tensor ids) {
        float[] o = f(out), w = f(table);
        int[] id = i32(ids);
        int dim = table.cols(), oo = off(out), wo = off(table), io = off(ids);
        for (int r = 0; r < out.rows(); r++) System.arraycopy(w, wo + id[io + r] * dim, o, oo + r * dim, dim);
    }

    @Override
    public void rmsNorm(Tensor out, Tensor x, Tensor weight, float eps) {
        float[] o = f(out), xs = f(x), w = f(weight);
        int dim = x.cols(), oo = off(out), xo = off(x), wo = off(weight), rows = x.rows();
        forRowChunks(rows, dim, r -> {
            float ss = kernels.sumSquares(xs, xo + r * dim, dim);
            float inv = (float) (1.0 / Math.sqrt(ss / dim + eps));
            kernels.scaleMul(o, oo + r * dim, xs, xo + r * dim, inv, w, wo, dim);
        });
    }

    /**
     * out = x · W^T (+ bias). Few rows: one dot product per (row, output) over W as stored. Otherwise the outputs
     * are cut into groups of panels, one task each: the task packs its W rows transposed into panels (at most
     * {@link #L2_FLOATS}, so they stay in L2), then runs every block of 4 input rows across them; the 4 rows stay
     * in L1 while they meet each panel. Packing costs one pass over W per call, small next to rows × W multiply-adds.
     */
    @Override
    public void linear(Tensor out, Tensor x, Tensor weight, Tensor bias) {
        if (weight.dtype() == DType.QMATRIX) weight = dequantized(weight);
        float[] o = f(out), xs = f(x), w = f(weight);
        int rows = x.rows(), in = x.cols(), outF = weight.rows();
        int oo = off(out), xo = off(x), wo = off(weight);
        long work = (long) rows * in * outF;
        if (rows < PACK_MIN_ROWS) {
            int perTask = Math.max(1, (int) Math.min(outF, (1 << 16) / Math.max(1, (long) rows * in)));
            parallelFor(ceilDiv(outF, perTask), work, t -> {
                for (int j = t * perTask, e = Math.min(outF, j + perTask); j < e; j++) {
                    for (int r = 0; r < rows; r++) o[oo + r * outF + j] = kernels.dot(xs, xo + r * in, w, wo + j * in, in);
                }
            });
        } else {
            int panels = ceilDiv(outF, nr), panelSize = in * nr;
            int group = Math.max(1, Math.min(L2_FLOATS / panelSize, ceilDiv(panels, 4 * THREADS)));
            parallelFor(ceilDiv(panels, group), work, t -> {
                int p0 = t * group, p1 = Math.min(panels, p0 + group), col0 = p0 * nr;
                float[] packed = scratch(0, (p1 - p0) * panelSize);
                for (int p = p0; p < p1; p++) {
                    packTransposed(w, wo + p * nr * in, in, Math.min(nr, outF - p * nr), in, packed, (p - p0) * panelSize);
                }
                gemm(xs, xo, in, rows, in, packed, 0, panelSize, Math.min(outF, p1 * nr) - col0, o, oo + col0, outF);
            });
        }
        if (bias != null) {
            float[] b = f(bias);
            int bo = off(bias);
            for (int r = 0; r < rows; r++) kernels.add(o, oo + r * outF, b, bo, outF);
        }
    }

    /**
     * The F32 weight [out, in] of a QMATRIX tensor ({@link QMatrix#dequantize}, the reference of the kernels), kept
     * while the dequantized weights of recent matrices fit in a quarter of the heap: decoding multiplies each
     * weight once per token. Keyed by the whole struct (its array addresses and sizes), not by the tensor's
     * address alone, so a struct reused for another matrix is not mistaken for the old one.
     */
    private Tensor dequantized(Tensor w) {
        MemorySegment s = w.data().reinterpret(qtool.ffi.qt_qmatrix.sizeof());
        List<Long> key = Arrays.stream(s.toArray(ValueLayout.JAVA_LONG)).boxed().toList();
        float[] weight;
        synchronized (qmatrixCache) {
            weight = qmatrixCache.get(key);
        }
        if (weight == null) {
            weight = QMatrix.read(w).dequantize();
            synchronized (qmatrixCache) {
                qmatrixCache.put(key, weight);
                qmatrixCacheFloats += weight.length;
                var eldest = qmatrixCache.entrySet().iterator();
                while (qmatrixCacheFloats > QMATRIX_CACHE_FLOATS && qmatrixCache.size() > 1) {
                    qmatrixCacheFloats -= eldest.next().getValue().length;
                    eldest.remove();
                }
            }
        }
        return new Tensor(MemorySegment.ofArray(weight), DType.F32, w.shape());
    }

    /**
     * c[r, j] = sum_i a[r, i] * B[i, j] for r < rows, j < n, i < k, where B is packed: panel p (columns
     * p·nr ... p·nr + nr − 1) starts at b[bo + p · panelStride] and holds [k][nr]. Blocks of 4 rows (the rest one
     * by one) go across all panels, so a block's rows are read from L1 once per panel.
     */
    private void gemm(float[] a, int ao, int lda, int rows, int k, float[] b, int bo, int panelStride, int n,
                      float[] c, int co, int ldc) {
        int panels = ceilDiv(n, nr);
        for (int r = 0; r < rows; r += MR) {
            int mr = Math.min(MR, rows - r);
            for (int p = 0; p < panels; p++) {
                kernels.tile(a, ao + r * lda, lda, mr, b, bo + p * panelStride, k, c, co + r * ldc + p * nr, ldc, Math.min(nr, n - p * nr));
            }
        }
    }

    /** One panel of the transpose: dst[d + i · nr + j] = src[so + j · ld + i] for j < nc, i < k; zero for nc ≤ j < nr. */
    private void packTransposed(float[] src, int so, int ld, int nc, int k, float[] dst, int d) {
        for (int j = 0; j < nc; j++) {
            for (int i = 0, s = so + j * ld; i < k; i++) dst[d + i * nr + j] = src[s + i];
        }
        if (nc < nr) for (int i = 0; i < k; i++) Arrays.fill(dst, d + i * nr + nc, d + i * nr + nr, 0f);
    }

    @Override
    public void rope(Tensor x, int heads, int headDim, int seqLen, int startPos, Tensor invFreq) {
        float[] xs = f(x);
        int width = x.cols(), xo = off(x), half = headDim / 2;
        RopeTable table = ropeTable(f(invFreq), off(invFreq), half, startPos, seqLen);
        float[] cos = table.cos, sin = table.sin;
        forRowChunks(x.rows(), width, r -> {
            int tb = (r % seqLen) * half;
            for (int h = 0; h < heads; h++) {
                int base = xo + r * width + h * headDim;
                for (int j = 0; j < half; j++) {
                    float c = cos[tb + j], s = sin[tb + j];
                    float a = xs[base + j], b = xs[base + j + half];
                    xs[base + j] = a * c - b * s;
                    xs[base + j + half] = b * c + a * s;
                }
            }
        });
    }

    /** cos and sin of position × invFreq[j] for the positions [startPos, startPos + seqLen): [seqLen][half]. */
    private record RopeTable(float[] invFreq, int startPos, int seqLen, float[] cos, float[] sin) {}

    private RopeTable ropeTable(float[] inv, int io, int half, int startPos, int seqLen) {
        float[] freq = Arrays.copyOfRange(inv, io, io + half);
        RopeTable t = rope;
        if (t != null && t.startPos == startPos && t.seqLen == seqLen && Arrays.equals(t.invFreq, freq)) return t;
        float[] cos = new float[seqLen * half], sin = new float[seqLen * half];
        for (int p = 0; p < seqLen; p++) {
            float pos = startPos + p;
            for (int j = 0; j < half; j++) {
                float angle = pos * freq[j];
                cos[p * half + j] = (float) Math.cos(angle);
                sin[p * half + j] = (float) Math.sin(angle);
            }
        }
        return rope = new RopeTable(freq, startPos, seqLen, cos, sin);
    }

    /**
     * Stores k and v in the caches, then one task per (sequence, head, block of nr queries), all in transposed form so
     * that the block's queries are the columns of one packed panel whatever the head size: S^T = K · Q^T (positions
     * as rows, K read straight from the cache), the causal corner set to −inf, softmax down each column, then
     * O^T = V^T · P^T (V^T packed once per kv head and call). Blocks run latest first: the causal ones at the end
     * cost most, and taking them first evens out the threads' shares.
     */
    @Override
    public void attention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache,
                          int batch, int seqLen, int startPos, int heads, int kvHeads, int headDim) {
        float[] o = f(out), qs = f(q), ks = f(k), vs = f(v), kc = f(kCache), vc = f(vCache);
        int kvDim = kvHeads * headDim, qDim = heads * headDim, maxSeq = (int) kCache.shape()[1];
        int qo = off(q), ko = off(k), vo = off(v), oo = off(out), kco = off(kCache), vco = off(vCache);
        if (startPos + seqLen > maxSeq) throw new IllegalArgumentException("kv cache holds " + maxSeq + " positions");
        for (int b = 0; b < batch; b++) {
            for (int t = 0; t < seqLen; t++) {
                int src = (b * seqLen + t) * kvDim, dst = (b * maxSeq + startPos + t) * kvDim;
                System.arraycopy(ks, ko + src, kc, kco + dst, kvDim);
                System.arraycopy(vs, vo + src, vc, vco + dst, kvDim);
            }
        }
        int len = startPos + seqLen, vtSize = headDim * len;
        if (vTransposed.length < batch * kvHeads * vtSize) vTransposed = new float[batch * kvHeads * vtSize];
        float[] vt = vTransposed;
        parallelFor(batch * kvHeads, (long) batch * len * kvDim, bh -> {
            int src = vco + (bh / kvHeads * maxSeq) * kvDim + bh % kvHeads * headDim, dst = bh * vtSize;
            for (int p = 0; p < len; p++) {
                for (int d = 0; d < headDim; d++) vt[dst + d * len + p] = vc[src + p * kvDim + d];
            }
        });
        float scale = (float) (1.0 / Math.sqrt(headDim));
        int group = heads / kvHeads, blocks = ceilDiv(seqLen, nr), perBlock = batch * heads;
        long work = 2L * batch * heads * seqLen * len * headDim;
        parallelFor(blocks * perBlock, work, task -> {
            int blk = blocks - 1 - task / perBlock, b = task % perBlock / heads, h = task % heads, kvh = h / group;
            int t0 = blk * nr, nq = Math.min(nr, seqLen - t0), span = startPos + t0 + nq;
            int rowOff = qo + (b * seqLen + t0) * qDim + h * headDim;
            // scratch: Q^T [headDim][nr], S^T [span][nr], O^T [headDim][nr], column sums [nr]
            int sOff = headDim * nr, oOff = sOff + span * nr, sumOff = oOff + headDim * nr;
            float[] w = scratch(1, sumOff + nr);
            packTransposed(qs, rowOff, qDim, nq, headDim, w, 0);
            gemm(kc, kco + b * maxSeq * kvDim + kvh * headDim, kvDim, span, headDim, w, 0, 0, nr, w, sOff, nr);
            for (int p = startPos + t0 + 1; p < span; p++) {
                Arrays.fill(w, sOff + p * nr, sOff + p * nr + p - startPos - t0, Float.NEGATIVE_INFINITY); // p > query t0 + j
            }
            kernels.softmaxColumns(w, sOff, span, scale, w, sumOff);
            gemm(vt, (b * kvHeads + kvh) * vtSize, len, headDim, span, w, sOff, 0, nr, w, oOff, nr);
            int dst = oo + (b * seqLen + t0) * qDim + h * headDim;
            for (int j = 0; j < nq; j++) {
                float sum = w[sumOff + j];
                for (int d = 0; d < headDim; d++) o[dst + j * qDim + d] = w[oOff + d * nr + j] / sum;
            }
        });
    }

    @Override
    public void siluMul(Tensor out, Tensor gate, Tensor up) {
        float[] o = f(out), g = f(gate), u = f(up);
        int oo = off(out), go = off(gate), uo = off(up);
        int n = Math.toIntExact(out.numel()), chunk = 8192;
        parallelFor(ceilDiv(n, chunk), 8L * n, c -> {
            int i = c * chunk;
            kernels.siluMul(o, oo + i, g, go + i, u, uo + i, Math.min(chunk, n - i));
        });
    }

    @Override
    public void add(Tensor x, Tensor y) {
        kernels.add(f(x), off(x), f(y), off(y), Math.toIntExact(x.numel()));
    }

    @Override
    public void crossEntropy(Tensor out, Tensor logits, Tensor targets) {
        float[] o = f(out), l = f(logits);
        int[] tg = i32(targets);
        int vocab = logits.cols(), lo = off(logits), oo = off(out), to = off(targets);
        forRowChunks(logits.rows(), 8L * vocab, r -> {
            int base = lo + r * vocab;
            float max = kernels.max(l, base, vocab);
            double sum = kernels.expSum(l, base, vocab, max);
            o[oo + r] = (float) (Math.log(sum) + max - l[base + tg[to + r]]);
        });
    }

    private static int ceilDiv(int a, int b) {
        return (a + b - 1) / b;
    }

    /** This thread's scratch array {@code slot}, at least n floats (contents undefined). */
    private static float[] scratch(int slot, int n) {
        float[][] s = SCRATCH.get();
        if (s[slot].length < n) s[slot] = new float[n];
        return s[slot];
    }

    /** body(r) for every row, rows split into a few chunks per thread; {@code rowWork} is one row's cost. */
    private static void forRowChunks(int rows, long rowWork, IntConsumer body) {
        int chunk = Math.max(1, ceilDiv(rows, 4 * THREADS));
        parallelFor(ceilDiv(rows, chunk), rows * rowWork, c -> {
            for (int r = c * chunk, e = Math.min(rows, r + chunk); r < e; r++) body.accept(r);
        });
    }

    /**
     * body(0 ... n − 1), each index once. Under {@link #SERIAL_WORK} (the whole operation's work) on the calling
     * thread; otherwise the caller and up to THREADS − 1 common-pool workers take indices in order as each
     * finishes its last one, so uneven tasks still share out evenly.
     */
    static void parallelFor(int n, long work, IntConsumer body) {
        int helpers = Math.min(THREADS, n) - 1;
        if (helpers <= 0 || work < SERIAL_WORK) {
            for (int i = 0; i < n; i++) body.accept(i);
            return;
        }
        AtomicInteger next = new AtomicInteger();
        Runnable drain = () -> {
            for (int i; (i = next.getAndIncrement()) < n; ) body.accept(i);
        };
        ForkJoinTask<?>[] started = new ForkJoinTask<?>[helpers];
        for (int i = 0; i < helpers; i++) started[i] = ForkJoinPool.commonPool().submit(drain);
        try {
            drain.run();
        } finally {
            for (ForkJoinTask<?> t : started) t.join();
        }
    }

    @Override
    public void copy(Tensor dst, Tensor src) {
        MemorySegment.copy(src.data(), 0, dst.data(), 0, src.byteSize());
    }

    @Override
    public void accumulateGram(Tensor h, Tensor x) {
        float[] hs = f(h), xs = f(x);
        int rows = x.rows(), in = x.cols(), ho = off(h), xo = off(x);
        // upper triangle row by row in parallel, then mirrored: each h[i][j] sums its rows in order
        IntStream.range(0, in).parallel().forEach(i -> {
            for (int r = 0; r < rows; r++) {
                float xi = xs[xo + r * in + i];
                if (xi == 0) continue;
                int hb = ho + i * in, xb = xo + r * in;
                for (int j = i; j < in; j++) hs[hb + j] += xi * xs[xb + j];
            }
        });
        for (int i = 0; i < in; i++) for (int j = 0; j < i; j++) hs[ho + i * in + j] = hs[ho + j * in + i];
    }

    @Override
    public qtool.quantize.GptqResult gptq(Tensor weight, Tensor hessian, qtool.quantize.GptqParams params) {
        float[] w = f(weight), h = f(hessian);
        if (off(weight) != 0 || off(hessian) != 0) throw new IllegalArgumentException("gptq takes whole tensors");
        return qtool.quantize.Gptq.quantize(w, weight.rows(), weight.cols(), h, params);
    }

    @Override
    public qtool.quantize.Exl2Gptq.Factor exl2Prepare(Tensor hessian) {
        if (off(hessian) != 0) throw new IllegalArgumentException("exl2Prepare takes a whole tensor");
        return qtool.quantize.Exl2Gptq.prepare(f(hessian), hessian.rows());
    }

    @Override
    public qtool.quantize.Exl2Tensor exl2Quantize(qtool.quantize.Exl2Gptq.Factor factor, Tensor weight,
                                                  qtool.quantize.Exl2Params params) {
        if (!(factor instanceof qtool.quantize.Exl2Gptq.Prepared prepared)) {
            throw new IllegalArgumentException("exl2Quantize: the factor comes from another backend");
        }
        if (off(weight) != 0) throw new IllegalArgumentException("exl2Quantize takes a whole tensor");
        if (weight.cols() != prepared.in()) {
            throw new IllegalArgumentException("exl2Quantize: weight has " + weight.cols() + " inputs, the factor " + prepared.in());
        }
        return qtool.quantize.Exl2Gptq.quantize(prepared, f(weight), weight.rows(), params);
    }

    @Override
    public float[] awqClip(Tensor weight, Tensor x, qtool.quantize.AwqParams params, boolean asymmetric) {
        if (off(weight) != 0 || off(x) != 0) throw new IllegalArgumentException("awqClip takes whole tensors");
        return qtool.quantize.Awq.searchClip(f(weight), weight.rows(), weight.cols(), f(x), x.rows(), params, asymmetric);
    }

    @Override
    public void synchronize() {
        // synchronous
    }

    @Override
    public void close() {
    }
}
