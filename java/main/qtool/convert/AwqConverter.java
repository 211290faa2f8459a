package qtool.convert;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.format.awq.AwqCheckpoint;
import qtool.format.awq.AwqLayout;
import qtool.format.awq.AwqPacker;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.quantize.Awq;
import qtool.quantize.AwqParams;
import qtool.quantize.AwqResult;
import qtool.tokenize.Tokenizer;
import qtool.write.SafetensorsWriter;

/**
 * {@code qtool convert --format awq}: AutoAWQ's pipeline. The calibration rows' residual stream lives on the
 * device; for each decoder layer in turn: one pass over the rows captures every linear's inputs;
 * {@link AwqScaling} searches and folds the four groups' scales; each linear gets its clipping searched
 * ({@link Awq#searchClip}, on the device through {@link Backend#awqClip}); all seven are rounded to the group grid and packed in the GEMM layout
 * ({@link AwqLayout}); the stream moves on through the QUANTIZED layer. The finished checkpoint is then read back
 * and run over the calibration rows for the summary's perplexity.
 *
 * <p>Four choices differ from AutoAWQ, each because it measured better (stories260K at g128, four calibration
 * sets: see the README; AutoAWQ's choices were up to 11 % behind GPTQ): the next layer's inputs come from this layer
 * quantized, as in GPTQ's sequential pipeline (AutoAWQ runs the unquantized layers); the scale exponent's grid has 40
 * points, not 20 ({@link Awq#FINE_SCALE_GRID}); the clip search also tries two-sided ranges for the zero-point grid;
 * q/k are clipped too (AutoAWQ's {@code avoid_clipping} leaves them). {@code autoawqExact} restores all four.
 *
 * <p>Job state in WORK as for GPTQ ({@link JobDir}, {@link ResidualStream}): a killed job resumes after the last
 * finished layer and writes the same bytes.
 */
public final class AwqConverter {
    public record Options(Path input, Path work, Path compileDir, AwqParams params, Path calibrationFile, int rows, int length, long seed,
                          long shardBytes, int batchRows, boolean noResume, boolean autoawqExact) {}

    /** AutoAWQ's {@code avoid_clipping} (with autoawqExact): q/k feed the q·k product, whose error the clip search cannot see. */
    private static final List<String> AUTOAWQ_NOT_CLIPPED = List.of("self_attn.q_proj", "self_attn.k_proj");

    private final Options o;
    private final LlamaModel model;
    private final Backend backend;
    private final Tokenizer tokenizer;
    private final DType linearType;
    private final Map<String, Double> seconds = new LinkedHashMap<>();
    private final List<String> warnings = new ArrayList<>();

    public AwqConverter(Options o, LlamaModel model, Tokenizer tokenizer, Backend backend) {
        this.o = o;
        this.model = model;
        this.tokenizer = tokenizer;
        this.backend = backend;
        this.linearType = ResidualStream.linearType(backend, model);
    }

    /** Everything that determines the output: a job directory holding other settings is refused. */
    public static Map<String, Object> settings(Options o) {
        Map<String, Object> s = new LinkedHashMap<>();
        s.put("format", "awq");
        s.put("input", o.input.toAbsolutePath().normalize().toString());
        s.put("w_bit", o.params.bits());
        s.put("q_group_size", o.params.groupSize());
        s.put("zero_point", o.params.zeroPoint());
        s.put("calibration", o.calibrationFile == null ? "generated" : o.calibrationFile.toAbsolutePath().normalize().toString());
        s.put("rows", o.rows);
        s.put("length", o.length);
        s.put("seed", o.seed);
        s.put("shard_bytes", o.shardBytes);
        s.put("autoawq_exact", o.autoawqExact);
        return s;
    }

    public GptqConverter.Report run() {
        JobDir job = JobDir.open(o.work, settings(o), o.noResume);
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
        CalibrationSet cal;
        try (Forward f = new Forward(model, backend, linearType, batch, o.length, true, false, 1.0, 1.0);
             ResidualStream stream = new ResidualStream(backend, o.rows, o.length, cfg.hiddenSize(), batch)) {
            long t0 = System.nanoTime();
            cal = ResidualStream.calibration(job, model, tokenizer, backend, linearType, o.calibrationFile, o.rows, o.length, o.seed);
            seconds.put("calibration", (System.nanoTime() - t0) / 1e9);
            int start = stream.restore(job, f, cal);
            try (Progress bar = new Progress("awq", cfg.numLayers(), "layers")) {
                bar.step(start);
                for (int i = start; i < cfg.numLayers(); i++) {
                    quantizeLayer(job, f, i, stream);
                    stream.checkFinite(model.dir, i);
                    stream.saveIfDue(job, i, i == cfg.numLayers() - 1);
                    bar.step(1);
                }
            }
        }
        long t0 = System.nanoTime();
        List<String> notConverted = assemble(job);
        seconds.merge("write", (System.nanoTime() - t0) / 1e9, Double::sum);
        for (String m : notConverted) {
            String msg = m + ": stored as fp16 on its grid and listed in modules_to_not_convert ("
                    + AwqLayout.unpackableReason(outFeatures(m), inFeatures(m), o.params.bits(), o.params.groupSize()) + ")";
            if (!warnings.contains(msg)) warnings.add(msg);
        }
        t0 = System.nanoTime();
        job.commit("calibration_ppl", evaluate(job.file("out"), cal));
        seconds.merge("evaluate", (System.nanoTime() - t0) / 1e9, Double::sum);
        job.commit("seconds", new LinkedHashMap<>(seconds));
        job.commit("warnings", new ArrayList<>(warnings));
        job.commit("finished", true);
    }

