package qtool.convert;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.convert.exl2.MixedGptq;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.model.Forward;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;
import qtool.quantize.AwqParams;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.quantize.ReconstructionError;
import qtool.tokenize.Tokenizer;
import qtool.write.SafetensorsWriter;

/**
 * {@code qtool convert --format gptq}: the sequential GPTQ pipeline of the GPTQ paper. The residual stream of every
 * calibration row lives on the device; for each decoder layer in turn, the layer runs over all rows to sum each
 * linear input's Gram matrix XᵀX (q/k/v share one, gate/up share one), each linear is quantized by GPTQ from it,
 * and the layer then runs again with its quantized weights to make the next layer's inputs. With
 * {@code trueSequential} the layer is quantized in four steps (q/k/v, o, gate/up, down), each seeing the inputs the
 * already-quantized linears before it produce. Only one layer's weights are on the device at a time.
 *
 * <p>GPTQ's H is 2/n·XᵀX; the factor changes no quantized weight (damping is relative to the mean diagonal and
 * every update is a ratio of H⁻¹ entries), so the plain sum is used.
 *
 * <p>With {@link #withMixedBits} ({@code --candidate-bits}) each linear gets its own width, planned before the first
 * layer by {@link MixedGptq} (measurement and optimizer of the EXL2 conversion), and the checkpoint's config gives
 * the most common width as {@code bits} and every other linear's in a {@code dynamic} rule.
 *
 * <p>Job state in WORK (see {@link JobDir}): the calibration tokens, each finished layer's quantized tensors, and
 * the residual stream after the last saved layer. A rerun resumes after that layer and, the computation being
 * deterministic, writes the same bytes an uninterrupted run would.
 */
public final class GptqConverter {
    public record Options(Path input, Path work, Path compileDir, GptqParams params, boolean trueSequential, CheckpointFormat format,
                          Path calibrationFile, int rows, int length, long seed, long shardBytes, int batchRows, boolean noResume) {}

    /**
     * What the job did, for the summary. {@code relativeErrors}: per linear, ‖WX − QX‖² / ‖WX‖² on its calibration
     * inputs X in the sequential pipeline (see {@link ReconstructionError}), in quantization order.
     * {@code mixedBits}: each linear's width and the optimizer's figures, with {@code --candidate-bits}; else null.
     */
    public record Report(Path output, int layers, long quantizedParams, long quantizedBits, double calibrationPpl,
                         Map<String, Double> secondsPerStage, List<String> warnings, Map<String, Double> relativeErrors, MixedGptq.Plan mixedBits) {
        /** A job of one width (no {@code --candidate-bits}). */
        public Report(Path output, int layers, long quantizedParams, long quantizedBits, double calibrationPpl,
                      Map<String, Double> secondsPerStage, List<String> warnings, Map<String, Double> relativeErrors) {
            this(output, layers, quantizedParams, quantizedBits, calibrationPpl, secondsPerStage, warnings, relativeErrors, null);
        }

        public double bitsPerWeight() {
            return quantizedParams == 0 ? 0 : (double) quantizedBits / quantizedParams;
        }
    }

    private final Options o;
    private final LlamaModel model;
    private final Backend backend;
    private final Tokenizer tokenizer;
    private final DType linearType;
    private final Map<String, Double> seconds = new LinkedHashMap<>();
    private final List<String> warnings = new ArrayList<>();
    /** Non-null with --awq-scale: AWQ's scale search and folding run on each layer before GPTQ (see AwqScaling). */
    private AwqParams awqScale;
    /** Non-null with --candidate-bits: each linear's width is chosen by measurement (see MixedGptq). */
    private MixedGptq.Settings mixed;
    /** The widths chosen for this job (null without --candidate-bits). */
    private MixedGptq.Plan plan;

    public GptqConverter(Options o, LlamaModel model, Tokenizer tokenizer, Backend backend) {
        this.o = o;
        this.model = model;
        this.tokenizer = tokenizer;
        this.backend = backend;
        this.linearType = ResidualStream.linearType(backend, model);
    }

