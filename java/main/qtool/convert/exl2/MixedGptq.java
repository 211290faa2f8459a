package qtool.convert.exl2;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.calibrate.CalibrationSet;
import qtool.convert.JobDir;
import qtool.convert.SaveSchedule;
import qtool.format.gptq.GptqLayout;
import qtool.load.Json;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.quantize.GptqParams;

/**
 * Mixed-bit GPTQ ({@code convert --format gptq --candidate-bits B… [-b TARGET]}): one GPTQ width per linear, chosen
 * the way ExLlamaV2 chooses EXL2 options. For each decoder layer's attention and MLP block, on the unquantized
 * residual stream ({@link MeasurementPass}): each linear is quantized by GPTQ at every candidate width from the
 * block's Gram matrices (the job's group size, sym and act-order), the block runs with each combination of widths,
 * and its accuracy is 1 − the mean relative Frobenius error of its output relative to the block's own contribution
 * (y − x, not y: {@link MeasurementPass.ErrorRule#CONTRIBUTION}). A combination costs
 * what its linears take in the checkpoint (qweight, qzeros, scales, g_idx: {@link GptqLayout#checkpointBits}).
 * {@link Exl2Optimizer} then picks one combination per block, least Σ error², within decoder linear weights ×
 * target bits per weight (default: all linears at the middle candidate).
 *
 * <p><b>Options per block.</b> q/k/v share one width, gate/up share one, o_proj and down_proj each have their own:
 * |B|² combinations per block (9 for three candidates), each measured exactly (the block run with those weights),
 * so no model of how the errors of linears add up is needed and the measurement costs |B|² block forwards besides
 * |B| quantizations of each linear. Tying q/k/v and gate/up loses little: they read one input (one Gram matrix,
 * one sensitivity), and runtimes fuse each set into one matrix (qkv, gate_up), which takes one width; free widths
 * would make |B|⁴ attention combinations for options few runtimes could load.
 *
 * <p>Job state, beside the GPTQ job's own in WORK: {@code measurement.json} ({@code {"candidate_bits": [...],
 * "measurement": {block key: [{"accuracy", "total_bits", "q_proj": bits, ...}, ...]}}}, combinations in
 * {@link #rows} order), the unquantized stream after the last saved block in {@code measure_states.f32}, progress
 * {@code measured_blocks}, and the chosen widths as progress {@code mixed_bits} ({@link Plan}).
 */
public final class MixedGptq {

    /**
     * @param candidateBits    widths to choose from, ascending (2, 3, 4, 8)
     * @param targetBpw        bits per decoder linear weight; null: the middle candidate's, all linears at it
     * @param measurementRows  calibration rows measured (the first of the job's set)
     */
    public record Settings(List<Integer> candidateBits, Double targetBpw, int measurementRows) {
        public Settings {
            for (int b : candidateBits) {
                if (b != 2 && b != 3 && b != 4 && b != 8) throw new QtoolException("--candidate-bits takes widths 2, 3, 4 and 8 (what GPTQ packs), not " + b);
            }
            candidateBits = candidateBits.stream().distinct().sorted().toList();
            if (candidateBits.size() < 2) throw new QtoolException("--candidate-bits needs two or more different widths, not " + candidateBits);
            if (measurementRows < 1) throw new QtoolException("-mr must be ≥ 1");
        }

