package qtool.backend;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.stream.IntStream;
import qtool.load.DType;

/**
 * The model's arithmetic in plain Java: the fallback on machines without a GPU and the reference the CUDA backend
 * is tested against. Every tensor it owns is a heap {@code float[]} (or {@code int[]}) wrapped as a segment: plain
 * arrays let the JIT unroll and bounds-check-eliminate the inner loops, which mapped segments do not. Weights are
 * therefore converted to F32 arrays on {@link #upload}. Work is split over rows with parallel streams.
 */
public final class CpuBackend implements Backend {

    @Override
    public String name() {
        return "cpu";
    }

    @Override
    public String description() {
        return "cpu (" + Runtime.getRuntime().availableProcessors() + " threads, Java " + Runtime.version().feature() + ")";
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
        int dim = x.cols(), oo = off(out), xo = off(x), wo = off(weight);
        IntStream.range(0, x.rows()).parallel().forEach(r -> {
            int base = xo + r * dim;
            float ss = 0;
            for (int i = 0; i < dim; i++) ss += xs[base + i] * xs[base + i];
            float inv = (float) (1.0 / Math.sqrt(ss / dim + eps));
            int ob = oo + r * dim;
            for (int i = 0; i < dim; i++) o[ob + i] = w[wo + i] * (xs[base + i] * inv);
        });
    }

    @Override
    public void linear(Tensor out, Tensor x, Tensor weight, Tensor bias) {
        float[] o = f(out), xs = f(x), w = f(weight);
        float[] b = bias == null ? null : f(bias);
        int rows = x.rows(), in = x.cols(), outF = weight.rows();
        int oo = off(out), xo = off(x), wo = off(weight), bo = bias == null ? 0 : off(bias);
        // Parallel over blocks of output features; within a block each weight row is read once per 4 input rows.
        int block = Math.max(1, Math.min(64, outF / (4 * Runtime.getRuntime().availableProcessors()) + 1));
        IntStream.range(0, (outF + block - 1) / block).parallel().forEach(blk -> {
            int o0 = blk * block, o1 = Math.min(outF, o0 + block);
            for (int r = 0; r < rows; r += 4) {
                int nr = Math.min(4, rows - r);
                for (int j = o0; j < o1; j++) {
                    int wb = wo + j * in;
                    float bj = b == null ? 0 : b[bo + j];
                    if (nr == 4) {
                        int x0 = xo + r * in, x1 = x0 + in, x2 = x1 + in, x3 = x2 + in;
                        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                        for (int i = 0; i < in; i++) {
                            float wv = w[wb + i];
                            s0 += xs[x0 + i] * wv;
                            s1 += xs[x1 + i] * wv;
                            s2 += xs[x2 + i] * wv;
                            s3 += xs[x3 + i] * wv;
                        }
                        o[oo + r * outF + j] = s0 + bj;
                        o[oo + (r + 1) * outF + j] = s1 + bj;
                        o[oo + (r + 2) * outF + j] = s2 + bj;
                        o[oo + (r + 3) * outF + j] = s3 + bj;
                    } else {
                        for (int k = 0; k < nr; k++) o[oo + (r + k) * outF + j] = dot(xs, xo + (r + k) * in, w, wb, in) + bj;
                    }
                }
            }
        });
    }

    /** Dot product with four independent partial sums (the JIT keeps float adds in order, so split the chain). */
    static float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 3 < n; i += 4) {
            s0 += a[ao + i] * b[bo + i];
            s1 += a[ao + i + 1] * b[bo + i + 1];
            s2 += a[ao + i + 2] * b[bo + i + 2];
            s3 += a[ao + i + 3] * b[bo + i + 3];
        }
        for (; i < n; i++) s0 += a[ao + i] * b[bo + i];
        return (s0 + s1) + (s2 + s3);
    }

    @Override
    public void rope(Tensor x, int heads, int headDim, int seqLen, int startPos, Tensor invFreq) {
        float[] xs = f(x), inv = f(invFreq);
        int width = x.cols(), xo = off(x), io = off(invFreq), half = headDim / 2;
        IntStream.range(0, x.rows()).parallel().forEach(r -> {
            float pos = startPos + r % seqLen;
            for (int j = 0; j < half; j++) {
                float angle = pos * inv[io + j];
                float c = (float) Math.cos(angle), s = (float) Math.sin(angle);
                for (int h = 0; h < heads; h++) {
                    int base = xo + r * width + h * headDim;
                    float a = xs[base + j], b = xs[base + j + half];
                    xs[base + j] = a * c - b * s;
                    xs[base + j + half] = b * c + a * s;
                }
            }
        });
    }

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
        float scale = (float) (1.0 / Math.sqrt(headDim));
        int group = heads / kvHeads;
        IntStream.range(0, batch * seqLen * heads).parallel().forEach(task -> {
            int h = task % heads, row = task / heads, b = row / seqLen, t = row % seqLen;
            int kvh = h / group, len = startPos + t + 1;
            int qBase = qo + row * qDim + h * headDim;
            float[] scores = new float[len];
            float max = Float.NEGATIVE_INFINITY;
            for (int p = 0; p < len; p++) {
                float s = dot(qs, qBase, kc, kco + (b * maxSeq + p) * kvDim + kvh * headDim, headDim) * scale;
                scores[p] = s;
                if (s > max) max = s;
            }
            float sum = 0;
            for (int p = 0; p < len; p++) {
                scores[p] = (float) Math.exp(scores[p] - max);
                sum += scores[p];
            }
            int oBase = oo + row * qDim + h * headDim;
            java.util.Arrays.fill(o, oBase, oBase + headDim, 0f);
            for (int p = 0; p < len; p++) {
                float wgt = scores[p] / sum;
                int vb = vco + (b * maxSeq + p) * kvDim + kvh * headDim;
                for (int d = 0; d < headDim; d++) o[oBase + d] += wgt * vc[vb + d];
            }
        });
    }

    @Override
    public void siluMul(Tensor out, Tensor gate, Tensor up) {
        float[] o = f(out), g = f(gate), u = f(up);
        int oo = off(out), go = off(gate), uo = off(up);
        int n = Math.toIntExact(out.numel());
        IntStream.range(0, (n + 4095) / 4096).parallel().forEach(c -> {
            for (int i = c * 4096, e = Math.min(n, i + 4096); i < e; i++) {
                float x = g[go + i];
                o[oo + i] = x / (1f + (float) Math.exp(-x)) * u[uo + i];
            }
        });
    }

    @Override
    public void add(Tensor x, Tensor y) {
        float[] a = f(x), b = f(y);
        int ao = off(x), bo = off(y), n = Math.toIntExact(x.numel());
        for (int i = 0; i < n; i++) a[ao + i] += b[bo + i];
    }

    @Override
    public void crossEntropy(Tensor out, Tensor logits, Tensor targets) {
        float[] o = f(out), l = f(logits);
        int[] tg = i32(targets);
        int vocab = logits.cols(), lo = off(logits), oo = off(out), to = off(targets);
        IntStream.range(0, logits.rows()).parallel().forEach(r -> {
            int base = lo + r * vocab;
            float max = Float.NEGATIVE_INFINITY;
            for (int i = 0; i < vocab; i++) max = Math.max(max, l[base + i]);
            double sum = 0;
            for (int i = 0; i < vocab; i++) sum += Math.exp(l[base + i] - max);
            o[oo + r] = (float) (Math.log(sum) + max - l[base + tg[to + r]]);
        });
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
    public void synchronize() {
        // synchronous
    }

    @Override
    public void close() {
    }
}
