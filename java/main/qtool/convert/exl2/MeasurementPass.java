package qtool.convert.exl2;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;

/**
 * Measures one block (ExLlamaV2's measure.py, measure_attn / measure_mlp): on the unquantized residual stream,
 * <ol>
 *   <li>the block runs once over all calibration rows on copies, summing the Gram matrix of each linear input
 *       (q/k/v share one, gate/up share one) and keeping −y, the negated reference output (residual included);</li>
 *   <li>every distinct option of each linear is quantized from its input's Gram matrix (for EXL2, each input is
 *       prepared once — act-order permutation, Cholesky factor of the damped H⁻¹ — and every option of every
 *       linear sharing it quantized from that one factor, ExLlamaV2's {@code reuse_h});</li>
 *   <li>for each row of the option grid the block runs with those quantized weights; its error is the mean over
 *       calibration rows of ‖y_q − y‖_F / ‖y‖_F under the pass's {@link ErrorRule}, and accuracy = max(1e-6, 1 − error);</li>
 *   <li>the stream moves on to y, the unquantized output.</li>
 * </ol>
 * The option set is the caller's ({@link LinearOptions}, and rows of option indices): {@link #measure} uses
 * ExLlamaV2's grid as above; {@link MixedGptq} uses plain GPTQ at each candidate width.
 */
final class MeasurementPass {
    private final BlockStream s;
    private final Backend backend;
    private final DType linearType;

    /** What a block's output error is measured on (each a mean over calibration rows of ‖a_q − a‖_F / ‖a‖_F). */
    enum ErrorRule {
        /**
         * a = y, the block output with the residual (ExLlamaV2's measure.py). A residual stream in which a few tokens
         * carry huge values (attention sinks) dominates each row's norm, so every block after the one that makes them
         * looks nearly lossless and the optimizer starves it of bits.
         */
        OUTPUT,
        /**
         * a = RMS-normalised y, token by token (unit weight): the stream as the next block's RMSNorm reads it. Every
         * token counts at its own scale, whatever the residual's size.
         */
        TOKEN,
        /** a = y − x, the block's own contribution (mixed-width GPTQ, whose options are whole bit widths). */
        CONTRIBUTION;

        static ErrorRule of(String name) {
            return switch (name) {
                case "output" -> OUTPUT;
                case "token" -> TOKEN;
                default -> throw new qtool.QtoolException("unknown measurement error rule '" + name + "' (token or output)");
            };
        }
    }

    private final ErrorRule rule;

    MeasurementPass(BlockStream stream, DType linearType, ErrorRule rule) {
        this.s = stream;
        this.backend = stream.backend;
        this.linearType = linearType;
        this.rule = rule;
    }


    /** Sums the Gram matrices of the block's inputs over all rows (on copies), calling {@code out} per batch output. */
    static EnumMap<Site, Tensor> grams(BlockStream s, LlamaModel.Layer dev, boolean attention, LlamaModel.Layer host,
                                      List<String> linears, BlockStream.BatchAction out) {
        EnumMap<Site, Tensor> grams = new EnumMap<>(Site.class);
        for (String l : linears) {
            int in = host.linear(Measurement.hfLinear(l)).cols();
            grams.computeIfAbsent(Site.of(l), k -> {
                Tensor h = s.backend.allocate(DType.F32, in, in);
                s.backend.copyFromHost(MemorySegment.ofArray(new float[in * in]), h);
                return h;
            });
        }
        s.onCopies(dev, attention, (site, x) -> {
            Tensor h = grams.get(site);
            if (h != null) s.backend.accumulateGram(h, x);
        }, out);
        return grams;
    }

    /**
     * Makes a block's candidate weights: each linear at each of its options. The options of one linear are quantized
     * together, from its input's Gram matrix, so that what they share (a factor, a permutation) is made once.
     */
    interface LinearOptions {
        /**
         * The dequantized weights [out, in] of linear {@code l}'s options, in option order.
         *
         * @param weight the linear's weight, F32 on the device
         * @param site   the input it reads (linears of one site share {@code gram})
         * @param gram   Σ XᵀX of that input over the calibration rows
         */
        List<float[]> quantize(String l, Tensor weight, Site site, Tensor gram);

