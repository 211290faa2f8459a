package qtool.convert;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.load.DType;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/**
 * What the layer-by-layer conversions (GPTQ, AWQ) share: the calibration tokens of a job, and the residual stream
 * of every calibration row on the device (rows × length × hidden F32), run through one decoder layer at a time and
 * saved in the job directory so that a killed job resumes after its last saved layer.
 */
public final class ResidualStream implements AutoCloseable {

    private final Backend backend;
    private final int rows, length, batch;
    private final Tensor states, work;
    private final SaveSchedule schedule = new SaveSchedule();

    public ResidualStream(Backend backend, int rows, int length, int hidden, int batch) {
        this.backend = backend;
        this.rows = rows;
        this.length = length;
        this.batch = batch;
        this.states = backend.allocate(DType.F32, (long) rows * length, hidden);
        Tensor w;
        try {
            w = backend.allocate(DType.F32, (long) batch * length, hidden);
        } catch (RuntimeException e) {
            backend.free(states);
            throw e;
        }
        this.work = w;
    }

    /**
     * The type linear weights take on the device during a conversion's forward passes: the stored half type on the
     * GPU (as the reference implementations run), F32 on the CPU. Quantization itself always works in F32.
     */
    public static DType linearType(Backend backend, LlamaModel model) {
        if (backend.name().equals("cpu")) return DType.F32;
        Tensor q = model.weights.find(LlamaModel.prefix(0) + "self_attn.q_proj.weight"); // null when stored quantized
        return q != null && q.dtype() == DType.BF16 ? DType.BF16 : DType.F16;
    }

    /**
     * The job's calibration tokens: read back from WORK/calibration.i32, or made (from {@code file}, else generated
     * by the model) and saved there.
     */
    public static CalibrationSet calibration(JobDir job, LlamaModel model, Tokenizer tokenizer, Backend backend, DType linearType,
                                             Path file, int rows, int length, long seed) {
        Path saved = job.file("calibration.i32");
        if (job.progress().get("calibration") instanceof Map<?, ?> m && Files.isRegularFile(saved)) {
            int[] tokens = ConvertFiles.readInts(saved);
            if (tokens.length != rows * length) throw new QtoolException(saved + ": corrupted job state (wrong size); use -nr");
            return new CalibrationSet(rows, length, tokens, String.valueOf(m.get("source")));
        }
        CalibrationSet cal;
        if (file != null) {
            cal = CalibrationSet.fromFile(file, tokenizer, rows, length);
        } else {
            int genBatch = Math.max(1, Math.min(rows - 2, 16));
            try (Forward gen = new Forward(model, backend, linearType, genBatch, length, false, true, 1.0, 1.0)) {
                cal = CalibrationSet.generate(gen, tokenizer, rows, length, seed);
            }
        }
        job.writeAtomically("calibration.i32", MemorySegment.ofBuffer(ConvertFiles.ints(cal.tokens())));
        job.commit("calibration", Map.of("source", cal.source(), "rows", cal.rows(), "length", cal.length()));
        return cal;
    }

    public Tensor states() {
        return states;
    }

    public int rows() {
        return rows;
    }

    public int length() {
        return length;
    }

    public int batch() {
        return batch;
    }

    /** Loads the saved stream, or embeds the calibration tokens; returns the first layer still to do. */
    public int restore(JobDir job, Forward f, CalibrationSet cal) {
        Path file = job.file("states.f32");
        if (job.progress().get("states_after_layer") instanceof Number n && Files.isRegularFile(file)) {
            read(backend, states, file);
            System.err.printf("convert: resuming %s after layer %d%n", job.dir(), n.intValue());
            return n.intValue() + 1;
        }
        for (int r0 = 0; r0 < cal.rows(); r0 += f.batch()) {
            int nr = Math.min(f.batch(), cal.rows() - r0);
            f.embed(Arrays.copyOfRange(cal.tokens(), r0 * length, (r0 + nr) * length), states.rowSlice((long) r0 * length, (long) nr * length));
        }
        return 0;
    }

    /** Saves the stream after {@code layer} when the {@link SaveSchedule} says so (always after the last). */
    public void saveIfDue(JobDir job, int layer, boolean last) {
        if (schedule.due(last)) {
            long t0 = System.nanoTime();
            save(job, layer);
            schedule.saved(t0);
        }
    }

