package qtool.convert;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.model.Forward;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;
import qtool.quantize.Awq;
import qtool.quantize.AwqParams;
import qtool.quantize.GptqParams;

/**
 * AWQ's per-layer stage, reusable in front of any quantizer: the scale search of {@link Awq} on the four groups
 * AutoAWQ scales in a Llama layer, and the folding of the chosen scales (AutoAWQ's {@code get_layers_for_scaling},
 * {@code _search_best_scale} and {@code apply_scale}):
 *
 * <ol>
 *   <li>input_layernorm → q/k/v, judged on the attention block's output (o_proj of the attention);</li>
 *   <li>v_proj → o_proj, judged on o_proj's output, only where v_proj and o_proj have the same shape: with
 *       grouped-query attention a v channel feeds several heads' o_proj inputs and cannot take one scale per
 *       o_proj input (AutoAWQ skips it then too, see llm-awq#67);</li>
 *   <li>post_attention_layernorm → gate/up, judged on the MLP's output;</li>
 *   <li>up_proj → down_proj, judged on down_proj's output.</li>
 * </ol>
 *
 * Each search sees the layer's original weights and its inputs from the calibration rows (captured in one pass over
 * the {@link ResidualStream}); then the linears' input columns are multiplied by their scales and the op before
 * divided (norm weights, or v_proj / up_proj rows and v's bias), which leaves the layer's output unchanged in exact
 * arithmetic. The block runs on the backend; the candidates' round-to-nearest on the host.
 */
public final class AwqScaling {
    /** One scaled group: which ops, and what the search found. */
    public record Group(String name, Awq.ScaleSearch search) {}

    /**
     * @param layer      the layer with the scales folded in (host F32 tensors)
     * @param clipInputs for each linear: sampled input rows [clipTokens, in], divided by the scales of its group, as
     *                   the clipping search wants them
     * @param notes      groups skipped, and why (the same for every layer of a model)
     * @param seconds    where the time went: "scale search: capture" (the pass that collects the inputs),
     *                   "scale search: candidates" (quantizing them), "scale search: block runs" (judging them)
     */
    public record Result(LlamaModel.Layer layer, Map<String, float[]> clipInputs, int clipTokens, List<Group> groups, List<String> notes,
                         Map<String, Double> seconds) {}

    private AwqScaling() {}

    /**
     * Scales layer {@code host} on the calibration rows of {@code stream} (the layer's inputs). With {@code advance}
     * the capturing pass also moves the stream through the ORIGINAL layer, as AutoAWQ makes the next layer's inputs.
     */
    public static Result apply(Forward f, LlamaModel.Layer host, ResidualStream stream, boolean advance, AwqParams p, int grid) {
        return apply(f, host, stream, advance, p, null, grid);
    }

    /**
     * As {@link #apply(Forward, LlamaModel.Layer, ResidualStream, boolean, AwqParams)}, with each search judging its
     * candidates quantized by GPTQ with {@code gptq}'s settings (on the Hessian of the scaled inputs,
     * diag(s)⁻¹·XᵀX·diag(s)⁻¹) and no scaling among them ({@code --awq-scale}): the scales are chosen for the quantizer
     * that follows, which round-to-nearest's choice is not (it made GPTQ 1–6 % worse on stories260K).
     */
    public static Result apply(Forward f, LlamaModel.Layer host, ResidualStream stream, boolean advance, AwqParams p, GptqParams gptq) {
        return apply(f, host, stream, advance, p, gptq, Awq.SCALE_GRID);
    }