    /** Everything that determines the output: a job directory holding other settings is refused. */
    public static Map<String, Object> settings(Options o) {
        Map<String, Object> s = new LinkedHashMap<>();
        s.put("format", "gptq");
        s.put("input", o.input.toAbsolutePath().normalize().toString());
        GptqParams p = o.params;
        s.put("bits", p.bits());
        s.put("group_size", p.groupSize());
        s.put("sym", p.sym());
        s.put("act_order", p.actOrder());
        s.put("damp", p.damp());
        s.put("block_size", p.blockSize());
        s.put("static_groups", p.staticGroups());
        s.put("mse", p.mse());
        s.put("true_sequential", o.trueSequential);
        s.put("checkpoint_format", o.format.configName);
        s.put("calibration", o.calibrationFile == null ? "generated" : o.calibrationFile.toAbsolutePath().normalize().toString());
        s.put("rows", o.rows);
        s.put("length", o.length);
        s.put("seed", o.seed);
        s.put("shard_bytes", o.shardBytes);
        return s;
    }

    /** Runs AWQ's scale search and folding on every layer before GPTQ quantizes it ({@code --awq-scale}). */
    public GptqConverter withAwqScale(AwqParams p) {
        this.awqScale = p;
        return this;
    }

    /** Gives each linear its own width, chosen by measurement among {@code m}'s candidates ({@code --candidate-bits}). */
    public GptqConverter withMixedBits(MixedGptq.Settings m) {
        this.mixed = m;
        return this;
    }

    public Report run() {
        Map<String, Object> settings = settings(o);
        if (awqScale != null) settings.put("awq_scale", true);
        if (mixed != null) {
            if (awqScale != null) throw new QtoolException("--candidate-bits and --awq-scale do not combine (the measurement runs on the unscaled model)");
            settings.remove("bits");
            settings.putAll(mixed.toJson());
        }
        JobDir job = JobDir.open(o.work, settings, o.noResume);
        Path out = job.file("out");
        if (!Boolean.TRUE.equals(job.progress().get("finished")) || !Files.isDirectory(out)) {
            convert(job);
        } else {
            System.err.println("convert: " + o.work + " holds this job, finished; output in " + out);
        }
        if (o.compileDir != null) ConvertFiles.compileFull(out, o.compileDir);
        return report(job);
    }

    private void convert(JobDir job) {
        var cfg = model.config;
        int batch = Math.max(1, Math.min(o.batchRows, o.rows));
        try (Forward f = new Forward(model, backend, linearType, batch, o.length, true, false, 1.0, 1.0)) {
            long t0 = System.nanoTime();
            CalibrationSet cal = ResidualStream.calibration(job, model, tokenizer, backend, linearType, o.calibrationFile, o.rows, o.length, o.seed);
            seconds.put("calibration", (System.nanoTime() - t0) / 1e9);
            if (mixed != null) plan = MixedGptq.plan(job, model, f, cal, o.params, mixed, seconds);
            try (ResidualStream stream = new ResidualStream(backend, o.rows, o.length, cfg.hiddenSize(), batch)) {
                int start = stream.restore(job, f, cal);
                try (Progress bar = new Progress("gptq", cfg.numLayers(), "layers")) {
                    bar.step(start);
                    for (int i = start; i < cfg.numLayers(); i++) {
                        quantizeLayer(job, f, i, stream);
                        stream.checkFinite(model.dir, i);
                        stream.saveIfDue(job, i, i == cfg.numLayers() - 1);
                        bar.step(1);
                    }
                }
                t0 = System.nanoTime();
                job.commit("calibration_ppl", stream.perplexity(f, cal));
                seconds.merge("evaluate", (System.nanoTime() - t0) / 1e9, Double::sum);
            }
            t0 = System.nanoTime();
            assemble(job);
            seconds.merge("write", (System.nanoTime() - t0) / 1e9, Double::sum);
            job.commit("seconds", new LinkedHashMap<>(seconds));
            job.commit("warnings", new ArrayList<>(warnings));
            job.commit("finished", true);
        }
    }

