package qtool.convert;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.model.Forward;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;
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
 * <p>Job state in WORK (see {@link JobDir}): the calibration tokens, each finished layer's quantized tensors, and
 * the residual stream after the last saved layer. A rerun resumes after that layer and, the computation being
 * deterministic, writes the same bytes an uninterrupted run would.
 */
public final class GptqConverter {
    /** The residual stream is saved after every layer while it is this small, else at most once a minute. */
    private static final long SMALL_STATE_BYTES = 1L << 30;

    public record Options(Path input, Path work, Path compileDir, GptqParams params, boolean trueSequential, CheckpointFormat format,
                          Path calibrationFile, int rows, int length, long seed, long shardBytes, int batchRows, boolean noResume) {}

    /**
     * What the job did, for the summary. {@code relativeErrors}: per linear, ‖WX − QX‖² / ‖WX‖² on its calibration
     * inputs X in the sequential pipeline (see {@link ReconstructionError}), in quantization order.
     */
    public record Report(Path output, int layers, long quantizedParams, long quantizedBits, double calibrationPpl,
                         Map<String, Double> secondsPerStage, List<String> warnings, Map<String, Double> relativeErrors) {
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

    public GptqConverter(Options o, LlamaModel model, Tokenizer tokenizer, Backend backend) {
        this.o = o;
        this.model = model;
        this.tokenizer = tokenizer;
        this.backend = backend;
        // the forward passes run in the stored half type on the GPU (as the reference implementations do); GPTQ in fp32
        this.linearType = backend.name().equals("cpu") ? DType.F32 : model.layer(0).q().dtype() == DType.BF16 ? DType.BF16 : DType.F16;
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

    public Report run() {
        JobDir job = JobDir.open(o.work, settings(o), o.noResume);
        Path out = job.file("out");
        if (!Boolean.TRUE.equals(job.progress().get("finished")) || !Files.isDirectory(out)) {
            convert(job);
        } else {
            System.err.println("convert: " + o.work + " holds this job, finished; output in " + out);
        }
        if (o.compileDir != null) compileFull(out, o.compileDir);
        return report(job);
    }

    private void convert(JobDir job) {
        var cfg = model.config;
        int batch = Math.max(1, Math.min(o.batchRows, o.rows));
        try (Forward f = new Forward(model, backend, linearType, batch, o.length, true, false, 1.0, 1.0)) {
            CalibrationSet cal = calibration(job);
            Tensor states = backend.allocate(DType.F32, (long) o.rows * o.length, cfg.hiddenSize());
            Tensor work = backend.allocate(DType.F32, (long) batch * o.length, cfg.hiddenSize());
            try {
                int start = restoreStates(job, f, cal, states);
                long lastSave = System.nanoTime();
                try (Progress bar = new Progress("gptq", cfg.numLayers(), "layers")) {
                    bar.step(start);
                    for (int i = start; i < cfg.numLayers(); i++) {
                        quantizeLayer(job, f, i, states, work, batch);
                        checkFinite(states, i);
                        if (i == cfg.numLayers() - 1 || states.byteSize() <= SMALL_STATE_BYTES || System.nanoTime() - lastSave > 60e9) {
                            saveStates(job, states, i);
                            lastSave = System.nanoTime();
                        }
                        bar.step(1);
                    }
                }
                long t0 = System.nanoTime();
                job.commit("calibration_ppl", calibrationPpl(f, cal, states));
                seconds.merge("evaluate", (System.nanoTime() - t0) / 1e9, Double::sum);
                t0 = System.nanoTime();
                assemble(job);
                seconds.merge("write", (System.nanoTime() - t0) / 1e9, Double::sum);
                job.commit("seconds", new LinkedHashMap<>(seconds));
                job.commit("warnings", new ArrayList<>(warnings));
                job.commit("finished", true);
            } finally {
                backend.free(states);
                backend.free(work);
            }
        }
    }

    // ---- calibration ---------------------------------------------------------------------------------------------

    private CalibrationSet calibration(JobDir job) {
        long t0 = System.nanoTime();
        Path file = job.file("calibration.i32");
        CalibrationSet cal;
        if (job.progress().get("calibration") instanceof Map<?, ?> m && Files.isRegularFile(file)) {
            int[] tokens = readInts(file);
            if (tokens.length != o.rows * o.length) throw new QtoolException(file + ": corrupted job state (wrong size); use -nr");
            cal = new CalibrationSet(o.rows, o.length, tokens, String.valueOf(m.get("source")));
        } else {
            if (o.calibrationFile != null) {
                cal = CalibrationSet.fromFile(o.calibrationFile, tokenizer, o.rows, o.length);
            } else {
                int batch = Math.max(1, Math.min(o.rows - 2, 16));
                try (Forward gen = new Forward(model, backend, linearType, batch, o.length, false, true, 1.0, 1.0)) {
                    cal = CalibrationSet.generate(gen, tokenizer, o.rows, o.length, o.seed);
                }
            }
            job.writeAtomically("calibration.i32", MemorySegment.ofBuffer(ints(cal.tokens())));
            job.commit("calibration", Map.of("source", cal.source(), "rows", cal.rows(), "length", cal.length()));
        }
        seconds.put("calibration", (System.nanoTime() - t0) / 1e9);
        return cal;
    }

    /** Loads the saved residual stream, or embeds the calibration tokens; returns the first layer to quantize. */
    private int restoreStates(JobDir job, Forward f, CalibrationSet cal, Tensor states) {
        Path file = job.file("states.f32");
        if (job.progress().get("states_after_layer") instanceof Number n && Files.isRegularFile(file)) {
            try (Arena arena = Arena.ofConfined(); FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
                if (ch.size() != states.byteSize()) throw new QtoolException(file + ": corrupted job state (size); use -nr");
                backend.copyFromHost(ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena), states);
                backend.synchronize();
            } catch (IOException e) {
                throw new QtoolException(file + ": " + e.getMessage());
            }
            System.err.printf("convert: resuming %s after layer %d%n", o.work, n.intValue());
            return n.intValue() + 1;
        }
        int len = o.length;
        for (int r0 = 0; r0 < cal.rows(); r0 += f.batch()) {
            int nr = Math.min(f.batch(), cal.rows() - r0);
            f.embed(Arrays.copyOfRange(cal.tokens(), r0 * len, (r0 + nr) * len), states.rowSlice((long) r0 * len, (long) nr * len));
        }
        return 0;
    }

    /** The residual stream to WORK/states.f32, through a host buffer of at most 64 MiB. */
    private void saveStates(JobDir job, Tensor states, int layer) {
        long rowBytes = (long) states.cols() * Float.BYTES;
        long rowsPerChunk = Math.max(1, Math.min(states.rows(), (64L << 20) / rowBytes));
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate(rowsPerChunk * rowBytes, 64);
            job.writeAtomically("states.f32", ch -> {
                for (long r = 0; r < states.rows(); r += rowsPerChunk) {
                    long n = Math.min(rowsPerChunk, states.rows() - r);
                    backend.copyToHost(states.rowSlice(r, n), host);
                    JobDir.write(ch, host.asSlice(0, n * rowBytes));
                }
            });
        }
        job.commit("states_after_layer", layer);
    }

