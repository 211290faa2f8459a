package qtool.bench;

import static qtool.ffi.qtool_h.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;
import qtool.QtoolException;
import qtool.backend.NativeLibrary;
import qtool.ffi.qt_qmatrix;
import qtool.format.gptq.RandomGptqLinear;
import qtool.quantize.Exl2Params;

/**
 * Quantized matrix products of native/include/qtool.h (qt_qmatrix) at LLM shapes, beside the device's copy bandwidth
 * and cuBLAS fp16 on the same shape. Random packed weights are built straight in the qt_qmatrix layout through the
 * bindings: GPTQ-style (2, 3, 4, 8 bits, groups of 128, zero points, inputs in order) and an EXL2 mix (the option of
 * ExLlamaV2's grids nearest 4.0 bits per weight at the shape that mixes widths, a random input permutation).
 *
 * <p>Each trial (one weight kind × shape, {@code in×out}) measures, with CUDA events around repeated launches on its
 * own stream (median of {@link #REPETITIONS}), batch 1, 4, 16 and 64: qt_qmatrix_gemv (a CUDA-core GEMV up to batch
 * 8, tensor cores above), qt_qmatrix_dequant + qt_linear (what the backend does above 64 rows), and qt_linear with an
 * F16 weight; it prints one table row per batch at teardown: device µs, weight GB/s (bytes of the weight as stored,
 * per call) and TFLOP/s (2·batch·in·out per call). The JMH score is the host time of one batch-1 product including
 * the wait for it.
 *
 * <p>Run: {@code java --enable-native-access=ALL-UNNAMED -jar target/benchmarks.jar QuantBench} (libqtool.so at
 * build/native/ or QTOOL_LIB); {@code -p weights=exl2 -p shape=4096x11008} narrows it. Without a GPU each trial
 * says so once and the benchmark returns at once.
 */