    // ---- one layer -----------------------------------------------------------------------------------------------


    private void quantizeLayer(JobDir job, Forward f, int i, ResidualStream stream) {
        List<String> all = LlamaModel.Layer.LINEARS;
        List<List<String>> steps = o.trueSequential
                ? List.of(all.subList(0, 3), all.subList(3, 4), all.subList(4, 6), all.subList(6, 7))
                : List.of(all);
        LlamaModel.Layer host = model.layer(i);
        if (awqScale != null) {
            AwqScaling.Result scaled = AwqScaling.apply(f, host, stream, false, awqScale, o.params);
            for (String n : scaled.notes()) if (!warnings.contains(n)) warnings.add(n);
            scaled.seconds().forEach((k, v) -> seconds.merge(k, v, Double::sum));
            host = scaled.layer();
            writeNorms(job, i, host);
        }
        LlamaModel.Layer dev = f.upload(host);
        Map<String, Double> errors = new LinkedHashMap<>();
        Path tmp = job.file("layers").resolve(String.format(".%04d.tmp", i));
        // each linear's tensors go to the layer's file as soon as they are made: no layer's results pile up on the heap
        try (SafetensorsWriter layerFile = newLayerFile(tmp)) {
            for (List<String> step : steps) {
                EnumMap<Site, Tensor> grams = new EnumMap<>(Site.class);
                for (String l : step) {
                    int in = host.linear(l).cols();
                    if (!grams.containsKey(Site.of(l))) {
                        Tensor h = backend.allocate(DType.F32, in, in);
                        backend.copyFromHost(MemorySegment.ofArray(new float[in * in]), h);
                        grams.put(Site.of(l), h);
                    }
                }
                long t0 = System.nanoTime();
                stream.forEachBatch(f, dev, false, (first, s, x) -> {
                    Tensor h = grams.get(s);
                    if (h != null) backend.accumulateGram(h, x);
                });
                backend.synchronize();
                seconds.merge("hessians", (System.nanoTime() - t0) / 1e9, Double::sum);
                t0 = System.nanoTime();
                for (String l : step) {
                    GptqResult r;
                    Tensor w = backend.upload(host.linear(l), DType.F32);
                    try {
                        r = backend.gptq(w, grams.get(Site.of(l)), params(LlamaModel.prefix(i) + l));
                    } finally {
                        backend.free(w);
                    }
                    String name = LlamaModel.prefix(i) + l;
                    for (float v : r.dequantized()) {
                        if (!Float.isFinite(v)) throw new QtoolException(model.dir + ": " + name + ": NaN or Inf in its weights or inputs (layer " + i + ")");
                    }
                    if (r.dampRaised()) {
                        String msg = name + ": damping raised from " + o.params.damp() + " to " + r.damp() + " for the Cholesky factorization";
                        warnings.add(msg);
                        System.err.println("\nconvert: " + msg);
                    }
                    errors.put(name, ReconstructionError.relative(backend, host.linear(l), r.dequantized(), grams.get(Site.of(l))));
                    writeLinear(layerFile, name, r, host.bias(l));
                    if (host.linear(l).data().isMapped()) host.linear(l).data().unload(); // read for the last time
                    Tensor q = backend.upload(new Tensor(MemorySegment.ofArray(r.dequantized()), DType.F32, new long[] {r.out(), r.in()}), linearType);
                    backend.free(dev.linear(l));
                    dev = dev.withLinear(l, q);
                }
                seconds.merge("gptq", (System.nanoTime() - t0) / 1e9, Double::sum);
                grams.values().forEach(backend::free);
            }
            long t0 = System.nanoTime();
            stream.forEachBatch(f, dev, true, null);
            backend.synchronize();
            seconds.merge("forward", (System.nanoTime() - t0) / 1e9, Double::sum);
        } finally {
            f.free(dev);
        }
        finishLayer(job, i, tmp, errors);
        LlamaModel.release(host);
    }

