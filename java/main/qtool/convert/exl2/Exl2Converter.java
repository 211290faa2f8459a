package qtool.convert.exl2;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.convert.AwqScaledModel;
import qtool.convert.ConvertFiles;
import qtool.convert.JobDir;
import qtool.convert.ResidualStream;
import qtool.convert.SaveSchedule;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.quantize.AwqParams;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;
import qtool.quantize.GptqParams;
import qtool.tokenize.Tokenizer;

/**
 * {@code qtool convert} (EXL2, the default format): ExLlamaV2's convert.py as a sequence of resumable stages,
 * each recorded in job.json's {@code progress.stage} (see {@link Exl2Job}):
 * <ol>
 *   <li>with {@code --awq-scale}, first <b>awq scale</b> ({@link AwqScaledModel}): the AWQ-scaled model in
 *       WORK/awq_model, made on the measurement rows; every later stage reads it instead of the input.</li>
 *   <li><b>measure</b> ({@link MeasurementPass}) on {@code -mr × -ml} calibration tokens, block by block; after
 *       each block the unquantized stream goes to WORK/measure_states.f32 and the measurement so far to
 *       WORK/measurement.json, then {@code measured_blocks} is committed. {@code -m FILE} skips this stage;
 *       {@code -om FILE} ends the job after it.</li>
 *   <li><b>optimize</b> ({@link Exl2Optimizer}): one measured option per block for {@code -b}; the choice is
 *       committed as {@code strategy} (block key → linear → option dict, as ExLlamaV2's job["strategy"]).</li>
 *   <li><b>quantize</b> ({@link Exl2Quantization}) on {@code -r × -l} tokens, block by block (quantized outputs fed
 *       forward; packed tensors in WORK/out_tensor, stream in WORK/quant_states.f32, {@code quantized_blocks}); then
 *       lm_head at {@code -hb} from the final-normed stream, and the calibration perplexity with the quantized
 *       head over the first {@code -mr} rows (as ExLlamaV2).</li>
 *   <li><b>compile</b> ({@link Exl2Compiler}): WORK/out, and the {@code -cf} copy.</li>
 * </ol>
 * Every computation is deterministic, so a job killed anywhere and resumed writes the same bytes.
 */
public final class Exl2Converter {
    /** ExLlamaV2's advice on the calibration perplexity of the quantized model. */
    static final double PPL_DOUBTFUL = 30, PPL_FAILED = 1000;
    /** The stream is checkpointed after every block while it is this small, else at most once a minute. */

    /** What the job did, for the summary. */
    public record Report(Path output, Path measurementFile, boolean measurementOnly, double bitsPerWeight, double targetBits, int headBits,
                         double predictedError, double maxError, double calibrationPpl, Map<String, Double> secondsPerStage, List<String> warnings) {}

    private final Exl2Job job;
    private final Exl2Job.Settings s;
    private final LlamaModel model;
    private final Tokenizer tokenizer;
    private final Backend backend;
    private final DType linearType;
    private final Map<String, Double> seconds = new LinkedHashMap<>();
    private final List<String> warnings = new ArrayList<>();

    public Exl2Converter(Exl2Job job, LlamaModel model, Tokenizer tokenizer, Backend backend) {
        this.job = job;
        this.s = job.settings();
        this.model = model;
        this.tokenizer = tokenizer;
        this.backend = backend;
        this.linearType = ResidualStream.linearType(backend, model);
        seconds.putAll(JobDir.numbers(job.progress().get("seconds")));
        warnings.addAll(JobDir.strings(job.progress().get("warnings")));
    }

    /** Refuses, before any work, a model whose linears the EXL2 layout cannot hold (the head at -hb included). */
    public static void checkStorable(LlamaModel model, int headBits) {
        var cfg = model.config;
        for (String l : List.of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) {
            int[] shape = Measurement.linearShape(cfg, l);
            List<List<Exl2Params>> grid = Measurement.ATTENTION.contains(l) ? Exl2Params.ATTENTION_OPTIONS : Exl2Params.MLP_OPTIONS;
            int j = (Measurement.ATTENTION.contains(l) ? Measurement.ATTENTION : Measurement.MLP).indexOf(l);
            for (List<Exl2Params> row : grid) row.get(j).requireStorable(shape[1], shape[0], "model.layers.*." + Measurement.hfLinear(l) + " (" + shape[0] + "×" + shape[1] + ")");
        }
        Exl2Params head = Exl2Params.HEAD_OPTIONS.get(headBits);
        if (head == null) throw new QtoolException("-hb must be one of " + Exl2Params.HEAD_OPTIONS.keySet() + ", not " + headBits);
        head.requireStorable(cfg.hiddenSize(), cfg.vocabSize(), "lm_head (" + cfg.vocabSize() + "×" + cfg.hiddenSize() + ")");
    }