    private static Result apply(Forward f, LlamaModel.Layer host, ResidualStream stream, boolean advance, AwqParams p, GptqParams gptq,
                                int grid) {
        Backend b = f.backend;
        var cfg = f.cfg;
        long tokens = (long) stream.rows() * stream.length();
        int step = Awq.clipSampleStep(tokens), samples = (int) ((tokens + step - 1) / step);
        Map<Site, Integer> width = Map.of(Site.ATTN_IN, cfg.hiddenSize(), Site.O_IN, cfg.qDim(), Site.MLP_IN, cfg.hiddenSize(),
                Site.DOWN_IN, cfg.intermediateSize());
        EnumMap<Site, Tensor> inputs = new EnumMap<>(Site.class);
        EnumMap<Site, double[]> absSum = new EnumMap<>(Site.class);
        EnumMap<Site, float[]> sampled = new EnumMap<>(Site.class);
        LlamaModel.Layer dev = null;
        Tensor out = null, negRef = null, dot = null;
        try {
            for (Site s : Site.values()) {
                inputs.put(s, b.allocate(DType.F32, tokens, width.get(s)));
                absSum.put(s, new double[width.get(s)]);
                sampled.put(s, new float[samples * width.get(s)]);
            }
            long start = System.nanoTime();
            dev = f.upload(host);
            // 1. every linear's input over all calibration tokens: on the device for the block runs, mean |x| and
            //    the clip sample on the host
            stream.forEachBatch(f, dev, advance, (first, site, x) -> {
                long t0 = (long) first * stream.length();
                b.copy(inputs.get(site).rowSlice(t0, x.rows()), x);
                int cols = x.cols();
                float[] h = new float[x.rows() * cols];
                b.copyToHost(x, MemorySegment.ofArray(h));
                double[] sum = absSum.get(site);
                float[] smp = sampled.get(site);
                for (int r = 0; r < x.rows(); r++) {
                    for (int c = 0; c < cols; c++) sum[c] += Math.abs(h[r * cols + c]);
                    if ((t0 + r) % step == 0) System.arraycopy(h, r * cols, smp, (int) ((t0 + r) / step) * cols, cols);
                }
            });
            out = b.allocate(DType.F32, (long) stream.batch() * stream.length(), cfg.hiddenSize());
            negRef = b.allocate(DType.F32, tokens, cfg.hiddenSize());
            dot = b.allocate(DType.F32, 1, 1);
            Blocks blocks = new Blocks(f, stream, inputs, dev, out, negRef, dot, gptq, grid, new long[2]);
            double capture = (System.nanoTime() - start) / 1e9;

            float[] q = host.q().toFloatArray(), k = host.k().toFloatArray(), v = host.v().toFloatArray(), o = host.o().toFloatArray();
            float[] gate = host.gate().toFloatArray(), up = host.up().toFloatArray(), down = host.down().toFloatArray();
            int h = cfg.hiddenSize(), qd = cfg.qDim(), kvd = cfg.kvDim(), inter = cfg.intermediateSize();
            List<Group> groups = new ArrayList<>();
            List<String> notes = new ArrayList<>();
            Map<Site, float[]> scales = new EnumMap<>(Site.class);

            // 2. the four searches, each on the original weights
            String[] qkv = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
            scales.put(Site.ATTN_IN, blocks.search("input_layernorm→q/k/v", Site.ATTN_IN, qkv, new float[][] {q, k, v}, new int[] {qd, kvd, kvd},
                    h, mean(absSum.get(Site.ATTN_IN), tokens), p, groups, (w, n, o2, nr) -> f.attentionBlock(w, n, o2, nr, stream.length())));
            if (Arrays.equals(host.v().shape(), host.o().shape())) {
                scales.put(Site.O_IN, blocks.search("v_proj→o_proj", Site.O_IN, new String[] {"self_attn.o_proj"}, new float[][] {o}, new int[] {h},
                        qd, mean(absSum.get(Site.O_IN), tokens), p, groups, (w, n, o2, nr) -> b.linear(o2, n, w.o(), w.oBias())));
            } else {
                notes.add("v_proj→o_proj not scaled: v_proj " + Arrays.toString(host.v().shape()) + " and o_proj "
                        + Arrays.toString(host.o().shape()) + " differ (grouped-query attention: one v channel feeds several heads)");
            }
            scales.put(Site.MLP_IN, blocks.search("post_attention_layernorm→gate/up", Site.MLP_IN, new String[] {"mlp.gate_proj", "mlp.up_proj"},
                    new float[][] {gate, up}, new int[] {inter, inter}, h, mean(absSum.get(Site.MLP_IN), tokens), p, groups,
                    (w, n, o2, nr) -> f.mlpBlock(w, n, o2)));
            scales.put(Site.DOWN_IN, blocks.search("up_proj→down_proj", Site.DOWN_IN, new String[] {"mlp.down_proj"}, new float[][] {down},
                    new int[] {h}, inter, mean(absSum.get(Site.DOWN_IN), tokens), p, groups, (w, n, o2, nr) -> b.linear(o2, n, w.down(), null)));

            // 3. fold: inputs × s into the linears' columns, ÷ s into the op before
            float[] s1 = scales.get(Site.ATTN_IN), s2 = scales.get(Site.O_IN), s3 = scales.get(Site.MLP_IN), s4 = scales.get(Site.DOWN_IN);
            float[] inputNorm = divide(host.inputNorm().toFloatArray(), s1), postNorm = divide(host.postNorm().toFloatArray(), s3);
            q = Awq.scaleColumns(q, h, s1);
            k = Awq.scaleColumns(k, h, s1);
            v = Awq.scaleColumns(v, h, s1);
            float[] vBias = host.vBias() == null ? null : host.vBias().toFloatArray();
            if (s2 != null) {
                scaleRows(v, h, s2);
                if (vBias != null) divide(vBias, s2);
                o = Awq.scaleColumns(o, qd, s2);
            }
            gate = Awq.scaleColumns(gate, h, s3);
            up = Awq.scaleColumns(up, h, s3);
            scaleRows(up, h, s4);
            down = Awq.scaleColumns(down, inter, s4);
            LlamaModel.Layer scaled = new LlamaModel.Layer(like(inputNorm, host.inputNorm()), like(q, host.q()), like(k, host.k()), like(v, host.v()),
                    like(o, host.o()), f32(host.qBias()), f32(host.kBias()), vBias == null ? null : like(vBias, host.vBias()), f32(host.oBias()),
                    like(postNorm, host.postNorm()), like(gate, host.gate()), like(up, host.up()), like(down, host.down()));

            // 4. the clip search's inputs, in the scaled space
            Map<String, float[]> clip = new LinkedHashMap<>();
            float[] attnIn = Awq.divideColumns(sampled.get(Site.ATTN_IN), h, s1);
            for (String l : qkv) clip.put(l, attnIn);
            clip.put("self_attn.o_proj", s2 == null ? sampled.get(Site.O_IN) : Awq.divideColumns(sampled.get(Site.O_IN), qd, s2));
            float[] mlpIn = Awq.divideColumns(sampled.get(Site.MLP_IN), h, s3);
            clip.put("mlp.gate_proj", mlpIn);
            clip.put("mlp.up_proj", mlpIn);
            clip.put("mlp.down_proj", Awq.divideColumns(sampled.get(Site.DOWN_IN), inter, s4));
            Map<String, Double> seconds = new LinkedHashMap<>();
            seconds.put("scale search: capture", capture);
            seconds.put("scale search: candidates", blocks.nanos()[0] / 1e9);
            seconds.put("scale search: block runs", blocks.nanos()[1] / 1e9);
            return new Result(scaled, clip, samples, groups, notes, seconds);
        } finally {
            inputs.values().forEach(b::free);
            if (dev != null) f.free(dev);
            if (out != null) b.free(out);
            if (dot != null) b.free(dot);
            if (negRef != null) b.free(negRef);
        }
    }