        /** The job settings these add (a job directory holding other ones is refused). */
        public Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("candidate_bits", candidateBits);
            m.put("target_bpw", targetBpw);
            m.put("measurement_rows", measurementRows);
            return m;
        }
    }

    /**
     * The chosen width of every decoder linear (full name → bits) and what the optimizer predicts: bits per weight
     * (checkpoint bits over decoder linear weights) and √(Σ e²) over the blocks.
     */
    public record Plan(Map<String, Integer> bits, double targetBpw, double bitsPerWeight, double predictedError, double maxError) {

        /** Linears per width, ascending. */
        public Map<Integer, Integer> histogram() {
            Map<Integer, Integer> h = new TreeMap<>();
            bits.values().forEach(b -> h.merge(b, 1, Integer::sum));
            return h;
        }

        /** The most common width (the narrower on a tie): the checkpoint's base bits. */
        public int baseBits() {
            return histogram().entrySet().stream().max((a, b) -> a.getValue().equals(b.getValue()) ? b.getKey() - a.getKey() : a.getValue() - b.getValue())
                    .orElseThrow().getKey();
        }

        public Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("target_bpw", targetBpw);
            m.put("bits_per_weight", bitsPerWeight);
            m.put("predicted_error", predictedError);
            m.put("max_error", maxError);
            m.put("linears", bits);
            return m;
        }

        public static Plan fromJson(Object o, String where) {
            try {
                Map<String, Object> m = Json.object(o, where);
                Map<String, Integer> bits = new LinkedHashMap<>();
                Json.object(m.get("linears"), where + ".linears").forEach((k, v) -> bits.put(k, ((Number) v).intValue()));
                return new Plan(bits, num(m, "target_bpw"), num(m, "bits_per_weight"), num(m, "predicted_error"), num(m, "max_error"));
            } catch (ClassCastException | NullPointerException e) {
                throw new QtoolException(where + ": corrupted job state; use -nr to start over");
            }
        }

        private static double num(Map<String, Object> m, String key) {
            return ((Number) m.get(key)).doubleValue();
        }
    }

    /** A measured combination: the block's accuracy, its checkpoint bits, and the width of each linear (short name). */
    record Entry(double accuracy, long totalBits, Map<String, Integer> bits) {}

    private static final String MEASUREMENT = "measurement.json", STATES = "measure_states.f32";
    private static final List<String> LINEARS = List.of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj");

    private final JobDir job;
    private final LlamaModel model;
    private final GptqParams params;
    private final Settings s;

    private MixedGptq(JobDir job, LlamaModel model, GptqParams params, Settings s) {
        this.job = job;
        this.model = model;
        this.params = params;
        this.s = s;
    }

    /**
     * The job's plan: read back when committed, else measured (resuming after the last saved block) and optimized,
     * then committed as progress {@code mixed_bits}.
     *
     * @param f   the converter's forward pass (on the device; its batch and length)
     * @param cal the job's calibration set; the first {@code measurementRows} rows are measured
     */
    public static Plan plan(JobDir job, LlamaModel model, Forward f, CalibrationSet cal, GptqParams params, Settings s, Map<String, Double> seconds) {
        if (job.progress().get("mixed_bits") != null) return Plan.fromJson(job.progress().get("mixed_bits"), job.file(JobDir.JOB) + ": mixed_bits");
        MixedGptq m = new MixedGptq(job, model, params, s);
        double target = m.target();
        double[] range = Exl2Optimizer.reachableBpw(m.costs(), m.numel());
        if (target < range[0] - 1e-9 || target > range[1] + 1e-9) {  // said before measuring, not after
            throw new QtoolException(String.format("target %.4f bits per weight is outside the range %.4f to %.4f that widths %s reach on this model",
                    target, range[0], range[1], s.candidateBits()));
        }
        List<List<Entry>> blocks = m.measure(f, cal, seconds);
        long t0 = System.nanoTime();
        Plan plan = m.optimize(blocks, target);
        seconds.merge("optimize", (System.nanoTime() - t0) / 1e9, Double::sum);
        job.commit("mixed_bits", plan.toJson());
        System.err.printf("convert: mixed-bit GPTQ for %.4f bpw: %.4f bpw achieved, predicted error %.6f (largest block error %.6f); linears per width %s%n",
                plan.targetBpw(), plan.bitsPerWeight(), plan.predictedError(), plan.maxError(), plan.histogram());
        return plan;
    }

    /** Block combinations: row[j] = the candidate index of the block's j-th linear; q/k/v and gate/up tied. */
    List<int[]> rows(boolean attention) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        int n = s.candidateBits().size();
        List<int[]> rows = new ArrayList<>();
        for (int tied = 0; tied < n; tied++) {
            for (int own = 0; own < n; own++) {
                int[] row = new int[linears.size()];
                for (int j = 0; j < row.length; j++) row[j] = ownWidth(linears.get(j)) ? own : tied;
                rows.add(row);
            }
        }
        return rows;
    }

    private static boolean ownWidth(String shortName) {
        return shortName.equals("o_proj") || shortName.equals("down_proj");
    }

    /** The widths of a combination, by short name. */
    private Map<String, Integer> widths(boolean attention, int[] row) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        Map<String, Integer> w = new LinkedHashMap<>();
        for (int j = 0; j < row.length; j++) w.put(linears.get(j), s.candidateBits().get(row[j]));
        return w;
    }

    /** Checkpoint bits of a combination. */
    private long bits(Map<String, Integer> widths) {
        long total = 0;
        for (var e : widths.entrySet()) total += bits(e.getKey(), e.getValue());
        return total;
    }

    /** Checkpoint bits of linear {@code l} (short name) at a width. */
    private long bits(String l, int width) {
        int[] shape = Measurement.linearShape(model.config, l);
        return GptqLayout.checkpointBits(shape[1], shape[0], width, params.numGroups(shape[1]));
    }

    /** The decoder's linear weights, over which bits per weight are counted. */
    private long numel() {
        long n = 0;
        for (String l : LINEARS) {
            int[] shape = Measurement.linearShape(model.config, l);
            n += (long) shape[0] * shape[1];
        }
        return n * model.config.numLayers();
    }

    // ---- measure -------------------------------------------------------------------------------------------------

    private List<List<Entry>> measure(Forward f, CalibrationSet cal, Map<String, Double> seconds) {
        int layers = model.config.numLayers(), rows = Math.min(s.measurementRows(), cal.rows()), length = cal.length();
        Backend backend = f.backend;
        try (BlockStream stream = new BlockStream(f, rows, length)) {
            List<List<Entry>> blocks = new ArrayList<>();
            int start = 0;
            if (job.progress().get("measured_blocks") instanceof Number n && BlockStream.exists(job, STATES)) {
                blocks.addAll(read(n.intValue()));
                stream.load(job.file(STATES));
                start = n.intValue();
                System.err.printf("convert: resuming the measurement after %d of %d blocks%n", start, 2 * layers);
            } else {
                stream.embed(Arrays.copyOf(cal.tokens(), rows * length));
            }
            MeasurementPass pass = new MeasurementPass(stream, f.linearType(), MeasurementPass.ErrorRule.CONTRIBUTION);
            SaveSchedule schedule = new SaveSchedule();
            MeasurementPass.LinearOptions gptqAtEachWidth = (l, w, site, gram) ->
                    s.candidateBits().stream().map(b -> backend.gptq(w, gram, params.withBits(b)).dequantized()).toList();
            try (Progress bar = new Progress("measure", 2L * layers, "blocks")) {
                bar.step(start);
                LlamaModel.Layer host = null, dev = null;
                for (int k = start; k < 2 * layers; k++) {
                    int i = k / 2;
                    boolean attention = k % 2 == 0;
                    if (dev == null) {
                        host = model.layer(i);
                        dev = f.upload(host);
                    }
                    List<int[]> combos = rows(attention);
                    double[] accuracy = pass.accuracies(i, attention, host, dev, combos, gptqAtEachWidth, seconds);
                    List<Entry> entries = new ArrayList<>();
                    for (int r = 0; r < combos.size(); r++) {
                        Map<String, Integer> w = widths(attention, combos.get(r));
                        entries.add(new Entry(accuracy[r], bits(w), w));
                    }
                    blocks.add(entries);
                    stream.checkFinite(Measurement.blockKey(k));
                    if (!attention) {
                        f.free(dev);
                        LlamaModel.release(host);
                        dev = null;
                    }
                    if (schedule.due(k == 2 * layers - 1)) {
                        long t0 = System.nanoTime();
                        stream.save(job, STATES);
                        write(blocks);
                        job.commit("measured_blocks", k + 1);
                        schedule.saved(t0);
                    }
                    bar.step(1);
                }
                if (dev != null) f.free(dev);
            }
            return blocks;
        }
    }

    private void write(List<List<Entry>> blocks) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int k = 0; k < blocks.size(); k++) {
            List<Object> list = new ArrayList<>();
            for (Entry e : blocks.get(k)) {
                Map<String, Object> r = new LinkedHashMap<>();
                r.put("accuracy", e.accuracy());
                r.put("total_bits", e.totalBits());
                r.putAll(e.bits());
                list.add(r);
            }
            m.put(Measurement.blockKey(k), list);
        }
        Map<String, Object> root = new LinkedHashMap<>();
        root.put("candidate_bits", s.candidateBits());
        root.put("measurement", m);
        Json.writeFile(job.file(MEASUREMENT), root);
    }

    /** The first {@code count} blocks of the job's measurement.json (being resumed). */
    private List<List<Entry>> read(int count) {
        Path file = job.file(MEASUREMENT);
        try {
            Map<String, Object> m = Json.object(Json.readObject(file).get("measurement"), file + ": measurement");
            List<List<Entry>> blocks = new ArrayList<>();
            for (int k = 0; k < count; k++) {
                List<Entry> entries = new ArrayList<>();
                for (Object o : Json.array(m.get(Measurement.blockKey(k)), file + ": " + Measurement.blockKey(k))) {
                    Map<String, Object> e = Json.object(o, file + ": " + Measurement.blockKey(k));
                    Map<String, Integer> bits = new LinkedHashMap<>();
                    for (String l : k % 2 == 0 ? Measurement.ATTENTION : Measurement.MLP) bits.put(l, ((Number) e.get(l)).intValue());
                    entries.add(new Entry(((Number) e.get("accuracy")).doubleValue(), ((Number) e.get("total_bits")).longValue(), bits));
                }
                if (entries.size() != rows(k % 2 == 0).size()) throw new QtoolException("wrong number of entries");
                blocks.add(entries);
            }
            return blocks;
        } catch (QtoolException | ClassCastException | NullPointerException e) {
            throw new QtoolException(file + ": corrupted job state (" + e.getMessage() + "); use -nr to start over");
        }
    }

    // ---- optimize ------------------------------------------------------------------------------------------------

    /** -b, or the bits per weight of every linear at the middle candidate width. */
    private double target() {
        if (s.targetBpw() != null) return s.targetBpw();
        int middle = s.candidateBits().get((s.candidateBits().size() - 1) / 2);
        long uniform = 0;
        for (String l : LINEARS) uniform += bits(l, middle);
        return (double) uniform * model.config.numLayers() / numel();
    }

    /** Every block's combinations at their bits (errors unknown yet): the range a target must lie in. */
    private List<List<Exl2Optimizer.Option>> costs() {
        List<List<Exl2Optimizer.Option>> blocks = new ArrayList<>();
        for (int k = 0; k < 2 * model.config.numLayers(); k++) {
            List<Exl2Optimizer.Option> options = new ArrayList<>();
            for (int[] row : rows(k % 2 == 0)) options.add(new Exl2Optimizer.Option(bits(widths(k % 2 == 0, row)), 0));
            blocks.add(options);
        }
        return blocks;
    }

    private Plan optimize(List<List<Entry>> blocks, double target) {
        long numel = numel();
        List<List<Exl2Optimizer.Option>> options = blocks.stream()
                .map(b -> b.stream().map(e -> new Exl2Optimizer.Option(e.totalBits(), 1 - e.accuracy())).toList()).toList();
        Exl2Optimizer.Solution sol = Exl2Optimizer.optimize(options, numel, target);
        Map<String, Integer> bits = new LinkedHashMap<>();
        for (int k = 0; k < blocks.size(); k++) {
            Entry e = blocks.get(k).get(sol.choice()[k]);
            String prefix = LlamaModel.prefix(k / 2);
            e.bits().forEach((l, b) -> bits.put(prefix + Measurement.hfLinear(l), b));
        }
        return new Plan(bits, target, sol.bitsPerWeight(), sol.predictedError(), sol.maxError());
    }
}