    // ---- one layer -----------------------------------------------------------------------------------------------

    private void quantizeLayer(JobDir job, Forward f, int i, ResidualStream stream) {
        LlamaModel.Layer host = model.layer(i);
        AwqScaling.Result scaled = AwqScaling.apply(f, host, stream, o.autoawqExact, o.params,
                o.autoawqExact ? Awq.SCALE_GRID : Awq.FINE_SCALE_GRID);
        scaled.seconds().forEach((k, v) -> seconds.merge(k, v, Double::sum));
        for (String n : scaled.notes()) if (!warnings.contains(n)) warnings.add(n);
        LlamaModel.Layer layer = scaled.layer();
        Map<String, AwqResult> results = new LinkedHashMap<>();
        long t0 = System.nanoTime();
        for (String l : LlamaModel.Layer.LINEARS) {
            float[] w = layer.linear(l).toFloatArray();
            int out = (int) layer.linear(l).shape()[0], in = layer.linear(l).cols();
            if (!(o.autoawqExact && AUTOAWQ_NOT_CLIPPED.contains(l))) {
                Awq.applyClip(w, out, in, searchClip(w, out, in, scaled.clipInputs().get(l), scaled.clipTokens()), o.params);
            }
            AwqResult r = Awq.quantize(w, out, in, o.params);
            for (float v : r.dequantized()) {
                if (!Float.isFinite(v)) throw new QtoolException(model.dir + ": " + LlamaModel.prefix(i) + l + ": NaN or Inf in its weights or inputs");
            }
            results.put(l, r);
        }
        seconds.merge("clip and quantize", (System.nanoTime() - t0) / 1e9, Double::sum);
        if (!o.autoawqExact) advance(f, stream, layer, results);
        writeLayer(job, i, layer, results);
        LlamaModel.release(host);
    }

    /** The clip search of one linear on the backend's device ({@link Backend#awqClip}); returns {lo, hi} per [out, groups]. */
    private float[] searchClip(float[] w, int out, int in, float[] x, int tokens) {
        Tensor wd = null, xd = null;
        try {
            wd = backend.upload(new Tensor(MemorySegment.ofArray(w), DType.F32, new long[] {out, in}), DType.F32);
            xd = backend.upload(new Tensor(MemorySegment.ofArray(x), DType.F32, new long[] {tokens, in}), DType.F32);
            return backend.awqClip(wd, xd, o.params, !o.autoawqExact);
        } finally {
            if (wd != null) backend.free(wd);
            if (xd != null) backend.free(xd);
        }
    }

    /** Moves the stream through the layer as quantized: its norms, with each linear's dequantized weights. */
    private static void advance(Forward f, ResidualStream stream, LlamaModel.Layer layer, Map<String, AwqResult> results) {
        LlamaModel.Layer quantized = layer;
        for (var e : results.entrySet()) {
            float[] w = e.getValue().dequantized();
            quantized = quantized.withLinear(e.getKey(), new Tensor(MemorySegment.ofArray(w), DType.F32, layer.linear(e.getKey()).shape()));
        }
        LlamaModel.Layer dev = f.upload(quantized);
        try {
            stream.forEachBatch(f, dev, true, null);
        } finally {
            f.free(dev);
        }
    }

    /** One layer's tensors, norms included (they carry the folded scales), as WORK/layers/NNNN.safetensors. */
    private void writeLayer(JobDir job, int i, LlamaModel.Layer layer, Map<String, AwqResult> results) {
        String p = LlamaModel.prefix(i);
        ConvertFiles.writeLayerFile(job.file("layers"), i, w -> {
            ConvertFiles.half(w, p + "input_layernorm.weight", layer.inputNorm(), model.dir);
            ConvertFiles.half(w, p + "post_attention_layernorm.weight", layer.postNorm(), model.dir);
            for (var e : results.entrySet()) {
                String prefix = p + e.getKey();
                AwqResult r = e.getValue();
                float[] bias = layer.bias(e.getKey()) == null ? null : layer.bias(e.getKey()).toFloatArray();
                if (AwqLayout.unpackableReason(r.out(), r.in(), r.params().bits(), r.params().groupSize()) == null) {
                    AwqCheckpoint.write(w, AwqPacker.pack(prefix, r), bias);
                } else {
                    w.add(prefix + ".weight", DType.F16, new long[] {r.out(), r.in()},
                            GptqCheckpoint.littleEndian(ConvertFiles.toHalf(r.dequantized())));
                    if (bias != null) w.add(prefix + ".bias", DType.F16, new long[] {r.out()}, GptqCheckpoint.littleEndian(ConvertFiles.toHalf(bias)));
                }
            }
        });
        job.commit("layers_done", i + 1);
    }

