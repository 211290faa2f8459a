package qtool.convert.exl2;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.convert.JobDir;
import qtool.convert.ResidualStream;
import qtool.load.DType;
import qtool.model.Forward;
import qtool.model.LlamaModel;

/**
 * The calibration rows' residual stream on the device, run block by block: a decoder layer's attention half or MLP
 * half ({@link Forward#attentionHalf}, {@link Forward#mlpHalf}), {@code batch} rows at a time, either in place
 * (advancing the stream) or on a scratch copy (measuring). Also the two reductions measurement needs, built from
 * the backend's linear op so that they run wherever the stream is: y ← −x (a product with the 1×1 matrix [−1]) and
 * Σ x² of a row (a 1×n by n×1 product).
 */
final class BlockStream implements AutoCloseable {
    final Forward forward;
    final Backend backend;
    final int rows, length, batch;
    final Tensor states, work;
    private final Tensor minusOne, dots;

    BlockStream(Forward forward, int rows, int length) {
        this.forward = forward;
        this.backend = forward.backend;
        this.rows = rows;
        this.length = length;
        this.batch = forward.batch();
        int hidden = forward.cfg.hiddenSize();
        Tensor s = null, w = null, m = null, d = null;
        try {
            s = backend.allocate(DType.F32, (long) rows * length, hidden);
            w = backend.allocate(DType.F32, (long) batch * length, hidden);
            m = backend.upload(new Tensor(MemorySegment.ofArray(new float[] {-1f}), DType.F32, new long[] {1, 1}), DType.F32);
            d = backend.allocate(DType.F32, rows, 1);
        } catch (RuntimeException e) {
            for (Tensor t : new Tensor[] {s, w, m, d}) if (t != null) backend.free(t);
            throw e;
        }
        states = s;
        work = w;
        minusOne = m;
        dots = d;
    }

    /** The stream rows of calibration rows [r0, r0 + n). */
    Tensor rowsOf(Tensor stream, int r0, int n) {
        return stream.rowSlice((long) r0 * length, (long) n * length);
    }

    void embed(int[] tokens) {
        for (int r0 = 0; r0 < rows; r0 += batch) {
            int nr = Math.min(batch, rows - r0);
            forward.embed(Arrays.copyOfRange(tokens, r0 * length, (r0 + nr) * length), rowsOf(states, r0, nr));
        }
    }

    /** One block in place on x (rows of nr calibration rows). */
    void block(LlamaModel.Layer w, boolean attention, Tensor x, int nr, Forward.SiteObserver observer) {
        if (attention) forward.attentionHalf(w, x, forward.cacheK(0), forward.cacheV(0), nr, length, 0, observer);
        else forward.mlpHalf(w, x, observer);
    }

    /** Per batch: the batch's stream rows copied to scratch, the block run on the copy, then {@code after}. */
    void onCopies(LlamaModel.Layer w, boolean attention, Forward.SiteObserver observer, BatchAction after) {
        for (int r0 = 0; r0 < rows; r0 += batch) {
            int nr = Math.min(batch, rows - r0);
            Tensor x = work.rowSlice(0, (long) nr * length);
            backend.copy(x, rowsOf(states, r0, nr));
            block(w, attention, x, nr, observer);
            after.run(r0, nr, x);
        }
    }

    @FunctionalInterface
    interface BatchAction {
        void run(int r0, int nr, Tensor out);
    }

    /** The block in place over all rows (the stream moves on). */
    void advance(LlamaModel.Layer w, boolean attention) {
        for (int r0 = 0; r0 < rows; r0 += batch) {
            int nr = Math.min(batch, rows - r0);
            block(w, attention, rowsOf(states, r0, nr), nr, null);
        }
    }

    /** dst ← −src, elementwise (same shape, F32). */
    void negate(Tensor dst, Tensor src) {
        long n = src.numel();
        backend.linear(dst.reshape(n, 1), src.reshape(n, 1), minusOne, null);
    }

    /** Σ x² over each calibration row's [length, hidden] block of x (nr rows), into slots [r0, r0 + nr) of {@link #squares}. */
    void sumSquares(Tensor x, int r0, int nr) {
        long per = (long) length * x.cols();
        for (int r = 0; r < nr; r++) {
            Tensor row = x.rowSlice((long) r * length, length).reshape(1, per);
            backend.linear(dots.rowSlice(r0 + r, 1), row, row, null);
        }
    }

    /** The sums of {@link #sumSquares} for all rows. */
    float[] squares() {
        float[] v = new float[rows];
        backend.copyToHost(dots, MemorySegment.ofArray(v));
        return v;
    }

    void checkFinite(String after) {
        if (!ResidualStream.firstRowFinite(backend, states, length)) throw new QtoolException("NaN or Inf in the hidden states after " + after);
    }

    /** Saves the stream to WORK/name atomically. */
    void save(JobDir job, String name) {
        ResidualStream.write(backend, states, job, name);
    }

    /** Loads WORK/name into the stream. */
    void load(Path file) {
        ResidualStream.read(backend, states, file);
    }

    static boolean exists(JobDir job, String name) {
        return Files.isRegularFile(job.file(name));
    }

    @Override
    public void close() {
        for (Tensor t : new Tensor[] {states, work, minusOne, dots}) backend.free(t);
    }
}
