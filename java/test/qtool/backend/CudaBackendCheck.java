package qtool.backend;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.IntStream;
import qtool.load.DType;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;
import qtool.quantize.Gptq;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.GptqTestData;

/**
 * {@link CudaBackend} through Java against double-precision references on random inputs: the bindings, the
 * argument plumbing (shapes, dtypes, heap and native host memory, row slices, scratch growth) and each kernel.
 * The kernels' own accuracy is tested more widely by native/test/test_kernels; this checks the Java side.
 *
 * <p>Runs from {@link CudaBackendTest} when a GPU answers, or standalone where JUnit is absent (the GPU host):
 * {@code java --enable-native-access=ALL-UNNAMED -cp target/classes:target/test-classes qtool.backend.CudaBackendCheck
 * [seed] [--no-bench | --bench-only | --quantized]}; standalone it also prints timings of the Gram accumulation and of
 * GPTQ at LLM sizes. {@code --quantized} runs only the quantized linears (QMatrix) and decoding (decodeAttention, CUDA
 * graph replay), with their GEMV timings unless {@code --no-bench}.
 *
 * <p>GPTQ is checked against {@link Gptq} (the CPU reference) on the same Hessian: the permutation, g_idx and damping
 * exactly, the codes to 99 %, the proxy error ‖(W − Q)Xᵀ‖² and the loss to 0.5 %, and the result's own consistency
 * (dequantized = scales · (codes − zeros), exactly).
 */
public final class CudaBackendCheck {
    public record Result(String name, double error, double limit) {
        public boolean pass() {
            return error <= limit;
        }
    }

    private final CudaBackend gpu;
    private final Random random;
    private final List<Result> results = new ArrayList<>();

    public CudaBackendCheck(CudaBackend gpu, long seed) {
        this.gpu = gpu;
        this.random = new Random(seed);
    }

    public static void main(String[] args) {
        boolean bench = !List.of(args).contains("--no-bench"), benchOnly = List.of(args).contains("--bench-only");
        boolean quantized = List.of(args).contains("--quantized");
        long seed = args.length > 0 && !args[0].startsWith("--") ? Long.parseLong(args[0]) : System.nanoTime();
        try (Backend backend = Backends.open("cuda", System.out)) {
            CudaBackend gpu = (CudaBackend) backend;
            if (benchOnly) {
                new CudaBackendCheck(gpu, seed + 1).timings();
                return;
            }
            System.out.printf("seed %d; device copy %.1f GB/s%n", seed, gpu.copyBandwidthGBps());
            CudaBackendCheck check = new CudaBackendCheck(gpu, seed);
            List<Result> results = quantized ? check.runQuantized() : check.runAll();
            int failed = 0;
            for (Result r : results) {
                System.out.printf("  %-44s %10.3e  limit %7.1e  %s%n", r.name(), r.error(), r.limit(), r.pass() ? "PASS" : "FAIL");
                if (!r.pass()) failed++;
            }
            System.out.printf("java CudaBackend: %d checks, %d failed%n", results.size(), failed);
            if (bench && quantized) new CudaBackendCheck(gpu, seed + 1).qmatrixGemvTimings();
            else if (bench) new CudaBackendCheck(gpu, seed + 1).timings();
            System.exit(failed == 0 ? 0 : 1);
        }
    }

    public List<Result> runAll() {
        embeddingFromBf16Upload();
        rmsNormOnRowSlice();
        linear(DType.F32, 1e-5);
        linear(DType.BF16, 1e-2);
        linear(DType.F16, 1e-2);
        ropeAndAttention();
        halfActivations(DType.F16, 2e-3, 1e-2);
        halfActivations(DType.BF16, 1.5e-2, 3e-2);
        linearAddF32();
        siluMulAddCrossEntropy();
        uploadFromNativeMemory();
        gram();
        gptqAgainstCpu();
        exl2AgainstCpu();
        awqClipAgainstCpu();
        List<Result> quantized = runQuantized();
        gptqV1Zeros();  // last: its random draws leave the earlier checks' data as it was
        return quantized;
    }

    /** Quantized linears and decoding only. */
    public List<Result> runQuantized() {
        qmatrixKernels();
        decodeAndGraph();
        return results;
    }

    // ---- checks --------------------------------------------------------------------------------------------------

    private void embeddingFromBf16Upload() {
        int vocab = 300, dim = 72, rows = 9;
        float[] table = randn(vocab * dim);
        int[] ids = new int[rows];
        for (int i = 0; i < rows; i++) ids[i] = random.nextInt(vocab);
        Tensor t = gpu.upload(host(table, vocab, dim), DType.BF16);  // converted on the GPU
        Tensor idt = gpu.upload(new Tensor(MemorySegment.ofArray(ids), DType.I32, new long[] {rows}), DType.I32);
        Tensor out = gpu.allocate(DType.F32, rows, dim);
        gpu.embedding(out, t, idt);
        double[] ref = new double[rows * dim];
        for (int r = 0; r < rows; r++) for (int j = 0; j < dim; j++) ref[r * dim + j] = bf16(table[ids[r] * dim + j]);
        record("embedding (BF16 upload)", relL2(download(out), ref), 0);
        gpu.free(t);
        gpu.free(idt);
        gpu.free(out);
    }

    private void rmsNormOnRowSlice() {
        int rows = 6, cols = 576;
        float[] x = randn(rows * cols), w = randn(cols);
        Tensor dx = gpu.upload(host(x, rows, cols), DType.F32), dw = gpu.upload(host(w, cols), DType.F32);
        Tensor out = gpu.allocate(DType.F32, rows, cols);
        gpu.copyFromHost(MemorySegment.ofArray(new float[rows * cols]), out);
        gpu.rmsNorm(out.rowSlice(2, 3), dx.rowSlice(2, 3), dw, 1e-6f);  // rows 2..4 only: device pointer slices
        float[] got = download(out);
        double[] ref = new double[rows * cols];
        for (int r = 2; r < 5; r++) {
            double ss = 0;
            for (int j = 0; j < cols; j++) ss += (double) x[r * cols + j] * x[r * cols + j];
            double inv = 1 / Math.sqrt(ss / cols + 1e-6);
            for (int j = 0; j < cols; j++) ref[r * cols + j] = x[r * cols + j] * inv * w[j];
        }
        record("rmsNorm on row slices", relL2(got, ref), 1e-6);
        gpu.free(dx);
        gpu.free(dw);
        gpu.free(out);
    }