    /** The GPTQ settings of linear {@code name}: the job's, at the width the plan gives it with --candidate-bits. */
    private GptqParams params(String name) {
        return plan == null ? o.params : o.params.withBits(plan.bits().get(name));
    }

    /** A fresh temporary directory for layer i's file (a killed run may have left one). */
    private static SafetensorsWriter newLayerFile(Path tmp) {
        try {
            ConvertFiles.deleteTree(tmp);
            Files.createDirectories(tmp);
        } catch (IOException e) {
            throw new QtoolException(tmp + ": " + e.getMessage());
        }
        return new SafetensorsWriter(tmp, 0);
    }

    /** One linear's GPTQ tensors (or, when GPTQ cannot pack its shape, its grid as fp16) into the layer's file. */
    private void writeLinear(SafetensorsWriter w, String prefix, GptqResult r, Tensor b) {
        GptqPacker.PackedLinear packed;
        try {
            packed = GptqPacker.pack(prefix, r, o.format);
        } catch (QtoolException unpackable) {
            // GPTQ packs whole 32-bit words along both dimensions; a shape that does not fill them is kept on its
            // quantization grid but stored as fp16, and marked unquantized in the config
            warnings.add(unpackable.getMessage() + "; stored dequantized as fp16 (" + prefix + ".weight)"); // listed in the summary
            w.add(prefix + ".weight", DType.F16, new long[] {r.out(), r.in()}, GptqCheckpoint.littleEndian(ConvertFiles.toHalf(r.dequantized())));
            if (b != null) w.add(prefix + ".bias", DType.F16, b.shape(), GptqCheckpoint.littleEndian(ConvertFiles.toHalf(b.toFloatArray())));
            return;
        }
        GptqCheckpoint.write(w, packed, b == null ? null : b.toFloatArray());
        if (packed.v1WrappedZeros() > 0) {
            warnings.add(prefix + ": " + packed.v1WrappedZeros() + " zero points of 0 cannot be stored in the v1 format (loaders read them as "
                    + (1 << r.params().bits()) + "); use --checkpoint-format gptq_v2 or --sym"); // listed in the summary
        }
    }

    /** Layer i's file moved into WORK/layers, finished (its own job step), with its linears' errors. */
    private void finishLayer(JobDir job, int i, Path tmp, Map<String, Double> errors) {
        try {
            JobDir.moveAtomically(tmp.resolve("model.safetensors"), job.file("layers").resolve(String.format("%04d.safetensors", i)));
            Files.delete(tmp);
        } catch (IOException e) {
            throw new QtoolException(tmp + ": " + e.getMessage());
        }
        Map<String, Object> all = new LinkedHashMap<>();
        if (job.progress().get("relative_errors") instanceof Map<?, ?> m) m.forEach((k, v) -> all.put(String.valueOf(k), v));
        all.putAll(errors);
        job.commit("relative_errors", all);
        job.commit("layers_done", i + 1);
    }

    /** The norms AWQ scaling divided by its scales, for {@link #assemble} (WORK/norms, one file a layer). */
    private void writeNorms(JobDir job, int i, LlamaModel.Layer scaled) {
        String p = LlamaModel.prefix(i);
        ConvertFiles.writeLayerFile(job.file("norms"), i, w -> {
            ConvertFiles.half(w, p + "input_layernorm.weight", scaled.inputNorm(), model.dir);
            ConvertFiles.half(w, p + "post_attention_layernorm.weight", scaled.postNorm(), model.dir);
        });
    }

    // ---- evaluation and output -----------------------------------------------------------------------------------