    private int outFeatures(String linear) {
        return (int) model.layer(0).linear(linear).shape()[0];
    }

    private int inFeatures(String linear) {
        return model.layer(0).linear(linear).cols();
    }

    // ---- output --------------------------------------------------------------------------------------------------

    /** WORK/out: the AWQ checkpoint, configs and tokenizer files. Returns modules_to_not_convert. */
    private List<String> assemble(JobDir job) {
        Path out = job.file("out"), tmp = job.file(".out.tmp");
        List<String> notConverted = new ArrayList<>();
        try {
            ConvertFiles.deleteTree(tmp);
            Files.createDirectories(tmp);
            var cfg = model.config;
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, o.shardBytes); Weights layers = Weights.open(job.file("layers"))) {
                ConvertFiles.half(w, "model.embed_tokens.weight", model.embedTokens(), model.dir);
                for (int i = 0; i < cfg.numLayers(); i++) {
                    String p = LlamaModel.prefix(i);
                    for (var e : layers.all().entrySet()) {
                        if (e.getKey().startsWith(p)) w.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
                    }
                }
                ConvertFiles.half(w, "model.norm.weight", model.finalNorm(), model.dir);
                if (!model.headTied()) ConvertFiles.half(w, "lm_head.weight", model.lmHead(), model.dir);
                String p0 = LlamaModel.prefix(0);
                for (String l : LlamaModel.Layer.LINEARS) if (layers.has(p0 + l + ".weight")) notConverted.add(l);
            }
            Map<String, Object> config = Json.readObject(model.dir.resolve("config.json"));
            config.put("torch_dtype", "float16");
            AwqCheckpoint.writeConfigs(tmp, config, o.params, notConverted);
            ConvertFiles.copyNonWeightFiles(model.dir, tmp);
            ConvertFiles.deleteTree(out);
            JobDir.moveAtomically(tmp, out);
        } catch (IOException e) {
            throw new QtoolException(out + ": " + e.getMessage());
        }
        return notConverted;
    }

    /** Perplexity of the calibration rows under the written checkpoint, read back through qtool's AWQ reader. */
    private double evaluate(Path out, CalibrationSet cal) {
        int batch = Math.max(1, Math.min(o.batchRows, o.rows));
        try (LlamaModel q = LlamaModel.open(out);
             Forward f = new Forward(q, backend, linearType, batch, o.length, true, false, 1.0, 1.0);
             ResidualStream stream = new ResidualStream(backend, o.rows, o.length, q.config.hiddenSize(), batch)) {
            for (int r0 = 0; r0 < cal.rows(); r0 += batch) {
                int nr = Math.min(batch, cal.rows() - r0);
                f.embed(Arrays.copyOfRange(cal.tokens(), r0 * o.length, (r0 + nr) * o.length),
                        stream.states().rowSlice((long) r0 * o.length, (long) nr * o.length));
            }
            for (int i = 0; i < q.config.numLayers(); i++) {
                LlamaModel.Layer dev = f.upload(q.layer(i));
                try {
                    stream.forEachBatch(f, dev, true, null);
                } finally {
                    f.free(dev);
                }
            }
            return stream.perplexity(f, cal);
        }
    }

    private GptqConverter.Report report(JobDir job) {
        Path out = job.file("out");
        long params = 0, bits = 0;
        try (Weights w = Weights.open(out)) {
            for (String n : w.all().keySet()) {
                if (!n.endsWith("." + AwqLayout.QWEIGHT)) continue;
                String prefix = n.substring(0, n.length() - AwqLayout.QWEIGHT.length() - 1);
                var qw = w.get(n);
                params += qw.shape()[0] * qw.shape()[1] * AwqLayout.PACK;
                for (String part : List.of(AwqLayout.QWEIGHT, AwqLayout.QZEROS, AwqLayout.SCALES)) bits += 8 * w.get(prefix + "." + part).byteSize();
            }
        }
        Map<String, Object> p = job.progress();
        Map<String, Double> secs = JobDir.numbers(p.get("seconds"));
        List<String> warn = JobDir.strings(p.get("warnings"));
        double ppl = JobDir.number(p.get("calibration_ppl"));
        return new GptqConverter.Report(o.compileDir != null ? o.compileDir : out, model.config.numLayers(), params, bits, ppl, secs, warn, Map.of());
    }
}