    /** A block (attention, MLP or one linear) of device layer {@code w} on normed rows {@code n} into {@code out}. */
    @FunctionalInterface
    private interface Block {
        void run(LlamaModel.Layer w, Tensor n, Tensor out, int batchRows);
    }

    /**
     * What the searches share: the captured inputs, the device layer, scratch for the outputs and for Σ x² (a 1×1
     * {@code dot}), and the time spent quantizing candidates ({@code nanos[0]}) and running the block on them
     * ({@code nanos[1]}).
     */
    private record Blocks(Forward f, ResidualStream stream, Map<Site, Tensor> inputs, LlamaModel.Layer dev, Tensor out, Tensor negRef,
                          Tensor dot, GptqParams gptq, int grid, long[] nanos) {

        /**
         * One group's search: the block's output with the original weights (kept negated on the device), then for
         * each candidate the mean squared difference from it.
         */
        float[] search(String name, Site site, String[] linears, float[][] weights, int[] outs, int in, float[] xMean, AwqParams p,
                       List<Group> groups, Block block) {
            Backend b = f.backend;
            int len = stream.length(), cols = negRef.cols();
            for (int r0 = 0; r0 < stream.rows(); r0 += stream.batch()) {
                int nr = Math.min(stream.batch(), stream.rows() - r0);
                Tensor ref = negRef.rowSlice((long) r0 * len, (long) nr * len);
                block.run(dev, inputs.get(site).rowSlice((long) r0 * len, (long) nr * len), ref, nr);
                float[] host = new float[ref.rows() * cols];
                b.copyToHost(ref, MemorySegment.ofArray(host));
                for (int i = 0; i < host.length; i++) host[i] = -host[i];
                b.copyFromHost(MemorySegment.ofArray(host), ref);
            }
            Awq.ScaledQuantizer quantize = gptq == null ? (l, ws, s) -> Awq.pseudoQuantize(ws, outs[l], in, p) : gptqQuantizer(site, outs, in);
            Awq.ScaledQuantizer timed = (l, ws, s) -> {
                long t0 = System.nanoTime();
                float[] q = quantize.quantize(l, ws, s);
                nanos[0] += System.nanoTime() - t0;
                return q;
            };
            Awq.ScaleSearch result = Awq.searchScale(weights, outs, in, xMean, p, grid, timed, gptq != null, candidates -> {
                long t0 = System.nanoTime();
                LlamaModel.Layer w = dev;
                List<Tensor> uploaded = new ArrayList<>();
                try {
                    for (int l = 0; l < linears.length; l++) {
                        Tensor t = b.upload(new Tensor(MemorySegment.ofArray(candidates[l]), DType.F32, new long[] {outs[l], in}), f.linearType());
                        uploaded.add(t);
                        w = w.withLinear(linears[l], t);
                    }
                    double sum = 0;
                    for (int r0 = 0; r0 < stream.rows(); r0 += stream.batch()) {
                        int nr = Math.min(stream.batch(), stream.rows() - r0);
                        Tensor o = out.rowSlice(0, (long) nr * len);
                        block.run(w, inputs.get(site).rowSlice((long) r0 * len, (long) nr * len), o, nr);
                        b.add(o, negRef.rowSlice((long) r0 * len, (long) nr * len));
                        sum += sumOfSquares(b, o, dot);
                    }
                    return sum / ((double) stream.rows() * len * cols);
                } finally {
                    uploaded.forEach(b::free);
                    nanos[1] += System.nanoTime() - t0;
                }
            });
            groups.add(new Group(name, result));
            return result.scales();
        }

        /** GPTQ of a scaled candidate: its inputs are x·diag(s)⁻¹, so its Hessian is diag(s)⁻¹·H·diag(s)⁻¹. */
        Awq.ScaledQuantizer gptqQuantizer(Site site, int[] outs, int in) {
            Backend b = f.backend;
            float[] h = new float[in * in];
            Tensor gram = b.allocate(DType.F32, in, in);
            try {
                b.copyFromHost(MemorySegment.ofArray(h), gram);
                b.accumulateGram(gram, inputs.get(site));
                b.copyToHost(gram, MemorySegment.ofArray(h));
            } finally {
                b.free(gram);
            }
            return (l, ws, s) -> {
                float[] hs = new float[in * in];
                for (int i = 0; i < in; i++) for (int j = 0; j < in; j++) hs[i * in + j] = h[i * in + j] / (s[i] * s[j]);
                Tensor w = null, hd = null;
                try {
                    w = b.upload(new Tensor(MemorySegment.ofArray(ws), DType.F32, new long[] {outs[l], in}), DType.F32);
                    hd = b.upload(new Tensor(MemorySegment.ofArray(hs), DType.F32, new long[] {in, in}), DType.F32);
                    return b.gptq(w, hd, gptq).dequantized();
                } finally {
                    if (w != null) b.free(w);
                    if (hd != null) b.free(hd);
                }
            };
        }
    }