    /** WORK/out: the GPTQ checkpoint, every non-quantized tensor in fp16, configs and tokenizer files. */
    private void assemble(JobDir job) {
        Path out = job.file("out"), tmp = job.file(".out.tmp");
        try {
            ConvertFiles.deleteTree(tmp);
            Files.createDirectories(tmp);
            var cfg = model.config;
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, o.shardBytes); Weights layerFiles = Weights.open(job.file("layers"));
                 Weights norms = awqScale == null ? null : Weights.open(job.file("norms"))) {
                ConvertFiles.half(w, model, "model.embed_tokens.weight");
                for (int i = 0; i < cfg.numLayers(); i++) {
                    String p = LlamaModel.prefix(i);
                    half(w, p + "input_layernorm.weight", norms);
                    for (var e : layerFiles.all().entrySet()) {
                        if (!e.getKey().startsWith(p)) continue;
                        w.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
                        e.getValue().data().unload(); // copied: its mapped pages need not stay resident
                    }
                    half(w, p + "post_attention_layernorm.weight", norms);
                }
                ConvertFiles.half(w, model, "model.norm.weight");
                if (!model.headTied()) ConvertFiles.half(w, model, "lm_head.weight");
            }
            Map<String, Object> config = Json.readObject(model.dir.resolve("config.json"));
            config.put("torch_dtype", "float16");
            List<String> unquantized = new ArrayList<>();
            try (Weights layerFiles = Weights.open(job.file("layers"))) {
                for (String n : layerFiles.all().keySet()) if (n.endsWith(".weight")) unquantized.add(n.substring(0, n.length() - ".weight".length()));
            }
            GptqParams base = plan == null ? o.params : o.params.withBits(plan.baseBits());
            Map<String, GptqParams> perModule = new LinkedHashMap<>();
            if (plan != null) plan.bits().keySet().forEach(name -> perModule.put(name, params(name)));
            GptqCheckpoint.writeConfigs(tmp, config, GptqCheckpoint.quantizationConfig(base, perModule, unquantized, o.format, o.trueSequential));
            ConvertFiles.copyNonWeightFiles(model.dir, tmp);
            ConvertFiles.deleteTree(out);
            JobDir.moveAtomically(tmp, out);
        } catch (IOException e) {
            throw new QtoolException(out + ": " + e.getMessage());
        }
    }

    /** A tensor in fp16: from {@code scaled} (the norms AWQ scaling folded into) when it has it, else the model's. */
    private void half(SafetensorsWriter w, String name, Weights scaled) {
        Tensor t = scaled != null && scaled.has(name) ? scaled.get(name) : model.weights.get(name);
        ConvertFiles.half(w, name, t, model.dir);
    }

    private Report report(JobDir job) {
        Path out = job.file("out");
        long params = 0, bits = 0;
        try (Weights w = Weights.open(out)) {
            for (var e : w.all().entrySet()) {
                String n = e.getKey();
                if (n.endsWith(".qweight")) {
                    String prefix = n.substring(0, n.length() - ".qweight".length());
                    long in = w.get(prefix + ".g_idx").numel(), outF = w.get(prefix + ".scales").shape()[1];
                    params += in * outF;
                    for (String part : List.of(".qweight", ".qzeros", ".scales", ".g_idx")) bits += 8 * w.get(prefix + part).byteSize();
                }
            }
        }
        Map<String, Object> p = job.progress();
        Map<String, Double> secs = JobDir.numbers(p.get("seconds"));
        List<String> warn = JobDir.strings(p.get("warnings"));
        double ppl = JobDir.number(p.get("calibration_ppl"));
        Map<String, Double> errors = JobDir.numbers(p.get("relative_errors"));
        MixedGptq.Plan mixedBits = p.get("mixed_bits") == null ? null : MixedGptq.Plan.fromJson(p.get("mixed_bits"), job.file(JobDir.JOB) + ": mixed_bits");
        return new Report(o.compileDir != null ? o.compileDir : out, model.config.numLayers(), params, bits, ppl, secs, warn, errors, mixedBits);
    }
}