        /** Every linear is quantized: release what they shared, before the block runs. */
        default void done() {}
    }

    /** One block under ExLlamaV2's option grid: every row's accuracy and total bits, in grid order. */
    Measurement.Block measure(int layer, boolean attention, LlamaModel.Layer host, LlamaModel.Layer dev, Map<String, Double> seconds) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        List<List<Exl2Params>> grid = attention ? Exl2Params.ATTENTION_OPTIONS : Exl2Params.MLP_OPTIONS;
        Exl2Params.Reduced reduced = Exl2Params.reduced(grid, false);
        // every distinct option of every linear, from one factor per input (ExLlamaV2's reuse_h)
        EnumMap<Site, Exl2Gptq.Factor> factors = new EnumMap<>(Site.class);
        double[] accuracy;
        try {
            accuracy = accuracies(layer, attention, host, dev, reduced.rows(), new LinearOptions() {
                @Override
                public List<float[]> quantize(String l, Tensor weight, Site site, Tensor gram) {
                    Exl2Gptq.Factor f = factors.computeIfAbsent(site, k -> backend.exl2Prepare(gram));
                    List<float[]> out = new ArrayList<>();
                    for (Exl2Params p : reduced.perProjection().get(linears.indexOf(l))) out.add(backend.exl2Quantize(f, weight, p).dequantized());
                    return out;
                }

                @Override
                public void done() {
                    factors.values().forEach(Exl2Gptq.Factor::close);
                    factors.clear();
                }
            }, seconds);
        } finally {
            factors.values().forEach(Exl2Gptq.Factor::close);
        }
        List<Measurement.Entry> entries = new ArrayList<>();
        for (int r = 0; r < accuracy.length; r++) {
            int[] row = reduced.rows().get(r);
            long bits = 0;
            Map<String, Exl2Params> chosen = new LinkedHashMap<>();
            for (int j = 0; j < linears.size(); j++) {
                Exl2Params p = reduced.perProjection().get(j).get(row[j]);
                Tensor w = host.linear(Measurement.hfLinear(linears.get(j)));
                bits += p.totalBits(w.cols(), Exl2Params.paddedColumns(w.rows()), host.bias(Measurement.hfLinear(linears.get(j))) != null);
                chosen.put(linears.get(j), p);
            }
            entries.add(new Measurement.Entry(accuracy[r], bits, chosen));
        }
        return new Measurement.Block(attention ? Measurement.attentionKey(layer) : Measurement.mlpKey(layer), List.copyOf(entries));
    }

    /**
     * Measures one block of layer {@code layer} on the stream and moves the stream on (unquantized). {@code rows}:
     * the option rows to run, row[j] the option of the block's j-th linear ({@link Measurement#ATTENTION} or
     * {@link Measurement#MLP} order); returns each row's accuracy, max(1e-6, 1 − mean relative Frobenius error).
     */
    double[] accuracies(int layer, boolean attention, LlamaModel.Layer host, LlamaModel.Layer dev, List<int[]> rows,
                        LinearOptions optionsOf, Map<String, Double> seconds) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        Tensor refNeg = backend.allocate(DType.F32, s.states.shape());
        // TOKEN: the errors are taken on RMS-normalised copies; normNeg keeps −norm(y) beside −y (which moves the stream on)
        Tensor ones = null, normNeg = refNeg;
        float eps = s.forward.cfg.rmsNormEps();
        try {
            if (rule == ErrorRule.TOKEN) {
                float[] one = new float[s.states.cols()];
                java.util.Arrays.fill(one, 1f);
                ones = backend.upload(new Tensor(MemorySegment.ofArray(one), DType.F32, new long[] {one.length}), DType.F32);
                normNeg = backend.allocate(DType.F32, s.states.shape());
            }
            Tensor unit = ones, refNegOfError = normNeg;
            long t0 = System.nanoTime();
            EnumMap<Site, Tensor> grams = grams(s, dev, attention, host, linears, (r0, nr, y) -> {
                s.negate(s.rowsOf(refNeg, r0, nr), y);
                if (unit != null) {
                    backend.rmsNorm(y, y, unit, eps);
                    s.negate(s.rowsOf(refNegOfError, r0, nr), y);
                }
                s.sumSquares(y, r0, nr);
            });
            if (rule == ErrorRule.CONTRIBUTION) { // s.squares ← ‖x − y‖² per row: the stream before the block plus −y
                for (int r0 = 0; r0 < s.rows; r0 += s.batch) {
                    int nr = Math.min(s.batch, s.rows - r0);
                    Tensor d = s.work.rowSlice(0, (long) nr * s.length);
                    backend.copy(d, s.rowsOf(s.states, r0, nr));
                    backend.add(d, s.rowsOf(refNeg, r0, nr));
                    s.sumSquares(d, r0, nr);
                }
            }
            float[] refSquares = s.squares();
            seconds.merge("measure: hessians", (System.nanoTime() - t0) / 1e9, Double::sum);

            t0 = System.nanoTime();
            List<List<float[]>> options = new ArrayList<>();
            try {
                for (String l : linears) {
                    Tensor w = backend.upload(host.linear(Measurement.hfLinear(l)), DType.F32);
                    try {
                        options.add(optionsOf.quantize(l, w, Site.of(l), grams.get(Site.of(l))));
                    } finally {
                        backend.free(w);
                    }
                }
                optionsOf.done();
            } finally {
                grams.values().forEach(backend::free);
            }
            seconds.merge("measure: quantize", (System.nanoTime() - t0) / 1e9, Double::sum);

            // the block with each row's weights
            t0 = System.nanoTime();
            double[] accuracy = new double[rows.size()];
            int[] current = new int[linears.size()];
            java.util.Arrays.fill(current, -1);
            LlamaModel.Layer q = dev;
            List<Tensor> uploaded = new ArrayList<>();
            try {
                for (int r = 0; r < rows.size(); r++) {
                    int[] row = rows.get(r);
                    for (int j = 0; j < linears.size(); j++) {
                        if (current[j] == row[j]) continue;
                        String hf = Measurement.hfLinear(linears.get(j));
                        Tensor old = q.linear(hf);
                        Tensor w = backend.upload(new Tensor(MemorySegment.ofArray(options.get(j).get(row[j])), DType.F32, old.shape()), linearType);
                        uploaded.add(w);
                        if (uploaded.contains(old)) {
                            backend.free(old);
                            uploaded.remove(old);
                        }
                        q = q.withLinear(hf, w);
                        current[j] = row[j];
                    }
                    s.onCopies(q, attention, null, (r0, nr, yq) -> {
                        if (unit != null) backend.rmsNorm(yq, yq, unit, eps);
                        backend.add(yq, s.rowsOf(refNegOfError, r0, nr));
                        s.sumSquares(yq, r0, nr);
                    });
                    float[] diff = s.squares();
                    double sum = 0;
                    for (int k = 0; k < s.rows; k++) sum += Math.sqrt(diff[k]) / Math.sqrt(refSquares[k]);
                    accuracy[r] = Math.max(1e-6, 1 - sum / s.rows);
                }
            } finally {
                uploaded.forEach(backend::free);
            }
            seconds.merge("measure: forward", (System.nanoTime() - t0) / 1e9, Double::sum);

            // the next block sees the unquantized output
            s.negate(s.states, refNeg);
            double best = java.util.Arrays.stream(accuracy).max().orElse(0);
            if (best < 0.1) {
                String key = attention ? Measurement.attentionKey(layer) : Measurement.mlpKey(layer);
                throw new qtool.QtoolException(key + ": every option's accuracy is below 0.1 (measurement error; inputs not finite?)");
            }
            return accuracy;
        } finally {
            backend.free(refNeg);
            if (ones != null) backend.free(ones);
            if (normNeg != refNeg) backend.free(normNeg);
        }
    }
}