    /**
     * Σ x² over a device tensor, as the product of x seen as one row with itself (the backend's GEMM splits so long a
     * reduction well; a Gram matrix of x as [numel / 16, 16], the earlier way, made cuBLAS's SYRK crawl) into
     * {@code dot} (1×1, F32).
     */
    static double sumOfSquares(Backend b, Tensor x, Tensor dot) {
        Tensor row = x.reshape(1, x.numel());
        b.linear(dot, row, row, null);
        float[] h = new float[1];
        b.copyToHost(dot, MemorySegment.ofArray(h));
        return h[0];
    }

    private static float[] mean(double[] sum, long n) {
        float[] m = new float[sum.length];
        for (int i = 0; i < m.length; i++) m[i] = (float) (sum[i] / n);
        return m;
    }

    /** v ÷ s elementwise, in place; returns v. */
    private static float[] divide(float[] v, float[] s) {
        for (int i = 0; i < v.length; i++) v[i] /= s[i];
        return v;
    }

    /** W[o, :] ÷ s[o] for a row-major [out, in] matrix, in place. */
    private static void scaleRows(float[] w, int in, float[] s) {
        for (int o = 0; o < w.length / in; o++) for (int i = 0; i < in; i++) w[o * in + i] /= s[o];
    }

    private static Tensor like(float[] values, Tensor shapeOf) {
        return new Tensor(MemorySegment.ofArray(values), DType.F32, shapeOf.shape());
    }

    private static Tensor f32(Tensor t) {
        return t == null ? null : like(t.toFloatArray(), t);
    }
}
