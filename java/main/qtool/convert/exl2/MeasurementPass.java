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
import qtool.quantize.Exl2Tensor;

/**
 * Measures one block (ExLlamaV2's measure.py, measure_attn / measure_mlp): on the unquantized residual stream,
 * <ol>
 *   <li>the block runs once over all calibration rows on copies, summing the Gram matrix of each linear input
 *       (q/k/v share one, gate/up share one) and keeping −y, the negated reference output (residual included);</li>
 *   <li>each input is prepared once (act-order permutation, Cholesky factor of the damped H⁻¹) and every distinct
 *       option of each linear sharing it is quantized from that one factor (ExLlamaV2's {@code reuse_h});</li>
 *   <li>for each row of the option grid the block runs with those quantized weights; its error is the mean over
 *       rows of ‖y_q − y‖_F / ‖y‖_F, and accuracy = max(1e-6, 1 − error);</li>
 *   <li>the stream moves on to y, the unquantized output.</li>
 * </ol>
 */
final class MeasurementPass {
    private final BlockStream s;
    private final Backend backend;
    private final DType linearType;

    MeasurementPass(BlockStream stream, DType linearType) {
        this.s = stream;
        this.backend = stream.backend;
        this.linearType = linearType;
    }

    /** Site of a linear's input, by short name. */
    static Site site(String l) {
        return switch (l) {
            case "q_proj", "k_proj", "v_proj" -> Site.ATTN_IN;
            case "o_proj" -> Site.O_IN;
            case "gate_proj", "up_proj" -> Site.MLP_IN;
            default -> Site.DOWN_IN;
        };
    }

    /** Sums the Gram matrices of the block's inputs over all rows (on copies), calling {@code out} per batch output. */
    static EnumMap<Site, Tensor> grams(BlockStream s, LlamaModel.Layer dev, boolean attention, LlamaModel.Layer host,
                                      List<String> linears, BlockStream.BatchAction out) {
        EnumMap<Site, Tensor> grams = new EnumMap<>(Site.class);
        for (String l : linears) {
            int in = host.linear(Measurement.hfLinear(l)).cols();
            grams.computeIfAbsent(site(l), k -> {
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

    Measurement.Block measure(int layer, boolean attention, LlamaModel.Layer host, LlamaModel.Layer dev, Map<String, Double> seconds) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        List<List<Exl2Params>> grid = attention ? Exl2Params.ATTENTION_OPTIONS : Exl2Params.MLP_OPTIONS;
        Exl2Params.Reduced reduced = Exl2Params.reduced(grid, false);
        Tensor refNeg = backend.allocate(DType.F32, s.states.shape());
        try {
            long t0 = System.nanoTime();
            EnumMap<Site, Tensor> grams = grams(s, dev, attention, host, linears, (r0, nr, y) -> {
                s.negate(s.rowsOf(refNeg, r0, nr), y);
                s.sumSquares(y, r0, nr);
            });
            float[] refSquares = s.squares();
            seconds.merge("measure: hessians", (System.nanoTime() - t0) / 1e9, Double::sum);

            // every distinct option of every linear, from one factor per input
            t0 = System.nanoTime();
            Map<String, List<Exl2Tensor>> options = new LinkedHashMap<>();
            Map<String, long[]> optionBits = new LinkedHashMap<>();
            EnumMap<Site, Exl2Gptq.Factor> factors = new EnumMap<>(Site.class);
            try {
                for (int j = 0; j < linears.size(); j++) {
                    String l = linears.get(j);
                    Exl2Gptq.Factor f = factors.computeIfAbsent(site(l), k -> backend.exl2Prepare(grams.get(k)));
                    Tensor w = backend.upload(host.linear(Measurement.hfLinear(l)), DType.F32);
                    List<Exl2Tensor> list = new ArrayList<>();
                    List<Exl2Params> ps = reduced.perProjection().get(j);
                    long[] bits = new long[ps.size()];
                    boolean bias = host.bias(Measurement.hfLinear(l)) != null;
                    try {
                        for (int k = 0; k < ps.size(); k++) {
                            list.add(backend.exl2Quantize(f, w, ps.get(k)));
                            bits[k] = ps.get(k).totalBits(w.cols(), Exl2Params.paddedColumns(w.rows()), bias);
                        }
                    } finally {
                        backend.free(w);
                    }
                    options.put(l, list);
                    optionBits.put(l, bits);
                }
            } finally {
                factors.values().forEach(Exl2Gptq.Factor::close);
                grams.values().forEach(backend::free);
            }
            seconds.merge("measure: quantize", (System.nanoTime() - t0) / 1e9, Double::sum);

            // the block with each grid row's weights
            t0 = System.nanoTime();
            List<Measurement.Entry> entries = new ArrayList<>();
            int[] current = new int[linears.size()];
            java.util.Arrays.fill(current, -1);
            LlamaModel.Layer q = dev;
            List<Tensor> uploaded = new ArrayList<>();
            try {
                for (int[] row : reduced.rows()) {
                    for (int j = 0; j < linears.size(); j++) {
                        if (current[j] == row[j]) continue;
                        Exl2Tensor t = options.get(linears.get(j)).get(row[j]);
                        Tensor w = backend.upload(new Tensor(MemorySegment.ofArray(t.dequantized()), DType.F32, new long[] {t.out(), t.in()}), linearType);
                        uploaded.add(w);
                        Tensor old = q.linear(Measurement.hfLinear(linears.get(j)));
                        if (uploaded.contains(old)) {
                            backend.free(old);
                            uploaded.remove(old);
                        }
                        q = q.withLinear(Measurement.hfLinear(linears.get(j)), w);
                        current[j] = row[j];
                    }
                    s.onCopies(q, attention, null, (r0, nr, yq) -> {
                        backend.add(yq, s.rowsOf(refNeg, r0, nr));
                        s.sumSquares(yq, r0, nr);
                    });
                    float[] diff = s.squares();
                    double sum = 0;
                    for (int r = 0; r < s.rows; r++) sum += Math.sqrt(diff[r]) / Math.sqrt(refSquares[r]);
                    double accuracy = Math.max(1e-6, 1 - sum / s.rows);
                    long bits = 0;
                    Map<String, Exl2Params> chosen = new LinkedHashMap<>();
                    for (int j = 0; j < linears.size(); j++) {
                        bits += optionBits.get(linears.get(j))[row[j]];
                        chosen.put(linears.get(j), reduced.perProjection().get(j).get(row[j]));
                    }
                    entries.add(new Measurement.Entry(accuracy, bits, chosen));
                }
            } finally {
                uploaded.forEach(backend::free);
            }
            seconds.merge("measure: forward", (System.nanoTime() - t0) / 1e9, Double::sum);

            // the next block sees the unquantized output
            s.negate(s.states, refNeg);
            String key = attention ? Measurement.attentionKey(layer) : Measurement.mlpKey(layer);
            double best = entries.stream().mapToDouble(Measurement.Entry::accuracy).max().orElse(0);
            if (best < 0.1) throw new qtool.QtoolException(key + ": every option's accuracy is below 0.1 (measurement error; inputs not finite?)");
            return new Measurement.Block(key, List.copyOf(entries));
        } finally {
            backend.free(refNeg);
        }
    }
}