    private void linear(DType weightType, double limit) {
        int rows = 5, in = 256, outF = 320;
        float[] x = randn(rows * in), w = randn(outF * in), b = randn(outF);
        Tensor dx = gpu.upload(host(x, rows, in), DType.F32);
        Tensor dw = gpu.upload(host(w, outF, in), weightType);
        Tensor db = gpu.upload(host(b, outF), DType.F32);
        Tensor out = gpu.allocate(DType.F32, rows, outF);
        // Twice, the second with more rows than the first: the scratch buffer grows in between.
        gpu.linear(out.rowSlice(0, 1), dx.rowSlice(0, 1), dw, db);
        gpu.linear(out, dx, dw, db);
        double[] ref = new double[rows * outF];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++) {
                double acc = b[o];
                for (int i = 0; i < in; i++) acc += (double) x[r * in + i] * rounded(w[o * in + i], weightType);
                ref[r * outF + o] = acc;
            }
        record("linear " + weightType + " + bias", relL2(download(out), ref), limit);
        gpu.free(dx);
        gpu.free(dw);
        gpu.free(db);
        gpu.free(out);
    }

    private void ropeAndAttention() {
        int batch = 2, heads = 4, kvHeads = 2, headDim = 16, seq = 11, maxSeq = 16;
        int qw = heads * headDim, kw = kvHeads * headDim;
        float[] inv = new float[headDim / 2];
        for (int j = 0; j < inv.length; j++) inv[j] = (float) (1.0 / Math.pow(10000, 2.0 * j / headDim));
        Tensor dinv = gpu.upload(host(inv, inv.length), DType.F32);
        Tensor kc = gpu.allocate(DType.F32, batch, maxSeq, kw), vc = gpu.allocate(DType.F32, batch, maxSeq, kw);
        double[][] refK = new double[batch * maxSeq][], refV = new double[batch * maxSeq][];
        int start = 0;
        for (int len : new int[] {seq, 1}) {
            float[] q = randn(batch * len * qw), k = randn(batch * len * kw), v = randn(batch * len * kw);
            Tensor dq = gpu.upload(host(q, batch * len, qw), DType.F32), dk = gpu.upload(host(k, batch * len, kw), DType.F32);
            Tensor dv = gpu.upload(host(v, batch * len, kw), DType.F32);
            gpu.rope(dq, heads, headDim, len, start, dinv);
            gpu.rope(dk, kvHeads, headDim, len, start, dinv);
            double[] qr = ropeRef(q, batch * len, heads, headDim, len, start, inv);
            double[] kr = ropeRef(k, batch * len, kvHeads, headDim, len, start, inv);
            record("rope s" + len + "@" + start, relL2(download(dq), qr), 1e-6);
            Tensor out = gpu.allocate(DType.F32, batch * len, qw);
            gpu.attention(out, dq, dk, dv, kc, vc, batch, len, start, heads, kvHeads, headDim);
            // Reference on the rotated values (as float, like the GPU's), with its own cache.
            double[] ref = new double[batch * len * qw];
            for (int bb = 0; bb < batch; bb++)
                for (int s = 0; s < len; s++) {
                    double[] kRow = new double[kw], vRow = new double[kw];
                    for (int c = 0; c < kw; c++) {
                        kRow[c] = (float) kr[(bb * len + s) * kw + c];
                        vRow[c] = v[(bb * len + s) * kw + c];
                    }
                    refK[bb * maxSeq + start + s] = kRow;
                    refV[bb * maxSeq + start + s] = vRow;
                }
            for (int bb = 0; bb < batch; bb++)
                for (int s = 0; s < len; s++)
                    for (int h = 0; h < heads; h++) {
                        int p = start + s, kvh = h / (heads / kvHeads), qb = (bb * len + s) * qw + h * headDim;
                        double[] sc = new double[p + 1];
                        double max = Double.NEGATIVE_INFINITY, sum = 0;
                        for (int t = 0; t <= p; t++) {
                            double dot = 0;
                            for (int d = 0; d < headDim; d++) dot += (float) qr[qb + d] * refK[bb * maxSeq + t][kvh * headDim + d];
                            sc[t] = dot / Math.sqrt(headDim);
                            max = Math.max(max, sc[t]);
                        }
                        for (int t = 0; t <= p; t++) sum += sc[t] = Math.exp(sc[t] - max);
                        for (int t = 0; t <= p; t++)
                            for (int d = 0; d < headDim; d++) ref[qb + d] += sc[t] / sum * refV[bb * maxSeq + t][kvh * headDim + d];
                    }
            record("attention GQA s" + len + "@" + start, relL2(download(out), ref), 1e-5);
            for (Tensor t : new Tensor[] {dq, dk, dv, out}) gpu.free(t);
            start += len;
        }
        gpu.free(dinv);
        gpu.free(kc);
        gpu.free(vc);
    }

    /**
     * The fp16 path's operations with 16-bit activations as Forward runs them: rmsNorm to 16 bits, 16-bit linears
     * (16-bit and F32 out, the accumulating one), rope, attention over a 16-bit cache (prefill, then a decode step),
     * siluMul. Inputs are rounded to the type first, so the references see what the GPU sees.
     */
    private void halfActivations(DType t, double attentionLimit, double limit) {
        if (gpu.activationType(t, 16) != t) throw new AssertionError("activationType(" + t + ", 16) = " + gpu.activationType(t, 16));
        if (gpu.activationType(t, 12) != DType.F32 || gpu.activationType(DType.F32, 16) != DType.F32) {
            throw new AssertionError("activationType must fall back to F32");
        }
        int rows = 7, hid = 64, outF = 96;
        float[] x = randn(rows * hid), nw = randn(hid), w = randn(outF * hid), bias = randn(outF), res = randn(rows * outF);
        Tensor dx = gpu.upload(host(x, rows, hid), DType.F32), dnw = gpu.upload(host(nw, hid), DType.F32);
        Tensor dw = gpu.upload(host(w, outF, hid), t), db = gpu.upload(host(bias, outF), DType.F32);
        Tensor n = gpu.allocate(t, rows, hid);
        gpu.rmsNorm(n, dx, dnw, 1e-6f);
        float[] nGot = downloadAny(n);
        double[] nRef = new double[rows * hid];
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int j = 0; j < hid; j++) ss += (double) x[r * hid + j] * x[r * hid + j];
            double inv = 1 / Math.sqrt(ss / hid + 1e-6);
            for (int j = 0; j < hid; j++) nRef[r * hid + j] = x[r * hid + j] * inv * nw[j];
        }
        record("rmsNorm F32 -> " + t, relL2(nGot, nRef), t == DType.F16 ? 1e-3 : 1e-2);
        // linear: 16-bit x (the values just read back) to 16-bit and to F32 out; linearAdd into an F32 residual.
        double[] lin = new double[rows * outF];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++) {
                double acc = bias[o];
                for (int i = 0; i < hid; i++) acc += (double) nGot[r * hid + i] * rounded(w[o * hid + i], t);
                lin[r * outF + o] = acc;
            }
        Tensor o16 = gpu.allocate(t, rows, outF), o32 = gpu.upload(host(res, rows, outF), DType.F32);
        gpu.linear(o16, n, dw, db);
        record("linear " + t + " x -> " + t + " + bias", relL2(downloadAny(o16), lin), limit);
        gpu.linearAdd(o32, n, dw, db);
        double[] acc = new double[rows * outF];
        for (int i = 0; i < acc.length; i++) acc[i] = lin[i] + res[i];
        record("linearAdd " + t + " x += F32 + bias", relL2(download(o32), acc), 1e-5);
        for (Tensor tt : new Tensor[] {dx, dnw, dw, db, n, o16, o32}) gpu.free(tt);

        // rope + attention, GQA, 16-bit caches: a prefill of 70 positions (two 64-key tiles), then one decode step.
        int batch = 2, heads = 4, kvHeads = 2, headDim = 16, maxSeq = 80;
        int qw = heads * headDim, kw = kvHeads * headDim;
        float[] inv = new float[headDim / 2];
        for (int j = 0; j < inv.length; j++) inv[j] = (float) (1.0 / Math.pow(10000, 2.0 * j / headDim));
        Tensor dinv = gpu.upload(host(inv, inv.length), DType.F32);
        Tensor kc = gpu.allocate(t, batch, maxSeq, kw), vc = gpu.allocate(t, batch, maxSeq, kw);
        double[][] refK = new double[batch * maxSeq][], refV = new double[batch * maxSeq][];
        int start = 0;
        for (int len : new int[] {70, 1}) {
            float[] q = roundAll(randn(batch * len * qw), t), k = roundAll(randn(batch * len * kw), t), v = roundAll(randn(batch * len * kw), t);
            Tensor dq = gpu.upload(host(q, batch * len, qw), t), dk = gpu.upload(host(k, batch * len, kw), t);
            Tensor dv = gpu.upload(host(v, batch * len, kw), t);
            gpu.rope(dq, heads, headDim, len, start, dinv);
            gpu.rope(dk, kvHeads, headDim, len, start, dinv);
            float[] qGot = downloadAny(dq), kGot = downloadAny(dk);
            record("rope " + t + " s" + len + "@" + start, relL2(qGot, ropeRef(q, batch * len, heads, headDim, len, start, inv)),
                    t == DType.F16 ? 1e-3 : 1e-2);
            Tensor out = gpu.allocate(t, batch * len, qw);
            gpu.attention(out, dq, dk, dv, kc, vc, batch, len, start, heads, kvHeads, headDim);
            for (int bb = 0; bb < batch; bb++)
                for (int s = 0; s < len; s++) {
                    double[] kRow = new double[kw], vRow = new double[kw];
                    for (int c = 0; c < kw; c++) {
                        kRow[c] = kGot[(bb * len + s) * kw + c];
                        vRow[c] = v[(bb * len + s) * kw + c];
                    }
                    refK[bb * maxSeq + start + s] = kRow;
                    refV[bb * maxSeq + start + s] = vRow;
                }
            double[] ref = attentionRef(qGot, refK, refV, batch, len, start, heads, kvHeads, headDim, maxSeq);
            record("attention " + t + " GQA s" + len + "@" + start, relL2(downloadAny(out), ref), attentionLimit);
            for (Tensor tt : new Tensor[] {dq, dk, dv, out}) gpu.free(tt);
            start += len;
        }
        gpu.free(dinv);
        gpu.free(kc);
        gpu.free(vc);

        int m = 1000;
        float[] g = roundAll(randn(m), t), u = roundAll(randn(m), t);
        Tensor dg = gpu.upload(host(g, 1, m), t), du = gpu.upload(host(u, 1, m), t);
        gpu.siluMul(dg, dg, du);
        double[] sref = new double[m];
        for (int i = 0; i < m; i++) sref[i] = g[i] / (1 + Math.exp(-g[i])) * u[i];
        record("siluMul " + t + " in place", relL2(downloadAny(dg), sref), t == DType.F16 ? 1e-3 : 1e-2);
        gpu.free(dg);
        gpu.free(du);
    }

    /** The fp32 path's fused residual: F32 x, F32 weight, out += x W^T (SGEMM with beta = 1). */
    private void linearAddF32() {
        int rows = 4, in = 128, outF = 48;
        float[] x = randn(rows * in), w = randn(outF * in), res = randn(rows * outF);
        Tensor dx = gpu.upload(host(x, rows, in), DType.F32), dw = gpu.upload(host(w, outF, in), DType.F32);
        Tensor out = gpu.upload(host(res, rows, outF), DType.F32);
        gpu.linearAdd(out, dx, dw, null);
        double[] ref = new double[rows * outF];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++) {
                double acc = res[r * outF + o];
                for (int i = 0; i < in; i++) acc += (double) x[r * in + i] * w[o * in + i];
                ref[r * outF + o] = acc;
            }
        record("linearAdd F32", relL2(download(out), ref), 1e-5);
        for (Tensor tt : new Tensor[] {dx, dw, out}) gpu.free(tt);
    }

    private static double[] attentionRef(float[] q, double[][] refK, double[][] refV, int batch, int len, int start, int heads,
                                         int kvHeads, int headDim, int maxSeq) {
        int qw = heads * headDim;
        double[] ref = new double[batch * len * qw];
        for (int bb = 0; bb < batch; bb++)
            for (int s = 0; s < len; s++)
                for (int h = 0; h < heads; h++) {
                    int p = start + s, kvh = h / (heads / kvHeads), qb = (bb * len + s) * qw + h * headDim;
                    double[] sc = new double[p + 1];
                    double max = Double.NEGATIVE_INFINITY, sum = 0;
                    for (int tt = 0; tt <= p; tt++) {
                        double dot = 0;
                        for (int d = 0; d < headDim; d++) dot += q[qb + d] * refK[bb * maxSeq + tt][kvh * headDim + d];
                        sc[tt] = dot / Math.sqrt(headDim);
                        max = Math.max(max, sc[tt]);
                    }
                    for (int tt = 0; tt <= p; tt++) sum += sc[tt] = Math.exp(sc[tt] - max);
                    for (int tt = 0; tt <= p; tt++)
                        for (int d = 0; d < headDim; d++) ref[qb + d] += sc[tt] / sum * refV[bb * maxSeq + tt][kvh * headDim + d];
                }
        return ref;
    }

    private void siluMulAddCrossEntropy() {
        int rows = 3, vocab = 5000;
        float[] g = randn(rows * vocab), u = randn(rows * vocab);
        Tensor dg = gpu.upload(host(g, rows, vocab), DType.F32), du = gpu.upload(host(u, rows, vocab), DType.F32);
        gpu.siluMul(dg, dg, du);  // in place
        gpu.add(dg, du);
        double[] ref = new double[rows * vocab];
        for (int i = 0; i < ref.length; i++) ref[i] = g[i] / (1 + Math.exp(-g[i])) * u[i] + u[i];
        float[] logits = download(dg);
        record("siluMul in place, add", relL2(logits, ref), 1e-6);
        int[] targets = {0, vocab - 1, 1234};
        Tensor dt = gpu.upload(new Tensor(MemorySegment.ofArray(targets), DType.I32, new long[] {rows}), DType.I32);
        Tensor loss = gpu.allocate(DType.F32, rows);
        gpu.crossEntropy(loss, dg, dt);
        double[] lref = new double[rows];
        for (int r = 0; r < rows; r++) {
            double max = Double.NEGATIVE_INFINITY, sum = 0;
            for (int j = 0; j < vocab; j++) max = Math.max(max, logits[r * vocab + j]);
            for (int j = 0; j < vocab; j++) sum += Math.exp(logits[r * vocab + j] - max);
            lref[r] = max + Math.log(sum) - logits[r * vocab + targets[r]];
        }
        record("crossEntropy", relL2(download(loss), lref), 1e-6);
        for (Tensor t : new Tensor[] {dg, du, dt, loss}) gpu.free(t);
    }

    /** Native (off-heap) host memory, as a mapped weight file gives, uploaded as F16, read back into native memory. */
    private void uploadFromNativeMemory() {
        int n = 40_000;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocate(4L * n, 64);
            double[] ref = new double[n];
            for (int i = 0; i < n; i++) {
                float v = (float) random.nextGaussian();
                src.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
                ref[i] = Float.float16ToFloat(Float.floatToFloat16(v));
            }
            Tensor half = gpu.upload(new Tensor(src, DType.F32, new long[] {n}), DType.F16);
            Tensor back = gpu.upload(half, DType.F32);  // device to device, converting
            MemorySegment dst = arena.allocate(4L * n, 64);
            gpu.copyToHost(back, dst);
            float[] got = new float[n];
            MemorySegment.copy(dst, ValueLayout.JAVA_FLOAT, 0, got, 0, n);
            record("upload native F32 as F16, back to F32", relL2(got, ref), 0);
            gpu.free(half);
            gpu.free(back);
        }
    }

    // ---- quantization ------------------------------------------------------------------------------------------

    /** Two accumulations (the second on a row slice) against a float64 reference; the result must be symmetric. */
    private void gram() {
        int rows = 300, in = 200;
        float[] x = randn(rows * in);
        Tensor dx = gpu.upload(host(x, rows, in), DType.F32);
        Tensor h = gpu.upload(host(new float[in * in], in, in), DType.F32);
        gpu.accumulateGram(h, dx);
        gpu.accumulateGram(h, dx.rowSlice(100, 150));
        double[] ref = new double[in * in];
        for (int r = 0; r < rows; r++) {
            int times = r >= 100 && r < 250 ? 2 : 1;
            for (int i = 0; i < in; i++)
                for (int j = 0; j < in; j++) ref[i * in + j] += times * (double) x[r * in + i] * x[r * in + j];
        }
        float[] got = download(h);
        record("accumulateGram twice (+ row slice)", relL2(got, ref), 1e-6);
        double asym = 0;
        for (int i = 0; i < in; i++) for (int j = 0; j < i; j++) asym = Math.max(asym, Math.abs(got[i * in + j] - got[j * in + i]));
        record("accumulateGram symmetric", asym, 0);
        gpu.free(dx);
        gpu.free(h);
    }

    /** One GPTQ setting on a random layer: out × in weights, a Hessian from `rows` correlated inputs. */
    private record GptqCase(String name, int out, int in, int rows, GptqParams params, int deadColumns, double codeLimit) {}

    private void gptqAgainstCpu() {
        GptqParams base = GptqParams.of(4);
        List<GptqCase> cases = List.of(
                new GptqCase("4b g128 sym act", 192, 512, 1024, base.withActOrder(true), 0, 0.01),
                new GptqCase("4b g128 asym", 192, 512, 1024, base.withSym(false), 0, 0.01),
                new GptqCase("3b g32 asym act", 192, 512, 1024, base.withBits(3).withGroupSize(32).withSym(false).withActOrder(true), 0, 0.01),
                new GptqCase("2b g128 sym act static", 192, 512, 1024, base.withBits(2).withActOrder(true).withStaticGroups(true), 0, 0.01),
                new GptqCase("2b g32 asym act", 192, 512, 1024, base.withBits(2).withGroupSize(32).withSym(false).withActOrder(true), 0, 0.01),
                new GptqCase("3b g32 sym static", 192, 512, 1024, base.withBits(3).withGroupSize(32).withStaticGroups(true), 0, 0.01),
                new GptqCase("8b g-1 sym act", 192, 512, 1024, base.withBits(8).withGroupSize(-1).withActOrder(true), 0, 0.01),
                new GptqCase("4b g-1 asym", 192, 512, 1024, base.withGroupSize(-1).withSym(false), 0, 0.01),
                new GptqCase("4b g128 sym act mse", 192, 512, 1024, base.withActOrder(true).withMse(true), 0, 0.01),
                new GptqCase("3b g128 asym mse static", 192, 512, 1024, base.withBits(3).withSym(false).withMse(true).withStaticGroups(true), 0, 0.01),
                new GptqCase("4b g64 block32 asym act", 192, 512, 1024, base.withGroupSize(64).withBlockSize(32).withSym(false).withActOrder(true), 0, 0.01),
                new GptqCase("4b g48 ragged asym act", 150, 500, 1024, base.withGroupSize(48).withSym(false).withActOrder(true), 0, 0.01),
                new GptqCase("4b g128 act, 7 dead inputs", 192, 512, 1024, base.withActOrder(true), 7, 0.01),
                new GptqCase("4b g128 act damp0 rank-deficient", 128, 512, 128, base.withActOrder(true).withDamp(0), 0, 0.05),
                new GptqCase("4b g128 sym act 1024x4096", 1024, 4096, 4096, base.withActOrder(true), 0, 0.01));
        for (GptqCase c : cases) {
            try {
                gptqCase(c);
            } catch (RuntimeException e) {
                System.out.println("gptq " + c.name() + ": " + e);
                e.printStackTrace(System.out);
                record("gptq " + c.name() + ": threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
            }
        }
    }

    /** GPTQ with zero points kept ≥ 1 for v1 checkpoints ({@link GptqParams#v1Zeros}), against the CPU. */
    private void gptqV1Zeros() {
        GptqParams base = GptqParams.of(4).withSym(false).withV1Zeros(true);
        for (GptqCase c : List.of(new GptqCase("4b g128 asym act v1 zeros", 192, 512, 1024, base.withActOrder(true), 0, 0.01),
                new GptqCase("3b g32 asym mse static v1 zeros", 192, 512, 1024, base.withBits(3).withGroupSize(32).withMse(true).withStaticGroups(true), 0, 0.01))) {
            try {
                gptqCase(c);
            } catch (RuntimeException e) {
                e.printStackTrace(System.out);
                record("gptq " + c.name() + " threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
            }
        }
    }

    private void gptqCase(GptqCase c) {
        int out = c.out(), in = c.in();
        Tensor x = correlatedInputsOnGpu(c.rows(), in, c.deadColumns());
        Tensor h = gpu.upload(host(new float[in * in], in, in), DType.F32);
        gpu.accumulateGram(h, x);
        float[] hh = download(h);
        float[] w = GptqTestData.weights(out, in, random.nextLong());
        Tensor dw = gpu.upload(host(w, out, in), DType.F32);

        GptqResult cpu = Gptq.quantize(w, out, in, hh, c.params());
        GptqResult got = gpu.gptq(dw, h, c.params());
        String n = "gptq " + c.name() + " ";

        record(n + "perm", mismatches(got.perm(), cpu.perm()), 0);
        record(n + "g_idx", mismatches(got.gIdx(), cpu.gIdx()), 0);
        record(n + "damp, retries", Math.abs(got.damp() - cpu.damp()) + Math.abs(got.dampRetries() - cpu.dampRetries()), 0);
        int same = 0;
        for (int k = 0; k < out * in; k++) if (got.codes()[k] == cpu.codes()[k]) same++;
        record(n + "codes differing", 1 - (double) same / (out * in), c.codeLimit());
        float[] fromCodes = got.dequantizeFromCodes();
        double inconsistent = 0;
        for (int k = 0; k < out * in; k++) inconsistent = Math.max(inconsistent, Math.abs(fromCodes[k] - got.dequantized()[k]));
        record(n + "dequantized = codes", inconsistent, 0);
        double gpuProxy = proxyError(w, got.dequantized(), x, out, in), cpuProxy = proxyError(w, cpu.dequantized(), x, out, in);
        record(n + "proxy error vs CPU", Math.abs(gpuProxy / cpuProxy - 1), 0.005);
        record(n + "loss vs CPU", Math.abs(got.loss() / cpu.loss() - 1), 0.005);
        double[] refScales = new double[cpu.scales().length];
        for (int k = 0; k < refScales.length; k++) refScales[k] = cpu.scales()[k];
        record(n + "scales", relL2(got.scales(), refScales), 1e-2);
        System.out.printf("    %s: codes %.4f%% same, proxy GPU %.6e CPU %.6e, loss GPU %.6e CPU %.6e, damp %g (%d retries)%n",
                c.name(), 100.0 * same / (out * in), gpuProxy, cpuProxy, got.loss(), cpu.loss(), got.damp(), got.dampRetries());
        for (Tensor t : new Tensor[] {x, h, dw}) gpu.free(t);
    }

    /**
     * EXL2 ({@link Exl2Gptq}, the CPU reference) against the GPU on one Hessian prepared once and several options,
     * SmolLM2-135M shapes (576 inputs: a ragged last group of 64 rows; 1536 inputs for down_proj) and a 576-wide
     * output that ExLlamaV2 pads: the order and damping exactly; codes, sub-scales and super-scales to 1 % (the
     * SGEMM and the p-grid sums add in another order); the proxy error to 0.5 %; the result's own consistency
     * exactly. Prints the time per option on the GPU.
     */
    private void exl2AgainstCpu() {
        for (int[] shape : new int[][] {{1536, 576}, {576, 1536}}) {
            int out = shape[0], in = shape[1];
            Tensor x = correlatedInputsOnGpu(2048, in, 3);
            Tensor h = gpu.upload(host(new float[in * in], in, in), DType.F32);
            gpu.accumulateGram(h, x);
            float[] hh = download(h);
            float[] w = GptqTestData.weights(out, in, random.nextLong());
            Tensor dw = gpu.upload(host(w, out, in), DType.F32);
            Exl2Gptq.Prepared cpuFactor = Exl2Gptq.prepare(hh, in);
            String n = "exl2 " + out + "x" + in + " ";
            try (Exl2Gptq.Factor gpuFactor = gpu.exl2Prepare(h)) {
                record(n + "perm", mismatches(gpuFactor.perm(), cpuFactor.perm()), 0);
                record(n + "damp, attempts", Math.abs(gpuFactor.damp() - cpuFactor.damp()) + Math.abs(gpuFactor.attempts() - cpuFactor.attempts()), 0);
                for (String option : new String[] {"0.05:8b_32g/0.1:4b_128g/0.85:3b_128g", "1:4b_128g", "0.1:3b_64g/0.9:2b_64g", "1:6b_32g",
                        "0.15:8b_128g/0.85:6b_128g", "0.05:5b_32g/0.95:4b_32g"}) {
                    Exl2Params params = Exl2Params.parse(option);
                    Exl2Tensor cpu = Exl2Gptq.quantize(cpuFactor, w, out, params);
                    long t = System.nanoTime();
                    Exl2Tensor got = gpu.exl2Quantize(gpuFactor, dw, params);
                    double ms = (System.nanoTime() - t) / 1e6;
                    String m = n + option + " ";
                    int same = 0, sameScale = 0, sameMax = 0;
                    for (int k = 0; k < got.codes().length; k++) if (got.codes()[k] == cpu.codes()[k]) same++;
                    for (int k = 0; k < got.qscale().length; k++) if (got.qscale()[k] == cpu.qscale()[k]) sameScale++;
                    for (int g = 0; g < got.qscaleMax().length; g++) if (got.qscaleMax()[g] == cpu.qscaleMax()[g]) sameMax++;
                    record(m + "codes differing", 1 - (double) same / got.codes().length, 0.01);
                    record(m + "qscale differing", 1 - (double) sameScale / got.qscale().length, 0.01);
                    record(m + "qscale_max differing", 1 - (double) sameMax / got.qscaleMax().length, 0.1);
                    double inconsistent = 0;
                    for (int g = 0; g < got.layout().count(); g++) {
                        for (int j = 0; j < got.layout().rows()[g]; j++) {
                            int k = got.layout().firstRow()[g] + j;
                            for (int o = 0; o < out; o++) {
                                float v = Exl2Tensor.dequantize(got.code(k, o), got.layout().bits()[g], got.scale(g, o));
                                inconsistent = Math.max(inconsistent, Math.abs(v - got.dequantized()[o * in + got.perm()[k]]));
                            }
                        }
                    }
                    record(m + "dequantized = codes", inconsistent, 0);
                    double gpuProxy = proxyError(w, got.dequantized(), x, out, in), cpuProxy = proxyError(w, cpu.dequantized(), x, out, in);
                    record(m + "proxy error vs CPU", Math.abs(gpuProxy / cpuProxy - 1), 0.005);
                    System.out.printf("    %s: codes %.4f%% same, proxy GPU %.6e CPU %.6e, %.2f ms on the GPU%n", m, 100.0 * same / got.codes().length,
                            gpuProxy, cpuProxy, ms);
                }
            } catch (RuntimeException e) {
                e.printStackTrace(System.out);
                record(n + "threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
            }
            for (Tensor t : new Tensor[] {x, h, dw}) gpu.free(t);
        }
    }

    /**
     * X [rows, in] = Z·Mᵀ + 0.3·N with Z [rows, in/8] and N Gaussian, columns scaled log-normally (as
     * GptqTestData.correlatedInputs, made on the GPU); the first {@code dead} columns are zero.
     */
    private Tensor correlatedInputsOnGpu(int rows, int in, int dead) {
        int rank = Math.max(4, in / 8);
        float[] colScale = new float[in];
        for (int i = 0; i < in; i++) colScale[i] = i < dead ? 0 : (float) Math.exp(random.nextGaussian() * 0.7);
        float[] z = randn(rows * rank), m = new float[in * rank], noise = new float[rows * in];
        for (int i = 0; i < in; i++)
            for (int k = 0; k < rank; k++) m[i * rank + k] = (float) (random.nextGaussian() / Math.sqrt(rank) * colScale[i]);
        long seed = random.nextLong();
        IntStream.range(0, rows).parallel().forEach(r -> {
            Random rr = new Random(seed + r);
            for (int i = 0; i < in; i++) noise[r * in + i] = (float) (0.3 * rr.nextGaussian() * colScale[i]);
        });
        Tensor dz = gpu.upload(host(z, rows, rank), DType.F32), dm = gpu.upload(host(m, in, rank), DType.F32);
        Tensor x = gpu.allocate(DType.F32, rows, in), dn = gpu.upload(host(noise, rows, in), DType.F32);
        gpu.linear(x, dz, dm, null);
        gpu.add(x, dn);
        for (Tensor t : new Tensor[] {dz, dm, dn}) gpu.free(t);
        return x;
    }

    /** ‖(W − Q)·Xᵀ‖²: the FP32 product on the GPU, the sum of squares in double. */
    private double proxyError(float[] w, float[] q, Tensor x, int out, int in) {
        float[] d = new float[out * in];
        for (int k = 0; k < d.length; k++) d[k] = w[k] - q[k];
        Tensor dd = gpu.upload(host(d, out, in), DType.F32);
        Tensor y = gpu.allocate(DType.F32, x.rows(), out);
        gpu.linear(y, x, dd, null);
        double total = 0;
        for (float v : download(y)) total += (double) v * v;
        gpu.free(dd);
        gpu.free(y);
        return total;
    }

    /**
     * Quantized linears through QMatrix against the double product of their weights: GPTQ (every width, with and
     * without act-order, at LLM shapes) and EXL2 (mixed widths, act-order). Rows 1 (F32 x and out) and 5 (F16) take
     * qt_qmatrix_gemv, 3 rows linearAdd with a bias the fused residual add, 16 rows qt_qmatrix_dequant + cuBLAS;
     * outputs are poisoned with NaN first, so an element a kernel skips fails.
     */
    private void qmatrixKernels() {
        record Shape(int out, int in, int groupSize, boolean actOrder) {}
        List<Shape> shapes = List.of(new Shape(4096, 4096, 128, false), new Shape(4096, 4096, 128, true),
                new Shape(4096, 4096, -1, false), new Shape(11008, 4096, 128, true));
        for (int bits : new int[] {2, 3, 4, 8}) {
            for (Shape sh : shapes) {
                var format = random.nextBoolean() ? qtool.format.gptq.GptqLayout.CheckpointFormat.GPTQ
                        : qtool.format.gptq.GptqLayout.CheckpointFormat.GPTQ_V2;
                RandomGptq q = RandomGptq.of(random, sh.out(), sh.in(), bits, sh.groupSize(), sh.actOrder(), format);
                String name = String.format("gptq %db %dx%d g%d%s %s", bits, sh.out(), sh.in(), sh.groupSize(),
                        sh.actOrder() ? " act" : "", format.configName);
                QMatrix m = QMatrix.fromGptq(q.packed());
                qmatrixCase(name, m, x -> q.reference(x, x.length / sh.in()));
            }
        }
        for (String option : new String[] {"0.05:8b_32g/0.1:4b_128g/0.85:3b_128g", "0.1:6b_32g/0.9:5b_32g", "0.25:3b_64g/0.75:2b_64g",
                "1:4b_128g"}) {
            for (int[] shape : new int[][] {{4096, 4096}, {4096, 11008}}) {
                int out = shape[0], in = shape[1];
                qtool.format.exl2.Exl2Packer.PackedLinear p = RandomExl2.of(random, out, in, option);
                float[] w = qtool.format.exl2.Exl2Packer.dequantize(p, out);
                qmatrixCase(String.format("exl2 %dx%d %s", out, in, option), QMatrix.fromExl2(p, out), x -> product(x, w, out, in));
            }
        }
        sharedInputOrder(random);
    }

    /**
     * Backend.linears over three EXL2 matrices of one input order (q/k/v) and one of another: the first three go in
     * one qt_qmatrix_gemv_many call, the fourth alone; each output against its double product, 1, 5 and 20 rows.
     */
    private void sharedInputOrder(Random random) {
        int in = 4096;
        int[] outs = {4096, 1024, 1024, 4096};
        qtool.format.exl2.Exl2Packer.PackedLinear first = RandomExl2.of(random, outs[0], in, "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g");
        qtool.format.exl2.Exl2Packer.PackedLinear[] ps = new qtool.format.exl2.Exl2Packer.PackedLinear[outs.length];
        ps[0] = first;
        for (int j = 1; j < outs.length; j++) {
            var p = RandomExl2.of(random, outs[j], in, j == 3 ? "1:4b_128g" : "0.1:6b_32g/0.9:5b_32g");
            ps[j] = j == 3 ? p : new qtool.format.exl2.Exl2Packer.PackedLinear(p.key(), p.in(), p.columns(), p.qWeight(), p.qScale(),
                    p.qScaleMax(), p.qGroups(), first.qInvperm(), p.bias());
        }
        try (Arena arena = Arena.ofConfined()) {
            Tensor[] ws = new Tensor[outs.length];
            float[][] dense = new float[outs.length][];
            for (int j = 0; j < outs.length; j++) {
                ws[j] = gpu.upload(QMatrix.fromExl2(ps[j], outs[j]).toTensor(arena), DType.QMATRIX);
                dense[j] = qtool.format.exl2.Exl2Packer.dequantize(ps[j], outs[j]);
            }
            for (int rows : new int[] {1, 5, 20}) {
                float[] x = roundAll(randn(rows * in), DType.F16);
                Tensor dx = gpu.upload(host(x, rows, in), DType.F16);
                Tensor[] ys = new Tensor[outs.length];
                for (int j = 0; j < outs.length; j++) ys[j] = gpu.upload(host(nans(rows * outs[j]), rows, outs[j]), DType.F32);
                gpu.linears(dx, ys, ws, null);
                for (int j = 0; j < outs.length; j++) {
                    record(String.format("linears, shared input order: matrix %d of %d, %d rows", j + 1, outs.length, rows),
                            relL2(downloadAny(ys[j]), product(x, dense[j], outs[j], in)), 1e-2);
                    gpu.free(ys[j]);
                }
                gpu.free(dx);
            }
            for (Tensor w : ws) gpu.free(w);
        } catch (RuntimeException e) {
            e.printStackTrace(System.out);
            record("linears, shared input order threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
        }
    }

    private void qmatrixCase(String name, QMatrix m, java.util.function.Function<float[], double[]> reference) {
        int in = m.in(), out = m.out();
        try (Arena arena = Arena.ofConfined()) {
            Tensor w = gpu.upload(m.toTensor(arena), DType.QMATRIX);
            float[] x = roundAll(randn(95 * in), DType.F16);  // rows 0 | 1..5 | 6..21 | 22..24 | 25..94
            double[] ref = reference.apply(x);
            float[] bias = randn(out), init = randn(3 * out);
            Tensor dBias = gpu.upload(host(bias, out), DType.F32);
            int[][] parts = {{0, 1}, {1, 5}, {6, 16}, {22, 3}, {25, 70}};
            String[] how = {"gemv 1 F32", "gemv 5 F16", "tensor cores 16 F16", "gemv 3 linearAdd+bias", "dequant+gemm 70 F16"};
            for (int k = 0; k < parts.length; k++) {
                int from = parts[k][0], rows = parts[k][1];
                DType type = k == 1 || k == 2 || k == 4 ? DType.F16 : DType.F32;  // 70 F16 rows: a perm gathers x, no scattered dequant
                float[] xs = java.util.Arrays.copyOfRange(x, from * in, (from + rows) * in);
                double[] r = java.util.Arrays.copyOfRange(ref, from * out, (from + rows) * out);
                Tensor dx = gpu.upload(host(xs, rows, in), type);
                Tensor y;
                if (k == 3) {
                    y = gpu.upload(host(init, rows, out), DType.F32);
                    gpu.linearAdd(y, dx, w, dBias);
                    for (int i = 0; i < r.length; i++) r[i] += init[i] + bias[i % out];
                } else {
                    y = gpu.upload(host(nans(rows * out), rows, out), type);
                    gpu.linear(y, dx, w, null);
                }
                record(name + " " + how[k], relL2(downloadAny(y), r), 1e-2);
                gpu.free(dx);
                gpu.free(y);
            }
            gpu.free(dBias);
            gpu.free(w);
        } catch (RuntimeException e) {
            e.printStackTrace(System.out);
            record(name + " threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
        }
    }

    /** y [rows, out] = x [rows, in] · wᵀ in double. */
    private static double[] product(float[] x, float[] w, int out, int in) {
        int rows = x.length / in;
        double[] y = new double[rows * out];
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int r = 0; r < rows; r++) {
                double acc = 0;
                for (int i = 0; i < in; i++) acc += (double) x[r * in + i] * w[o * in + i];
                y[r * out + o] = acc;
            }
        });
        return y;
    }

    /**
     * Decoding: qt_decode_attention one token at a time (position in a device tensor) against qt_attention over the
     * whole sequence, and a quantized GEMV (act-order, so its gather scratch, and F32 x, so its cast) beside it
     * against the double product; from step 1 on both replay one CUDA graph captured at step 1, the step's inputs
     * and position copied in before each launch.
     */
    private void decodeAndGraph() {
        int batch = 2, len = 6, heads = 8, kvHeads = 2, headDim = 64, maxSeq = 16, qDim = heads * headDim, kvDim = kvHeads * headDim;
        float[] q = roundAll(randn(batch * len * qDim), DType.F16), k = roundAll(randn(batch * len * kvDim), DType.F16);
        float[] v = roundAll(randn(batch * len * kvDim), DType.F16);
        float[] inv = new float[headDim / 2];
        for (int j = 0; j < inv.length; j++) inv[j] = (float) Math.pow(10000, -2.0 * j / headDim);
        RandomGptq g = RandomGptq.of(random, 1024, qDim, 4, 128, true, qtool.format.gptq.GptqLayout.CheckpointFormat.GPTQ_V2);
        List<Tensor> all = new ArrayList<>();
        MemorySegment graph = null;
        try (Arena arena = Arena.ofConfined()) {
            Tensor invFreq = gpu.upload(host(inv, inv.length), DType.F32);
            Tensor tq = gpu.upload(host(q, batch * len, qDim), DType.F16), tk = gpu.upload(host(k, batch * len, kvDim), DType.F16);
            Tensor tv = gpu.upload(host(v, batch * len, kvDim), DType.F16), whole = gpu.allocate(DType.F16, batch * len, qDim);
            Tensor kc = gpu.allocate(DType.F16, batch, maxSeq, kvDim), vc = gpu.allocate(DType.F16, batch, maxSeq, kvDim);
            all.addAll(List.of(invFreq, tq, tk, tv, whole, kc, vc));
            gpu.rope(tq, heads, headDim, len, 0, invFreq);
            gpu.rope(tk, kvHeads, headDim, len, 0, invFreq);
            gpu.attention(whole, tq, tk, tv, kc, vc, batch, len, 0, heads, kvHeads, headDim);
            float[] expected = downloadAny(whole);

            Tensor w = gpu.upload(QMatrix.fromGptq(g.packed()).toTensor(arena), DType.QMATRIX);
            Tensor dq = gpu.allocate(DType.F16, batch, qDim), dk = gpu.allocate(DType.F16, batch, kvDim), dv = gpu.allocate(DType.F16, batch, kvDim);
            Tensor out = gpu.allocate(DType.F16, batch, qDim), pos = gpu.allocate(DType.I32, 1);
            Tensor x = gpu.allocate(DType.F32, batch, qDim), y = gpu.allocate(DType.F32, batch, 1024);
            Tensor kc2 = gpu.allocate(DType.F16, batch, maxSeq, kvDim), vc2 = gpu.allocate(DType.F16, batch, maxSeq, kvDim);
            all.addAll(List.of(w, dq, dk, dv, out, pos, x, y, kc2, vc2));
            gpu.prepareDecode(batch, maxSeq, heads, kvHeads, headDim);
            double attentionError = 0, gemvError = 0;
            for (int t = 0; t < len; t++) {
                float[] qt = new float[batch * qDim], kt = new float[batch * kvDim], vt = new float[batch * kvDim], want = new float[batch * qDim];
                for (int b = 0; b < batch; b++) {
                    System.arraycopy(q, (b * len + t) * qDim, qt, b * qDim, qDim);
                    System.arraycopy(k, (b * len + t) * kvDim, kt, b * kvDim, kvDim);
                    System.arraycopy(v, (b * len + t) * kvDim, vt, b * kvDim, kvDim);
                    System.arraycopy(expected, (b * len + t) * qDim, want, b * qDim, qDim);
                }
                gpu.copyFromHost(MemorySegment.ofArray(half(qt)), dq);
                gpu.copyFromHost(MemorySegment.ofArray(half(kt)), dk);
                gpu.copyFromHost(MemorySegment.ofArray(half(vt)), dv);
                gpu.copyFromHost(MemorySegment.ofArray(new int[] {t}), pos);
                gpu.copyFromHost(MemorySegment.ofArray(qt), x);  // the GEMV reads this step's q as its input
                Runnable step = () -> {
                    gpu.decodeAttention(out, dq, dk, dv, kc2, vc2, batch, heads, kvHeads, headDim, pos, invFreq);
                    gpu.linear(y, x, w, null);
                };
                if (t == 0) {
                    step.run();
                } else {
                    if (graph == null) {
                        gpu.graphBegin();
                        try {
                            step.run();
                        } finally {
                            graph = gpu.graphEnd();
                        }
                    }
                    gpu.graphLaunch(graph);
                }
                double[] wantD = new double[want.length];
                for (int i = 0; i < want.length; i++) wantD[i] = want[i];
                attentionError = Math.max(attentionError, relL2(downloadAny(out), wantD));
                gemvError = Math.max(gemvError, relL2(download(y), g.reference(qt, batch)));
            }
            record("decodeAttention steps vs whole sequence (graph from step 1)", attentionError, 2e-3);
            record("qmatrix gemv in the graph, act-order F32 x", gemvError, 1e-2);
        } catch (RuntimeException e) {
            e.printStackTrace(System.out);
            record("decode and graph threw " + e.getClass().getSimpleName(), Double.POSITIVE_INFINITY, 0);
        } finally {
            if (graph != null) gpu.graphDestroy(graph);
            for (Tensor t : all) gpu.free(t);
        }
    }

    private static short[] half(float[] a) {
        short[] h = new short[a.length];
        for (int i = 0; i < a.length; i++) h[i] = Float.floatToFloat16(a[i]);
        return h;
    }

    /** GEMV device time (CUDA events) as GB/s of packed bytes read, beside the device copy bandwidth. */
    private void qmatrixGemvTimings() {
        double copy = gpu.copyBandwidthGBps();
        record Case(int out, int in, int bits, boolean actOrder, String exl2) {}
        List<Case> cases = List.of(new Case(4096, 11008, 2, false, null), new Case(4096, 11008, 3, false, null),
                new Case(4096, 11008, 4, false, null), new Case(4096, 11008, 8, false, null), new Case(11008, 4096, 4, false, null),
                new Case(4096, 4096, 4, false, null), new Case(4096, 11008, 4, true, null),
                new Case(4096, 11008, 0, true, "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g"), new Case(4096, 11008, 0, true, "1:4b_128g"));
        for (Case c : cases) {
            QMatrix m = c.exl2() == null
                    ? QMatrix.fromGptq(RandomGptq.of(random, c.out(), c.in(), c.bits(), 128, c.actOrder(),
                            qtool.format.gptq.GptqLayout.CheckpointFormat.GPTQ_V2).packed())
                    : QMatrix.fromExl2(RandomExl2.of(random, c.out(), c.in(), c.exl2()), c.out());
            try (Arena arena = Arena.ofConfined()) {
                Tensor w = gpu.upload(m.toTensor(arena), DType.QMATRIX);
                Tensor x = gpu.upload(host(randn(c.in()), 1, c.in()), DType.F16);
                Tensor y = gpu.allocate(DType.F16, 1, c.out());
                double ms = gpu.timeMs(() -> gpu.linear(y, x, w, null), 200);
                double gbps = m.bytes() / (ms * 1e-3) / 1e9;
                String what = c.exl2() == null ? String.format("gptq %db g128%s", c.bits(), c.actOrder() ? " act" : "") : "exl2 " + c.exl2();
                System.out.printf("timing qmatrix gemv %s %dx%d: %.1f us, %.0f GB/s of packed weights (%.0f%% of copy %.0f GB/s)%n",
                        what, c.out(), c.in(), ms * 1e3, gbps, 100 * gbps / copy, copy);
                gpu.free(x);
                gpu.free(y);
                gpu.free(w);
            }
        }
    }

    private static float[] nans(int n) {
        float[] a = new float[n];
        java.util.Arrays.fill(a, Float.NaN);
        return a;
    }

    private static double mismatches(int[] a, int[] b) {
        if (a.length != b.length) return Double.POSITIVE_INFINITY;
        int n = 0;
        for (int k = 0; k < a.length; k++) if (a[k] != b[k]) n++;
        return n;
    }

    /** Timings at LLM sizes (printed; medians of several runs after a warm-up). */
    public void timings() {
        qmatrixGemvTimings();
        int in = 4096;
        Tensor x = correlatedInputsOnGpu(2048, in, 0);
        Tensor h = gpu.upload(host(new float[in * in], in, in), DType.F32);
        double[] gramMs = new double[10];
        gpu.accumulateGram(h, x);
        gpu.synchronize();
        for (int k = 0; k < gramMs.length; k++) {
            long t = System.nanoTime();
            gpu.accumulateGram(h, x);
            gpu.synchronize();
            gramMs[k] = (System.nanoTime() - t) / 1e6;
        }
        double gram = median(gramMs);
        System.out.printf("timing gram 2048 rows x %d: %.3f ms (%.1f TFLOP/s counting rows*in*(in+1))%n", in, gram,
                2048.0 * in * (in + 1) / gram / 1e9);
        GptqParams p = GptqParams.of(4).withActOrder(true);
        for (int out : new int[] {4096, 11008}) {
            Tensor dw = gpu.upload(host(GptqTestData.weights(out, in, random.nextLong()), out, in), DType.F32);
            gpu.gptq(dw, h, p);  // warm-up: scratch, handles, module load
            double[] ms = new double[5];
            double[][] phases = new double[5][];
            for (int k = 0; k < ms.length; k++) {
                long t = System.nanoTime();
                gpu.gptq(dw, h, p);
                ms[k] = (System.nanoTime() - t) / 1e6;
                phases[k] = gpu.lastGptqPhases();
            }
            int mid = IntStream.range(0, ms.length).boxed().sorted((a, b) -> Double.compare(ms[a], ms[b])).toList().get(ms.length / 2);
            double[] ph = phases[mid];
            System.out.printf("timing gptq %dx%d 4-bit g128 act-order: %.2f ms median (min %.2f): setup %.2f, factor %.2f, "
                    + "column loop %.2f, to host %.2f ms%n", out, in, ms[mid], java.util.Arrays.stream(ms).min().orElse(0),
                    ph[0], ph[1], ph[2], ph[3]);
            gpu.free(dw);
        }
        gpu.free(x);
        gpu.free(h);
    }

    private static double median(double[] a) {
        double[] s = a.clone();
        java.util.Arrays.sort(s);
        return s[s.length / 2];
    }

    // ---- helpers -------------------------------------------------------------------------------------------------

    /**
     * AWQ's clip search on the GPU against {@link qtool.quantize.Awq#searchClip}: per [row, group], how much the GPU's
     * range raises dᵀ·H_g·d (in double) over the CPU's choice, the best of the same candidates (argmins may flip on
     * near-ties); group size -1 over 128 columns runs the host search, so it must match exactly.
     */
    private void awqClipAgainstCpu() {
        int out = 200, tokens = 512;
        // {in, group size, zero point}: Llama's g128 with the zero-point grid (110 candidates), a ragged symmetric g64,
        // and one group per row (the host fallback)
        int[][] cases = {{576, 128, 1}, {200, 64, 0}, {300, -1, 1}};
        for (int[] c : cases) {
            int in = c[0];
            qtool.quantize.AwqParams p = new qtool.quantize.AwqParams(4, c[1], c[2] == 1);
            float[] w = randn(out * in), x = randn(tokens * in);
            for (int i = 0; i < w.length; i++) w[i] *= i % 37 == 0 ? 0.12f : 0.02f;
            Tensor dw = gpu.upload(host(w, out, in), DType.F32), dx = gpu.upload(host(x, tokens, in), DType.F32);
            float[] got = gpu.awqClip(dw, dx, p, true);
            gpu.free(dw);
            gpu.free(dx);
            float[] want = qtool.quantize.Awq.searchClip(w, out, in, x, tokens, p, true);
            String name = "awqClip " + out + "x" + in + " g" + c[1] + (c[2] == 1 ? " zero-point" : " sym");
            if (c[1] == -1) {
                record(name + " (host)", java.util.Arrays.equals(got, want) ? 0 : 1, 0);
                continue;
            }
            double[] eGot = clipObjective(w, out, in, x, tokens, p, got), eWant = clipObjective(w, out, in, x, tokens, p, want);
            double worst = 0;
            for (int k = 0; k < eGot.length; k++) worst = Math.max(worst, (eGot[k] - eWant[k]) / Math.max(eWant[k], 1e-30));
            record(name + " (objective over CPU's)", worst, 1e-4);
        }
    }

    /** dᵀ·H_g·d per [row, group] for W clipped to {@code range} and quantized, d = Q(clip(W)) − W, in double. */
    private static double[] clipObjective(float[] w, int out, int in, float[] x, int tokens, qtool.quantize.AwqParams p, float[] range) {
        float[] clipped = w.clone();
        qtool.quantize.Awq.applyClip(clipped, out, in, range, p);
        float[] q = qtool.quantize.Awq.pseudoQuantize(clipped, out, in, p);
        int width = p.groupWidth(in), groups = p.numGroups(in);
        double[] e = new double[out * groups];
        IntStream.range(0, out).parallel().forEach(o -> {
            for (int t = 0; t < tokens; t++) {
                for (int g = 0; g < groups; g++) {
                    double s = 0;
                    for (int i = g * width; i < Math.min(in, (g + 1) * width); i++) s += (double) x[t * in + i] * ((double) q[o * in + i] - w[o * in + i]);
                    e[o * groups + g] += s * s;
                }
            }
        });
        return e;
    }

    private void record(String name, double error, double limit) {
        results.add(new Result(name, error, limit));
    }

    private float[] randn(int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) random.nextGaussian();
        return a;
    }

    private static Tensor host(float[] a, long... shape) {
        return new Tensor(MemorySegment.ofArray(a), DType.F32, shape);
    }

    private float[] download(Tensor t) {
        float[] a = new float[Math.toIntExact(t.numel())];
        gpu.copyToHost(t, MemorySegment.ofArray(a));
        return a;
    }

    /** A device tensor of any float type, as floats. */
    private float[] downloadAny(Tensor t) {
        if (t.dtype() == DType.F32) return download(t);
        short[] bits = new short[Math.toIntExact(t.numel())];
        gpu.copyToHost(t, MemorySegment.ofArray(bits));
        float[] a = new float[bits.length];
        for (int i = 0; i < a.length; i++) {
            a[i] = t.dtype() == DType.F16 ? Float.float16ToFloat(bits[i]) : Float.intBitsToFloat(bits[i] << 16);
        }
        return a;
    }

    private static float[] roundAll(float[] a, DType type) {
        float[] r = new float[a.length];
        for (int i = 0; i < a.length; i++) r[i] = (float) rounded(a[i], type);
        return r;
    }

    private static double bf16(float v) {
        int bits = Float.floatToRawIntBits(v);
        return Float.intBitsToFloat((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000);
    }

    private static double rounded(float v, DType type) {
        return switch (type) {
            case F16 -> Float.float16ToFloat(Float.floatToFloat16(v));
            case BF16 -> bf16(v);
            default -> v;
        };
    }

    private static double[] ropeRef(float[] x, int rows, int heads, int headDim, int seqLen, int start, float[] inv) {
        double[] out = new double[x.length];
        int half = headDim / 2, width = heads * headDim;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < half; j++) {
                    double angle = (float) (start + r % seqLen) * inv[j];
                    int base = r * width + h * headDim;
                    double a = x[base + j], b = x[base + j + half];
                    out[base + j] = a * Math.cos(angle) - b * Math.sin(angle);
                    out[base + j + half] = b * Math.cos(angle) + a * Math.sin(angle);
                }
        return out;
    }

    static double relL2(float[] got, double[] ref) {
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            if (!Float.isFinite(got[i])) return Double.POSITIVE_INFINITY;
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }
}