    public Report run() {
        checkStorable(model, s.headBits());
        if (!s.awqScale()) return stages();
        // AWQ's scales judged by GPTQ at the width of GPTQ's (2, 3, 4, 8) nearest the target, symmetric and act-ordered
        // as EXL2 quantizes
        double b = s.bits();
        GptqParams judge = GptqParams.of(b < 2.5 ? 2 : b < 3.5 ? 3 : b < 6 ? 4 : 8).withActOrder(true);
        Path scaledDir = AwqScaledModel.make(job.dir(), model, backend, linearType, calibration(s.measurementRows(), s.measurementLength()), s.batch(),
                alpha(), scale(), AwqParams.of(judge), judge, seconds, warnings);
        commitTimes();  // the converter of the scaled model reads them back
        try (LlamaModel scaled = LlamaModel.open(scaledDir)) {
            return new Exl2Converter(job, scaled, tokenizer, backend).stages();
        }
    }

    /** measure → optimize → quantize → compile, from the stage job.json names. */
    private Report stages() {
        String stage = job.stage();
        if (stage.equals("finished")) System.err.println("convert: " + job.dir().dir() + " holds this job, finished");
        if (stage.equals("measure")) {
            if (s.reuseMeasurement() != null) {
                Measurement m = Measurement.read(s.reuseMeasurement(), model, false);
                m.write(job.file("measurement.json"));
                System.err.println("convert: reusing the measurement " + s.reuseMeasurement());
            } else {
                measure();
            }
            if (s.outputMeasurement() != null) {
                try {
                    Path target = Files.isDirectory(s.outputMeasurement()) ? s.outputMeasurement().resolve("measurement.json") : s.outputMeasurement();
                    Files.copy(job.file("measurement.json"), target, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                } catch (java.io.IOException e) {
                    throw new QtoolException(s.outputMeasurement() + ": cannot write: " + e.getMessage());
                }
                commitTimes();
                job.stage("finished");
            } else {
                job.stage("optimize");
            }
        }
        if (job.stage().equals("optimize")) {
            long t0 = System.nanoTime();
            optimize();
            seconds.merge("optimize", (System.nanoTime() - t0) / 1e9, Double::sum);
            commitTimes();
            job.stage("quantize");
        }
        if (job.stage().equals("quantize")) {
            quantize();
            job.stage("compile");
        }
        Path output = job.file("out");
        if (job.stage().equals("compile")) {
            long t0 = System.nanoTime();
            output = Exl2Compiler.compile(job, model);
            seconds.merge("compile", (System.nanoTime() - t0) / 1e9, Double::sum);
            commitTimes();
            job.stage("finished");
        } else if (s.compileFull() != null) {
            output = s.compileFull();
        }
        return report(output);
    }

    private void commitTimes() {
        job.dir().commit("seconds", new LinkedHashMap<>(seconds));
        job.dir().commit("warnings", new ArrayList<>(warnings));
    }

    // ---- calibration ---------------------------------------------------------------------------------------------

    /**
     * The tokens of one pass: from -c, the first rows × length tokens (ExLlamaV2 tokenizes per pass from the start
     * of the file); without -c, one set generated by the model with max(-r, -mr) rows of max(-l, -ml) tokens, which
     * each pass crops. Saved in the job so that a resumed job sees the same rows.
     */
    private CalibrationSet calibration(int rows, int length) {
        String name = "cal_" + rows + "x" + length + ".i32";
        Path file = job.file(name);
        if (Files.isRegularFile(file)) {
            int[] t = ConvertFiles.readInts(file);
            if (t.length != rows * length) throw new QtoolException(file + ": corrupted job state (wrong size); use -nr");
            return new CalibrationSet(rows, length, t, s.calibration() == null ? "generated" : s.calibration().toString());
        }
        long t0 = System.nanoTime();
        CalibrationSet cal;
        if (s.calibration() != null) {
            cal = CalibrationSet.fromFile(s.calibration(), tokenizer, rows, length);
        } else {
            int gr = Math.max(s.rows(), s.measurementRows()), gl = Math.max(s.length(), s.measurementLength());
            Path all = job.file("cal_generated_" + gr + "x" + gl + ".i32");
            int[] tokens;
            if (Files.isRegularFile(all)) {
                tokens = ConvertFiles.readInts(all);
            } else {
                int batch = Math.max(1, Math.min(gr - 2, 16));
                try (Forward gen = new Forward(model, backend, linearType, batch, gl, false, true, alpha(), scale())) {
                    tokens = CalibrationSet.generate(gen, tokenizer, gr, gl, s.seed()).tokens();
                }
                job.dir().writeAtomically(all.getFileName().toString(), MemorySegment.ofBuffer(ConvertFiles.ints(tokens)));
            }
            int[] crop = new int[rows * length];
            for (int r = 0; r < rows; r++) System.arraycopy(tokens, r * gl, crop, r * length, length);
            cal = new CalibrationSet(rows, length, crop, "generated by the model (seed " + s.seed() + ")");
        }
        job.dir().writeAtomically(name, MemorySegment.ofBuffer(ConvertFiles.ints(cal.tokens())));
        seconds.merge("calibration", (System.nanoTime() - t0) / 1e9, Double::sum);
        return cal;
    }

    private double alpha() {
        return s.ropeAlpha() == null ? 1.0 : s.ropeAlpha();
    }

    private double scale() {
        return s.ropeScale() == null ? 1.0 : s.ropeScale();
    }

    private Forward forward(int length) {
        return new Forward(model, backend, linearType, Math.max(1, Math.min(s.batch(), Math.max(s.rows(), s.measurementRows()))), length,
                true, false, alpha(), scale());
    }

    /**
     * Restores the stream from WORK/{states} after {@code doneKey} blocks, or embeds the calibration tokens; returns
     * the first block to do.
     */
    private int restore(BlockStream stream, String states, String doneKey, CalibrationSet cal) {
        if (job.progress().get(doneKey) instanceof Number n && BlockStream.exists(job.dir(), states)) {
            stream.load(job.file(states));
            System.err.printf("convert: resuming %s after %d of %d blocks%n", doneKey.replace('_', ' '), n.intValue(), 2 * model.config.numLayers());
            return n.intValue();
        }
        stream.embed(cal.tokens());
        return 0;
    }

    // ---- stage 1: measure ----------------------------------------------------------------------------------------

    private void measure() {
        int layers = model.config.numLayers();
        CalibrationSet cal = calibration(s.measurementRows(), s.measurementLength());
        try (Forward f = forward(s.measurementLength()); BlockStream stream = new BlockStream(f, s.measurementRows(), s.measurementLength())) {
            int start = restore(stream, "measure_states.f32", "measured_blocks", cal);
            List<Measurement.Block> blocks = new ArrayList<>(start == 0 ? List.of() : Measurement.read(job.file("measurement.json"), model, true).blocks());
            if (blocks.size() != start) throw new QtoolException(job.file("measurement.json") + ": corrupted job state (" + blocks.size() + " blocks, job.json says " + start + "); use -nr");
            MeasurementPass pass = new MeasurementPass(stream, linearType, MeasurementPass.ErrorRule.of(s.measurementError()));
            try (Progress bar = new Progress("measure", 2L * layers, "blocks")) {
                walkBlocks(f, stream, start, "measure_states.f32", "measured_blocks", bar, new BlockStage() {
                    @Override
                    public LlamaModel.Layer run(int i, boolean attention, LlamaModel.Layer host, LlamaModel.Layer dev) {
                        blocks.add(pass.measure(i, attention, host, dev, seconds));
                        return dev;
                    }

                    @Override
                    public void save() {
                        new Measurement(List.copyOf(blocks), layers).write(job.file("measurement.json"));
                    }
                });
            }
        }
    }

    /** What a stage does to one block (half a decoder layer), and what it saves beside the residual stream. */
    private interface BlockStage {
        /** Block {@code attention ? 0 : 1} of layer i; returns the device layer to go on with. */
        LlamaModel.Layer run(int i, boolean attention, LlamaModel.Layer host, LlamaModel.Layer dev);

        default void save() {}
    }

    /**
     * Runs {@code stage} over blocks {@code start} .. 2·layers − 1 (each layer uploaded once for its two blocks, the stream
     * checked after each), saving the stream to {@code states}, the stage's own state and the count of blocks done
     * ({@code doneKey} in job.json) on the save schedule.
     */
    private void walkBlocks(Forward f, BlockStream stream, int start, String states, String doneKey, Progress bar, BlockStage stage) {
        int layers = model.config.numLayers();
        SaveSchedule schedule = new SaveSchedule();
        bar.step(start);
        LlamaModel.Layer host = null, dev = null;
        for (int k = start; k < 2 * layers; k++) {
            int i = k / 2;
            if (dev == null) {
                host = model.layer(i);
                dev = f.upload(host);
            }
            dev = stage.run(i, k % 2 == 0, host, dev);
            stream.checkFinite(Measurement.blockKey(k));
            if (k % 2 == 1) {
                f.free(dev);
                LlamaModel.release(host);
                dev = null;
            }
            if (schedule.due(k == 2 * layers - 1)) {
                long t0 = System.nanoTime();
                stream.save(job.dir(), states);
                stage.save();
                commitTimes();
                job.dir().commit(doneKey, k + 1);
                schedule.saved(t0);
            }
            bar.step(1);
        }
        if (dev != null) f.free(dev);
    }

    // ---- stage 2: optimize ---------------------------------------------------------------------------------------

    /** Parameters the budget counts: ExLlamaV2's decoder modules' numel (the blocks' linears and their norms). */
    static long decoderNumel(ModelConfig cfg) {
        long n = 0;
        for (String l : List.of("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) {
            int[] shape = Measurement.linearShape(cfg, l);
            n += (long) shape[0] * shape[1];
        }
        return (n + 2L * cfg.hiddenSize()) * cfg.numLayers();
    }

    private void optimize() {
        Measurement m = Measurement.read(job.file("measurement.json"), model, false);
        List<List<Exl2Optimizer.Option>> blocks = new ArrayList<>();
        for (Measurement.Block b : m.blocks()) {
            blocks.add(b.entries().stream().map(e -> new Exl2Optimizer.Option(e.totalBits(), e.error())).toList());
        }
        Exl2Optimizer.Solution sol = Exl2Optimizer.optimize(blocks, decoderNumel(model.config), s.bits());
        Map<String, Object> strategy = new LinkedHashMap<>();
        for (int k = 0; k < m.blocks().size(); k++) {
            Measurement.Entry e = m.blocks().get(k).entries().get(sol.choice()[k]);
            Map<String, Object> opts = new LinkedHashMap<>();
            e.options().forEach((l, p) -> opts.put(l, p.toJson()));
            opts.put("accuracy", e.accuracy());
            opts.put("total_bits", e.totalBits());
            strategy.put(m.blocks().get(k).key(), opts);
        }
        job.dir().commit("strategy", strategy);
        Map<String, Object> result = new LinkedHashMap<>();
        result.put("bits_per_weight", sol.bitsPerWeight());
        result.put("predicted_error", sol.predictedError());
        result.put("max_error", sol.maxError());
        job.dir().commit("optimized", result);
        System.err.printf("convert: optimized for %.4f bpw: %.4f bpw achieved, predicted error %.6f (largest block error %.6f)%n",
                s.bits(), sol.bitsPerWeight(), sol.predictedError(), sol.maxError());
    }

    private Map<String, Exl2Params> strategyOf(String block) {
        Map<String, Object> st = Json.object(job.progress().get("strategy"), "job.json: strategy");
        Map<String, Object> b = Json.object(st.get(block), "job.json: strategy." + block);
        Map<String, Exl2Params> out = new LinkedHashMap<>();
        for (String l : block.endsWith(".self_attn") ? Measurement.ATTENTION : Measurement.MLP) {
            out.put(l, Exl2Params.fromJson(Json.object(b.get(l), "job.json: strategy." + block + "." + l), "job.json: strategy." + block + "." + l));
        }
        return out;
    }

    // ---- stage 3: quantize ---------------------------------------------------------------------------------------

    private void quantize() {
        int layers = model.config.numLayers();
        CalibrationSet cal = calibration(s.rows(), s.length());
        try (Forward f = forward(s.length()); BlockStream stream = new BlockStream(f, s.rows(), s.length())) {
            int start = restore(stream, "quant_states.f32", "quantized_blocks", cal);
            Exl2Quantization pass = new Exl2Quantization(stream, linearType);
            try (Progress bar = new Progress("quantize", 2L * layers + 1, "blocks")) {
                walkBlocks(f, stream, start, "quant_states.f32", "quantized_blocks", bar, (i, attention, host, dev) ->
                        pass.quantize(i, attention, strategyOf(Measurement.blockKey(2 * i + (attention ? 0 : 1))), host, dev, job.dir(), seconds));
                head(f, stream, cal);
                bar.step(1);
            }
        }
        commitTimes();
    }

    /** lm_head at -hb from the final-normed stream, then the calibration perplexity through the quantized head. */
    private void head(Forward f, BlockStream stream, CalibrationSet cal) {
        long t0 = System.nanoTime();
        int hidden = model.config.hiddenSize();
        Tensor norm = backend.upload(model.finalNorm(), DType.F32);
        Tensor h = backend.allocate(DType.F32, hidden, hidden);
        Exl2Tensor q;
        try {
            backend.copyFromHost(MemorySegment.ofArray(new float[hidden * hidden]), h);
            for (int r0 = 0; r0 < stream.rows; r0 += stream.batch) {
                int nr = Math.min(stream.batch, stream.rows - r0);
                Tensor x = stream.work.rowSlice(0, (long) nr * stream.length);
                backend.rmsNorm(x, stream.rowsOf(stream.states, r0, nr), norm, model.config.rmsNormEps());
                backend.accumulateGram(h, x);
            }
            Tensor w = backend.upload(model.lmHead(), DType.F32);
            try (Exl2Gptq.Factor factor = backend.exl2Prepare(h)) {
                q = backend.exl2Quantize(factor, w, Exl2Params.HEAD_OPTIONS.get(s.headBits()));
            } finally {
                backend.free(w);
            }
        } finally {
            backend.free(h);
            backend.free(norm);
        }
        Exl2Quantization.save(job.dir(), "lm_head", Map.of("lm_head", q), Map.of());
        seconds.merge("quantize: lm_head", (System.nanoTime() - t0) / 1e9, Double::sum);

        t0 = System.nanoTime();
        Tensor head = backend.upload(new Tensor(MemorySegment.ofArray(q.dequantized()), DType.F32, new long[] {q.out(), q.in()}), linearType);
        double nll = 0;
        long n = 0;
        int len = stream.length, rows = Math.min(stream.rows, s.measurementRows());
        try {
            for (int r = 0; r < rows; r += stream.batch) {
                int nr = Math.min(stream.batch, rows - r);
                int[] targets = new int[nr * len];
                for (int j = 0; j < targets.length; j++) targets[j] = (j + 1) % len == 0 ? -1 : cal.tokens()[r * len + j + 1];
                for (float v : f.nll(stream.rowsOf(stream.states, r, nr), targets, head)) nll += v;
                n += (long) nr * (len - 1);
            }
        } finally {
            backend.free(head);
        }
        double ppl = Math.exp(nll / n);
        seconds.merge("evaluate", (System.nanoTime() - t0) / 1e9, Double::sum);
        System.err.printf("convert: calibration perplexity (quant): %.4f%n", ppl);
        if (ppl >= PPL_FAILED || !Double.isFinite(ppl)) {
            warnings.add(String.format("calibration perplexity (quant) %.1f: in the thousands, the conversion has most likely failed", ppl));
        } else if (ppl >= PPL_DOUBTFUL) {
            warnings.add(String.format("calibration perplexity (quant) %.2f is 30 or more: the result is doubtful (fine for a model whose unquantized perplexity on this text is as high)", ppl));
        }
        job.dir().commit("calibration_ppl", Double.isFinite(ppl) ? ppl : null);
    }

    // ---- report --------------------------------------------------------------------------------------------------

    private Report report(Path output) {
        Map<String, Object> p = job.progress();
        Map<String, Object> opt = p.get("optimized") instanceof Map<?, ?> ? Json.object(p.get("optimized"), "optimized") : Map.of();
        double bpw = JobDir.number(opt.get("bits_per_weight")), pred = JobDir.number(opt.get("predicted_error"));
        double max = JobDir.number(opt.get("max_error")), ppl = JobDir.number(p.get("calibration_ppl"));
        return new Report(output, job.file("measurement.json"), s.outputMeasurement() != null, bpw, s.bits(), s.headBits(), pred, max, ppl,
                new LinkedHashMap<>(seconds), List.copyOf(warnings));
    }
}