    // ---- one layer -----------------------------------------------------------------------------------------------

    private static Site site(String linear) {
        return switch (linear) {
            case "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" -> Site.ATTN_IN;
            case "self_attn.o_proj" -> Site.O_IN;
            case "mlp.gate_proj", "mlp.up_proj" -> Site.MLP_IN;
            default -> Site.DOWN_IN;
        };
    }

    private void quantizeLayer(JobDir job, Forward f, int i, Tensor states, Tensor work, int batch) {
        List<String> all = LlamaModel.Layer.LINEARS;
        List<List<String>> steps = o.trueSequential
                ? List.of(all.subList(0, 3), all.subList(3, 4), all.subList(4, 6), all.subList(6, 7))
                : List.of(all);
        LlamaModel.Layer host = model.layer(i);
        LlamaModel.Layer dev = f.upload(host);
        Map<String, Double> errors = new LinkedHashMap<>();
        Path tmp = job.file("layers").resolve(String.format(".%04d.tmp", i));
        // each linear's tensors go to the layer's file as soon as they are made: no layer's results pile up on the heap
        try (SafetensorsWriter layerFile = newLayerFile(tmp)) {
            for (List<String> step : steps) {
                EnumMap<Site, Tensor> grams = new EnumMap<>(Site.class);
                for (String l : step) {
                    int in = host.linear(l).cols();
                    if (!grams.containsKey(site(l))) {
                        Tensor h = backend.allocate(DType.F32, in, in);
                        backend.copyFromHost(MemorySegment.ofArray(new float[in * in]), h);
                        grams.put(site(l), h);
                    }
                }
                long t0 = System.nanoTime();
                forEachBatch(f, dev, states, work, batch, false, (s, x) -> {
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
                        r = backend.gptq(w, grams.get(site(l)), o.params);
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
                    errors.put(name, ReconstructionError.relative(backend, host.linear(l), r.dequantized(), grams.get(site(l))));
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
            forEachBatch(f, dev, states, work, batch, true, null);
            backend.synchronize();
            seconds.merge("forward", (System.nanoTime() - t0) / 1e9, Double::sum);
        } finally {
            f.free(dev);
        }
        finishLayer(job, i, tmp, errors);
        LlamaModel.release(host);
    }

    /**
     * Runs the layer over every calibration row, {@code batch} rows at a time: in place on the residual stream when
     * {@code advance}, otherwise on a copy (observing passes must leave the stream as it is).
     */
    private void forEachBatch(Forward f, LlamaModel.Layer w, Tensor states, Tensor work, int batch, boolean advance, Forward.SiteObserver observer) {
        int len = o.length;
        for (int r0 = 0; r0 < o.rows; r0 += batch) {
            int nr = Math.min(batch, o.rows - r0);
            Tensor rows = states.rowSlice((long) r0 * len, (long) nr * len);
            Tensor x = rows;
            if (!advance) {
                x = work.rowSlice(0, (long) nr * len);
                backend.copy(x, rows);
            }
            f.layer(w, x, f.cacheK(0), f.cacheV(0), nr, len, 0, observer);
        }
    }

    private void checkFinite(Tensor states, int layer) {
        float[] row = new float[(int) Math.min(states.numel(), (long) o.length * states.cols())];
        backend.copyToHost(states.rowSlice(0, row.length / states.cols()), MemorySegment.ofArray(row));
        for (float v : row) {
            if (!Float.isFinite(v)) throw new QtoolException(model.dir + ": NaN or Inf in the hidden states after layer " + layer);
        }
    }

    /** A fresh temporary directory for layer i's file (a killed run may have left one). */
    private static SafetensorsWriter newLayerFile(Path tmp) {
        try {
            deleteTree(tmp);
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
            w.add(prefix + ".weight", DType.F16, new long[] {r.out(), r.in()}, GptqCheckpoint.littleEndian(toHalf(r.dequantized())));
            if (b != null) w.add(prefix + ".bias", DType.F16, b.shape(), GptqCheckpoint.littleEndian(toHalf(b.toFloatArray())));
            return;
        }
        GptqCheckpoint.write(w, packed, b == null ? null : b.toFloatArray());
        if (packed.v1WrappedZeros() > 0) {
            warnings.add(prefix + ": " + packed.v1WrappedZeros() + " zero points of 0 cannot be stored in the v1 format (loaders read them as "
                    + (1 << o.params.bits()) + "); use --checkpoint-format gptq_v2 or --sym"); // listed in the summary
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

    // ---- evaluation and output -----------------------------------------------------------------------------------

    /** Perplexity of the quantized model on the calibration rows, from the final residual stream (no extra pass). */
    private double calibrationPpl(Forward f, CalibrationSet cal, Tensor states) {
        double nll = 0;
        long n = 0;
        int len = o.length;
        for (int r = 0; r < cal.rows(); r += f.batch()) {
            int nr = Math.min(f.batch(), cal.rows() - r);
            int[] targets = new int[nr * len];
            for (int j = 0; j < targets.length; j++) targets[j] = (j + 1) % len == 0 ? -1 : cal.tokens()[r * len + j + 1];
            float[] v = f.nll(states.rowSlice((long) r * len, (long) nr * len), targets);
            for (float x : v) nll += x;
            n += (long) nr * (len - 1);
        }
        return Math.exp(nll / n);
    }

    /** WORK/out: the GPTQ checkpoint, every non-quantized tensor in fp16, configs and tokenizer files. */
    private void assemble(JobDir job) {
        Path out = job.file("out"), tmp = job.file(".out.tmp");
        try {
            deleteTree(tmp);
            Files.createDirectories(tmp);
            var cfg = model.config;
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, o.shardBytes); Weights layerFiles = Weights.open(job.file("layers"))) {
                half(w, "model.embed_tokens.weight");
                for (int i = 0; i < cfg.numLayers(); i++) {
                    String p = LlamaModel.prefix(i);
                    half(w, p + "input_layernorm.weight");
                    for (var e : layerFiles.all().entrySet()) {
                        if (!e.getKey().startsWith(p)) continue;
                        w.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
                        e.getValue().data().unload(); // copied: its mapped pages need not stay resident
                    }
                    half(w, p + "post_attention_layernorm.weight");
                }
                half(w, "model.norm.weight");
                if (!model.headTied()) half(w, "lm_head.weight");
            }
            Map<String, Object> config = Json.readObject(model.dir.resolve("config.json"));
            config.put("torch_dtype", "float16");
            List<String> unquantized = new ArrayList<>();
            try (Weights layerFiles = Weights.open(job.file("layers"))) {
                for (String n : layerFiles.all().keySet()) if (n.endsWith(".weight")) unquantized.add(n.substring(0, n.length() - ".weight".length()));
            }
            GptqCheckpoint.writeConfigs(tmp, config, GptqCheckpoint.quantizationConfig(o.params, Map.of(), unquantized, o.format, o.trueSequential));
            copyNonWeightFiles(model.dir, tmp);
            deleteTree(out);
            JobDir.moveAtomically(tmp, out);
        } catch (IOException e) {
            throw new QtoolException(out + ": " + e.getMessage());
        }
    }

    private static short[] toHalf(float[] v) {
        short[] h = new short[v.length];
        for (int k = 0; k < v.length; k++) h[k] = Float.floatToFloat16(v[k]);
        return h;
    }

    private void half(SafetensorsWriter w, String name) {
        Tensor t = model.weights.get(name);
        if (t.dtype() == DType.F16) { // as stored: straight from the mapping, which need not stay resident after
            w.add(name, DType.F16, t.shape(), t.data());
            if (t.data().isMapped()) t.data().unload();
            return;
        }
        int n = Math.toIntExact(t.numel());
        short[] h = new short[n];
        for (int k = 0; k < n; k++) {
            float v = t.getFloat(k);
            h[k] = Float.floatToFloat16(v);
            if (Float.isFinite(v) && Float.isInfinite(Float.float16ToFloat(h[k]))) {
                throw new QtoolException(model.dir + ": " + name + " holds " + v + ", beyond fp16's range");
            }
        }
        w.add(name, DType.F16, t.shape(), GptqCheckpoint.littleEndian(h));
    }

    /** Tokenizer, generation config and the like: every input file that is not weights or config.json. */
    static void copyNonWeightFiles(Path from, Path to) throws IOException {
        try (Stream<Path> s = Files.list(from)) {
            for (Path p : s.toList()) {
                String n = p.getFileName().toString();
                if (!Files.isRegularFile(p) || n.endsWith(".safetensors") || n.equals(Weights.INDEX) || n.equals("config.json")
                        || n.equals(GptqCheckpoint.QUANTIZE_CONFIG) || n.endsWith(".bin") || n.endsWith(".pt") || n.endsWith(".pth")) {
                    continue;
                }
                Files.copy(p, to.resolve(n), StandardCopyOption.REPLACE_EXISTING);
            }
        }
    }

    /** -cf: the finished model in DIR, refusing to mix with files this job did not write. */
    private static void compileFull(Path out, Path dir) {
        try {
            List<String> ours;
            try (Stream<Path> s = Files.list(out)) {
                ours = s.map(p -> p.getFileName().toString()).toList();
            }
            if (Files.isDirectory(dir)) {
                try (Stream<Path> s = Files.list(dir)) {
                    for (Path p : s.toList()) {
                        if (!ours.contains(p.getFileName().toString())) {
                            throw new QtoolException(dir + ": holds " + p.getFileName() + ", which this job did not write; use an empty -cf directory");
                        }
                    }
                }
            }
            Files.createDirectories(dir);
            for (String n : ours) Files.copy(out.resolve(n), dir.resolve(n), StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new QtoolException(dir + ": " + e.getMessage());
        }
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
        Map<String, Double> secs = new LinkedHashMap<>();
        if (p.get("seconds") instanceof Map<?, ?> m) m.forEach((k, v) -> secs.put(String.valueOf(k), ((Number) v).doubleValue()));
        List<String> warn = new ArrayList<>();
        if (p.get("warnings") instanceof List<?> l) l.forEach(x -> warn.add(String.valueOf(x)));
        double ppl = p.get("calibration_ppl") instanceof Number n ? n.doubleValue() : Double.NaN;
        Map<String, Double> errors = new LinkedHashMap<>();
        if (p.get("relative_errors") instanceof Map<?, ?> m) m.forEach((k, v) -> errors.put(String.valueOf(k), ((Number) v).doubleValue()));
        return new Report(o.compileDir != null ? o.compileDir : out, model.config.numLayers(), params, bits, ppl, secs, warn, errors);
    }

    // ---- small file helpers --------------------------------------------------------------------------------------

    private static ByteBuffer ints(int[] v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asIntBuffer().put(v);
        return b;
    }

    private static int[] readInts(Path file) {
        try {
            ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
            int[] v = new int[b.remaining() / 4];
            b.asIntBuffer().get(v);
            return v;
        } catch (IOException e) {
            throw new QtoolException(file + ": " + e.getMessage());
        }
    }

    static void deleteTree(Path dir) throws IOException {
        if (!Files.exists(dir)) return;
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(java.util.Comparator.reverseOrder()).toList()) Files.delete(p);
        }
    }
}