@Fork(value = 1, jvmArgsAppend = "--enable-native-access=ALL-UNNAMED")
@Warmup(iterations = 2, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@Measurement(iterations = 3, time = 200, timeUnit = TimeUnit.MILLISECONDS)
@State(Scope.Benchmark)
public class QuantBench {
    static final int[] BATCHES = {1, 4, 16, 64};
    /** The most rows qt_qmatrix_gemv takes (CudaBackend's switch to dequantize + cuBLAS above it). */
    static final int GEMV_MAX_ROWS = 64;
    static final int REPETITIONS = 7;
    static final int GPTQ_GROUP = 128;

    @Param({"gptq2", "gptq3", "gptq4", "gptq8", "exl2"})
    public String weights;

    /** in×out. */
    @Param({"4096x4096", "4096x11008", "11008x4096", "4096x32000"})
    public String shape;

    private Arena arena;
    private MemorySegment stream;
    private final List<MemorySegment> deviceBuffers = new ArrayList<>();
    private MemorySegment qmatrix, qmatrixInOrder, x, y, weightF16, dequantized, scratch;
    private long scratchBytes, packedBytes;
    private int in, out;
    private String description;
    private boolean ready;

    @Setup(Level.Trial)
    public void setUp() {
        try {
            NativeLibrary.ensureReady();
        } catch (QtoolException e) {
            System.out.println("QuantBench: no GPU, skipped (" + NativeLibrary.summary(e) + ")");
            return;
        }
        String[] io = shape.split("x");
        in = Integer.parseInt(io[0]);
        out = Integer.parseInt(io[1]);
        arena = Arena.ofShared();
        MemorySegment slot = arena.allocate(ValueLayout.ADDRESS);
        check(qt_stream_create(slot), "qt_stream_create");
        stream = slot.get(ValueLayout.ADDRESS, 0);
        qmatrix = weights.equals("exl2") ? exl2Matrix() : gptqMatrix(Integer.parseInt(weights.substring(4)));
        qmatrixInOrder = arena.allocate(qt_qmatrix.layout()).copyFrom(qmatrix);  // as the backend dequantizes: no perm
        qt_qmatrix.perm(qmatrixInOrder, MemorySegment.NULL);
        int maxBatch = BATCHES[BATCHES.length - 1];
        x = randomF16(maxBatch * (long) in, 1.0);
        y = deviceAlloc(2L * maxBatch * out);
        weightF16 = randomF16((long) out * in, 0.02);
        dequantized = deviceAlloc(2L * out * in);
        MemorySegment bytes = arena.allocate(ValueLayout.JAVA_LONG);
        check(qt_qmatrix_gemv_scratch_bytes(qmatrix, GEMV_MAX_ROWS, bytes), "qt_qmatrix_gemv_scratch_bytes");
        scratchBytes = bytes.get(ValueLayout.JAVA_LONG, 0);
        scratch = scratchBytes == 0 ? MemorySegment.NULL : deviceAlloc(scratchBytes);
        check(qt_stream_synchronize(stream), "qt_stream_synchronize");
        ready = true;
    }

    /** Batch 1 through qt_qmatrix_gemv, waited for: the host's cost of one decoding product. */
    @Benchmark
    @BenchmarkMode(Mode.AverageTime)
    @OutputTimeUnit(TimeUnit.MICROSECONDS)
    public void gemvBatch1() {
        if (!ready) return;
        quantized(1);
        check(qt_stream_synchronize(stream), "qt_stream_synchronize");
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        if (!ready) return;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment gbps = a.allocate(ValueLayout.JAVA_FLOAT);
            check(qt_bench_copy(256L << 20, 20, gbps), "qt_bench_copy");
            double copy = gbps.get(ValueLayout.JAVA_FLOAT, 0);
            long f16Bytes = 2L * in * out;
            System.out.printf("%nQuantBench %s %s (in×out), %s: %.2f bits per weight as the kernels read them; device copy %.0f GB/s (read + write)%n",
                    weights, shape, description, 8.0 * packedBytes / ((long) in * out), copy);
            System.out.printf("  %5s | %9s %8s %8s | %14s | %9s %8s %8s%n", "batch", "quant µs", "GB/s", "TFLOP/s",
                    "dequant+f16 µs", "f16 µs", "GB/s", "TFLOP/s");
            for (int b : BATCHES) {
                double q = deviceMicros(() -> quantized(b)), d = deviceMicros(() -> dequantizedF16(b)), f = deviceMicros(() -> cublasF16(b));
                double flop = 2.0 * b * in * out;
                System.out.printf("  %5d | %9.2f %8.0f %8.2f | %14.2f | %9.2f %8.0f %8.2f%n", b, q, packedBytes / q / 1e3, flop / q / 1e6,
                        d, f, f16Bytes / f / 1e3, flop / f / 1e6);
            }
        } finally {
            for (MemorySegment p : deviceBuffers) qt_free(p);
            qt_stream_destroy(stream);
            arena.close();
        }
    }

    private void quantized(int batch) {
        check(qt_qmatrix_gemv(y, QT_F16(), 0, x, qmatrix, batch, scratch, scratchBytes, stream), "qt_qmatrix_gemv");
    }

    /**
     * The product as the backend makes it above {@link #GEMV_MAX_ROWS} rows: the weight dequantized in processing
     * order (the backend's perm-less copy; its gather of x, one pass over batch·in halves, left out), then cuBLAS.
     */
    private void dequantizedF16(int batch) {
        check(qt_qmatrix_dequant(dequantized, qmatrixInOrder, stream), "qt_qmatrix_dequant");
        linear(dequantized, batch);
    }

    private void cublasF16(int batch) {
        linear(weightF16, batch);
    }

    private void linear(MemorySegment weight, int batch) {
        check(qt_linear(y, QT_F16(), x, QT_F16(), weight, QT_F16(), MemorySegment.NULL, QT_F16(), batch, in, out, 0,
                MemorySegment.NULL, 0, stream), "qt_linear");
    }

    /** Median over repetitions of device µs per call, each repetition enough calls for about a millisecond. */
    private double deviceMicros(Runnable call) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(ValueLayout.ADDRESS), e = a.allocate(ValueLayout.ADDRESS), ms = a.allocate(ValueLayout.JAVA_FLOAT);
            check(qt_event_create(s), "qt_event_create");
            check(qt_event_create(e), "qt_event_create");
            MemorySegment start = s.get(ValueLayout.ADDRESS, 0), end = e.get(ValueLayout.ADDRESS, 0);
            try {
                call.run();  // warm-up
                int calls = 1;
                double[] us = new double[REPETITIONS];
                for (int r = -1; r < REPETITIONS; r++) {  // r = −1 sizes the run
                    check(qt_event_record(start, stream), "qt_event_record");
                    for (int k = 0; k < calls; k++) call.run();
                    check(qt_event_record(end, stream), "qt_event_record");
                    check(qt_event_synchronize(end), "qt_event_synchronize");
                    check(qt_event_elapsed_ms(start, end, ms), "qt_event_elapsed_ms");
                    double per = 1e3 * ms.get(ValueLayout.JAVA_FLOAT, 0) / calls;
                    if (r < 0) calls = (int) Math.max(1, Math.min(1000, 1000 / Math.max(per, 1e-3)));
                    else us[r] = per;
                }
                Arrays.sort(us);
                return us[REPETITIONS / 2];
            } finally {
                qt_event_destroy(start);
                qt_event_destroy(end);
            }
        }
    }

    // ---- random weights in the qt_qmatrix layout ----------------------------------------------------------------

    /** GPTQ-style: every 32-input unit at {@code bits}, groups of 128 inputs, zero points 2^(bits−1), no permutation. */
    private MemorySegment gptqMatrix(int bits) {
        int units = in / 32, groups = (in + GPTQ_GROUP - 1) / GPTQ_GROUP;
        int[] unitTable = new int[2 * units];
        for (int u = 0; u < units; u++) {
            unitTable[2 * u] = u * bits;
            unitTable[2 * u + 1] = (32 * u / GPTQ_GROUP) << 8 | bits;
        }
        short[] zeros = new short[groups * out];
        Arrays.fill(zeros, Float.floatToFloat16(1 << (bits - 1)));
        description = "GPTQ " + bits + "-bit, group " + GPTQ_GROUP;
        return qmatrix(units * bits, unitTable, groups, bits, zeros, null);
    }

    /**
     * EXL2: the option of ExLlamaV2's attention and MLP grids that mixes bit widths and comes nearest 4.0 bits per
     * weight at this shape (as stored: q_weight, q_scale, q_scale_max, q_groups, q_invperm); a random permutation.
     */
    private MemorySegment exl2Matrix() {
        Exl2Params best = null;
        double bestBpw = 0;
        for (List<List<Exl2Params>> grid : List.of(Exl2Params.ATTENTION_OPTIONS, Exl2Params.MLP_OPTIONS)) {
            for (List<Exl2Params> row : grid) {
                for (Exl2Params p : row) {
                    if (p.segments().size() < 2) continue;
                    try {
                        p.requireStorable(in, out, shape);
                    } catch (QtoolException e) {
                        continue;
                    }
                    if (Arrays.stream(p.layout(in).rows()).anyMatch(r -> r % 32 != 0)) continue;  // qt_qmatrix units are 32 rows
                    double bpw = p.bpw(in, Exl2Params.paddedColumns(out), false);
                    if (best == null || Math.abs(bpw - 4.0) < Math.abs(bestBpw - 4.0)) {
                        best = p;
                        bestBpw = bpw;
                    }
                }
            }
        }
        if (best == null) throw new QtoolException("QuantBench: no EXL2 option stores " + shape);
        Exl2Params.GroupLayout layout = best.layout(in);
        int units = in / 32;
        int[] unitTable = new int[2 * units];
        int row = 0;
        for (int g = 0; g < layout.count(); g++) {
            for (int u = layout.firstRow()[g] / 32; u < (layout.firstRow()[g] + layout.rows()[g]) / 32; u++) {
                unitTable[2 * u] = row;
                unitTable[2 * u + 1] = g << 8 | layout.bits()[g];
                row += layout.bits()[g];
            }
        }
        int[] perm = IntStream.range(0, in).toArray();
        RandomGptqLinear.shuffle(perm, new SplittableRandom(in * 31L + out));
        description = "EXL2 " + best.desc() + String.format(" (%.3f bpw in the file)", bestBpw);
        return qmatrix(row, unitTable, layout.count(), 4, null, perm);
    }

    /**
     * Uploads random codes [qrows, out], the unit table, random scales [groups, out] (spread as a weight of standard
     * deviation 0.02 at {@code typicalBits}), zeros and perm when given; returns the host struct. Counts the bytes
     * one product reads in {@link #packedBytes}.
     */
    private MemorySegment qmatrix(int qrows, int[] unitTable, int groups, int typicalBits, short[] zeros, int[] perm) {
        int[] codes = RandomGptqLinear.randomWords((long) qrows * out, in * 7919L + out);
        SplittableRandom rnd = new SplittableRandom(qrows);
        short[] scales = new short[groups * out];
        double scale = 0.02 / Math.sqrt(((1L << (2 * typicalBits)) - 1) / 12.0);
        for (int k = 0; k < scales.length; k++) scales[k] = Float.floatToFloat16((float) (scale * (0.75 + 0.5 * rnd.nextDouble())));
        MemorySegment m = qt_qmatrix.allocate(arena);
        qt_qmatrix.qweight(m, upload(MemorySegment.ofArray(codes)));
        qt_qmatrix.units(m, upload(MemorySegment.ofArray(unitTable)));
        qt_qmatrix.scales(m, upload(MemorySegment.ofArray(scales)));
        qt_qmatrix.zeros(m, zeros == null ? MemorySegment.NULL : upload(MemorySegment.ofArray(zeros)));
        qt_qmatrix.perm(m, perm == null ? MemorySegment.NULL : upload(MemorySegment.ofArray(perm)));
        qt_qmatrix.in(m, in);
        qt_qmatrix.out(m, out);
        qt_qmatrix.groups(m, groups);
        qt_qmatrix.qrows(m, qrows);
        check(qt_qmatrix_prepare(m, stream), "qt_qmatrix_prepare");
        packedBytes = 4L * codes.length + 4L * unitTable.length + 2L * scales.length + (zeros == null ? 0 : 2L * zeros.length)
                + (perm == null ? 0 : 4L * perm.length);
        return m;
    }

    /** n random fp16 values of standard deviation {@code std}, on the device. */
    private MemorySegment randomF16(long n, double std) {
        short[] h = new short[Math.toIntExact(n)];
        int[] bits = RandomGptqLinear.randomWords(n, n);
        double half = std * Math.sqrt(3) / Integer.MAX_VALUE;
        for (int i = 0; i < h.length; i++) h[i] = Float.floatToFloat16((float) (bits[i] * half));
        return upload(MemorySegment.ofArray(h));
    }

    private MemorySegment upload(MemorySegment host) {
        MemorySegment dev = deviceAlloc(host.byteSize());
        try (Arena a = Arena.ofConfined()) {
            MemorySegment staging = a.allocate(host.byteSize(), 16);
            staging.copyFrom(host);
            check(qt_memcpy_htod(dev, staging, host.byteSize(), stream), "qt_memcpy_htod");
        }
        return dev;
    }

    private MemorySegment deviceAlloc(long bytes) {
        MemorySegment slot = arena.allocate(ValueLayout.ADDRESS);
        check(qt_malloc(slot, bytes), "qt_malloc");
        MemorySegment p = slot.get(ValueLayout.ADDRESS, 0);
        deviceBuffers.add(p);
        return p;
    }

    private static void check(int status, String call) {
        if (status != QT_OK()) {
            throw new QtoolException("QuantBench: " + call + " failed (" + status + "): " + qt_last_error().reinterpret(4096).getString(0));
        }
    }
}