    private void save(JobDir job, int layer) {
        write(backend, states, job, "states.f32");
        job.commit("states_after_layer", layer);
    }

    /** Writes a stream (any F32 device tensor) to WORK/name atomically, through a host buffer of at most 64 MiB. */
    public static void write(Backend backend, Tensor states, JobDir job, String name) {
        long rowBytes = (long) states.cols() * Float.BYTES;
        long rowsPerChunk = Math.max(1, Math.min(states.rows(), (64L << 20) / rowBytes));
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate(rowsPerChunk * rowBytes, 64);
            job.writeAtomically(name, ch -> {
                for (long r = 0; r < states.rows(); r += rowsPerChunk) {
                    long n = Math.min(rowsPerChunk, states.rows() - r);
                    backend.copyToHost(states.rowSlice(r, n), host);
                    JobDir.write(ch, host.asSlice(0, n * rowBytes));
                }
            });
        }
    }

    /** Loads a stream written by {@link #write} back into {@code states} (same size, else a corrupted-state error). */
    public static void read(Backend backend, Tensor states, Path file) {
        try (Arena arena = Arena.ofConfined(); FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            if (ch.size() != states.byteSize()) throw new QtoolException(file + ": corrupted job state (size); use -nr");
            backend.copyFromHost(ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size(), arena), states);
            backend.synchronize();
        } catch (IOException e) {
            throw new QtoolException(file + ": " + e.getMessage());
        }
    }

    /** Whether the first {@code length} rows of a stream (its first calibration row) are all finite. */
    public static boolean firstRowFinite(Backend backend, Tensor states, int length) {
        float[] row = new float[(int) Math.min(states.numel(), (long) length * states.cols())];
        backend.copyToHost(states.rowSlice(0, row.length / states.cols()), MemorySegment.ofArray(row));
        for (float v : row) if (!Float.isFinite(v)) return false;
        return true;
    }

    /** Sees each batch's rows as a layer runs: {@code first} is the index of the batch's first calibration row. */
    @FunctionalInterface
    public interface BatchObserver {
        void input(int first, Forward.Site site, Tensor x);
    }

    /**
     * Runs decoder layer {@code w} over every calibration row, {@code batch} rows at a time: in place on the stream
     * when {@code advance}, otherwise on a copy (observing passes must leave the stream as it is).
     */
    public void forEachBatch(Forward f, LlamaModel.Layer w, boolean advance, BatchObserver observer) {
        for (int r0 = 0; r0 < rows; r0 += batch) {
            int nr = Math.min(batch, rows - r0), first = r0;
            Tensor x = states.rowSlice((long) r0 * length, (long) nr * length);
            if (!advance) {
                Tensor copy = work.rowSlice(0, (long) nr * length);
                backend.copy(copy, x);
                x = copy;
            }
            f.layer(w, x, f.cacheK(0), f.cacheV(0), nr, length, 0, observer == null ? null : (s, t) -> observer.input(first, s, t));
        }
    }

    /** A clear error when the first row of the stream holds NaN or Inf after {@code layer}. */
    public void checkFinite(Path modelDir, int layer) {
        if (!firstRowFinite(backend, states, length)) throw new QtoolException(modelDir + ": NaN or Inf in the hidden states after layer " + layer);
    }

    /** Perplexity of the calibration rows from the stream after the last layer (no extra pass). */
    public double perplexity(Forward f, CalibrationSet cal) {
        double nll = 0;
        long n = 0;
        for (int r = 0; r < cal.rows(); r += f.batch()) {
            int nr = Math.min(f.batch(), cal.rows() - r);
            int[] targets = new int[nr * length];
            for (int j = 0; j < targets.length; j++) targets[j] = (j + 1) % length == 0 ? -1 : cal.tokens()[r * length + j + 1];
            float[] v = f.nll(states.rowSlice((long) r * length, (long) nr * length), targets);
            for (float x : v) nll += x;
            n += (long) nr * (length - 1);
        }
        return Math.exp(nll / n);
    }

    @Override
    public void close() {
        backend.free(states);
        backend.free(work);
    }
}
