package qtool.backend;

import static qtool.ffi.qtool_h.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import qtool.ffi.qt_qmatrix;
import qtool.QtoolException;
import qtool.ffi.qt_device_info;
import qtool.load.DType;

/**
 * {@link Backend} on one NVIDIA GPU: each call is one kernel (or cuBLAS call) of libqtool.so, queued on the
 * backend's own CUDA stream, so calls run in order and only {@link #copyToHost} and {@link #synchronize} wait.
 * Device tensors are device pointers wrapped as zero-length segments. Not thread-safe: one thread drives a backend.
 *
 * <p>Scratch buffers (the 16-bit copy of F32 activations for {@link #linear}, partial results of {@link #attention},
 * staging for uploads that convert, the F16 weight a quantized linear is dequantized into for many rows) belong to
 * the backend and grow as needed. Host memory that is not native (heap arrays) moves through a pinned staging
 * buffer, since native calls cannot take heap segments.
 *
 * <p>Quantized linears: {@link #upload} of a {@link DType#QMATRIX} host tensor copies its arrays to the device and
 * returns a QMATRIX tensor whose struct (in the backend's memory) points at them, its codes rearranged there by
 * qt_qmatrix_prepare; {@link #linear} and
 * {@link #linearAdd} take it as the weight. Decoding can be recorded once as a CUDA graph and replayed
 * ({@link #graphBegin}): nothing may allocate while a capture runs, so uploading a QMATRIX sets aside the scratch of
 * its products of up to {@link #QMATRIX_GEMV_MAX_ROWS} rows, and {@link #prepareDecode} that of
 * {@link #decodeAttention}; an allocation inside a capture throws an IllegalStateException.
 */
public final class CudaBackend implements Backend {

    /** What {@code qt_device_info_get} reports. */
    public record DeviceInfo(String name, long totalMemoryBytes, long freeMemoryBytes, int multiprocessors,
                             int computeMajor, int computeMinor, int memoryClockKhz, int memoryBusWidthBits) {
        /** Peak memory bandwidth from the clock and bus width (DDR: two transfers a clock), GB/s. */
        public double peakBandwidthGBps() {
            return 2.0 * memoryClockKhz * 1e3 * (memoryBusWidthBits / 8.0) / 1e9;
        }
    }

    private static final long PINNED_STAGING_BYTES = 16L << 20;

    private final int device;
    private final DeviceInfo info;
    private final MemorySegment stream;
    private final Set<Long> owned = new HashSet<>();
    private final DeviceScratch linearScratch = new DeviceScratch();
    private final DeviceScratch attentionScratch = new DeviceScratch();
    private final DeviceScratch uploadScratch = new DeviceScratch();
    private final DeviceScratch decodeScratch = new DeviceScratch();
    private final DeviceScratch qmatrixScratch = new DeviceScratch();        // qt_qmatrix_gemv's gathered x
    private final DeviceScratch qmatrixWeightScratch = new DeviceScratch();  // F16 [out, in] for many rows
    private final DeviceScratch gatherScratch = new DeviceScratch();         // F16 x in a weight's input order, many rows
    /** Device arrays of each uploaded QMATRIX tensor, by its struct's address. */
    private final Map<Long, List<Long>> qmatrixArrays = new HashMap<>();
    /** QMATRIX structs (host memory) of this backend; freed ones are reused. */
    private final Arena structArena = Arena.ofShared();
    private final ArrayDeque<MemorySegment> freeStructs = new ArrayDeque<>();
    /** Device blocks of freed QMATRIX arrays by size, reused by the next upload (see freeQMatrixArrays). */
    private final Map<Long, ArrayDeque<Long>> spareQMatrixBlocks = new HashMap<>();
    private final Map<Long, Long> blockBytes = new HashMap<>();
    /** QMATRIX tensors with a perm: a hash of the input order, and the struct that reads x already in that order. */
    private final Map<Long, InputOrder> inputOrders = new HashMap<>();

    private record InputOrder(int hash, MemorySegment ordered) {}
    /** Page-locked host blocks of staged QMATRIX tensors (see stage), freed at close. */
    private final List<MemorySegment> stagedBlocks = new ArrayList<>();
    private MemorySegment pinned = MemorySegment.NULL;  // PINNED_STAGING_BYTES of page-locked host memory
    private boolean capturing;
    private boolean closed;

    /** The first GPU. */
    public CudaBackend() {
        this(0);
    }

    public CudaBackend(int device) {
        NativeLibrary.ensureReady();
        this.device = device;
        check(qt_set_device(device), "qt_set_device");
        this.info = deviceInfo(device);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
            check(qt_stream_create(out), "qt_stream_create");
            this.stream = out.get(ValueLayout.ADDRESS, 0);
        }
        try {
            // One-time setup now rather than inside the first forward pass (about 0.07 s of a 7B model's first
            // 2048-token window on an H100): cuBLAS's handle, and each binding's downcall stub.
            check(qt_linear_prepare(stream), "qt_linear_prepare");
            linkEntryPoints();
        } catch (RuntimeException e) {
            qt_stream_destroy(stream);
            throw e;
        }
    }

    /**
     * Calls each forward kernel's binding once with nothing to do (zero rows): the first call of a jextract binding
     * builds its downcall stub, about a millisecond each.
     */
    private void linkEntryPoints() {
        MemorySegment n = MemorySegment.NULL;
        int f32 = QT_F32();
        check(qt_embedding(n, n, f32, n, 0, 1, 1, stream), "qt_embedding");
        check(qt_rmsnorm(n, f32, n, n, f32, 0, 1, 1e-6f, stream), "qt_rmsnorm");
        check(qt_linear(n, f32, n, f32, n, f32, n, 0, 0, 1, 1, 0, n, 0, stream), "qt_linear");
        check(qt_rope(n, f32, 0, 1, 2, 1, 0, n, stream), "qt_rope");
        try (Arena arena = Arena.ofConfined()) {
            check(qt_attention_scratch_bytes(f32, 0, 1, 0, 1, 1, 4, arena.allocate(ValueLayout.JAVA_LONG)),
                    "qt_attention_scratch_bytes");
        }
        check(qt_attention(n, n, n, n, n, n, f32, 0, 1, 0, 1, 1, 1, 4, n, 0, stream), "qt_attention");
        check(qt_silu_mul(n, n, n, f32, 0, stream), "qt_silu_mul");
        check(qt_add(n, n, 0, stream), "qt_add");
        check(qt_cross_entropy(n, n, n, 0, 1, stream), "qt_cross_entropy");
    }

    /** Device properties of GPU {@code device} (loads the library and initializes CUDA if needed). */
    public static DeviceInfo deviceInfo(int device) {
        NativeLibrary.ensureReady();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment s = qt_device_info.allocate(arena);
            check(qt_device_info_get(device, s), "qt_device_info_get");
            return new DeviceInfo(qt_device_info.name(s).getString(0), qt_device_info.total_memory_bytes(s),
                    qt_device_info.free_memory_bytes(s), qt_device_info.multiprocessor_count(s),
                    qt_device_info.compute_capability_major(s), qt_device_info.compute_capability_minor(s),
                    qt_device_info.memory_clock_khz(s), qt_device_info.memory_bus_width_bits(s));
        }
    }

    public DeviceInfo deviceInfo() {
        return info;
    }

    /** Device-to-device copy bandwidth (bytes read + written per second, in GB/s), timed with CUDA events. */
    public double copyBandwidthGBps(long bytes, int iterations) {
        check(qt_set_device(device), "qt_set_device");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment gbps = arena.allocate(ValueLayout.JAVA_FLOAT);
            check(qt_bench_copy(bytes, iterations, gbps), "qt_bench_copy");
            return gbps.get(ValueLayout.JAVA_FLOAT, 0);
        }
    }

    /** {@link #copyBandwidthGBps(long, int)} over 256 MiB, 20 times. */
    public double copyBandwidthGBps() {
        return copyBandwidthGBps(256L << 20, 20);
    }

    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public String description() {
        return String.format("%s, %.1f GiB", info.name(), info.totalMemoryBytes() / (double) (1L << 30));
    }

    // ---- memory ------------------------------------------------------------------------------------------------

    @Override
    public Tensor allocate(DType dtype, long... shape) {
        if (dtype == DType.QMATRIX) throw new IllegalArgumentException("a QMATRIX tensor comes from upload, not allocate");
        long n = 1;
        for (long d : shape) {
            if (d < 0) throw new IllegalArgumentException("negative dimension in " + java.util.Arrays.toString(shape));
            n *= d;
        }
        long address = malloc(Math.multiplyExact(n, (long) dtype.bytes));
        return new Tensor(MemorySegment.ofAddress(address), dtype, shape);
    }

    @Override
    public void free(Tensor t) {
        if (t != null && t.dtype() == DType.QMATRIX) {
            List<Long> arrays = qmatrixArrays.remove(t.address());
            if (arrays == null) return;
            freeQMatrixArrays(arrays);
            freeStructs.push(t.data());
            InputOrder order = inputOrders.remove(t.address());
            if (order != null) freeStructs.push(order.ordered());
            return;
        }
        if (t != null && owned.remove(t.address())) check(qt_free(t.data()), "qt_free");
    }

    @Override
    public Tensor upload(Tensor host, DType as) {
        if (host.dtype() == DType.QMATRIX) return uploadQMatrix(host);
        boolean onDevice = host.data().byteSize() == 0 && host.numel() > 0;
        if (host.dtype() == as) {
            Tensor t = allocate(as, host.shape());
            if (onDevice) check(qt_memcpy_dtod_async(t.data(), host.data(), host.byteSize(), stream), "qt_memcpy_dtod_async");
            else copyIn(host.data(), t.address(), host.byteSize());
            return t;
        }
        if (!isFloat16Or32(as) || !(isFloat16Or32(host.dtype()) || host.dtype() == DType.F64)) {
            throw new IllegalArgumentException("cannot upload " + host.dtype() + " as " + as + " (float types only)");
        }
        Tensor t = allocate(as, host.shape());
        // Raw bytes to the GPU, then one cast kernel: the CPU touches no element.
        MemorySegment source = host.data();
        if (!onDevice) {
            long staging = uploadScratch.ensure(host.byteSize());
            copyIn(host.data(), staging, host.byteSize());
            source = MemorySegment.ofAddress(staging);
        }
        check(qt_cast(t.data(), code(as), source, code(host.dtype()), host.numel(), stream), "qt_cast");
        return t;
    }

    /**
     * A host QMATRIX tensor's arrays copied to the device, in a struct of this backend's; sets aside the scratch
     * of its products of up to {@link #QMATRIX_GEMV_MAX_ROWS} rows, so that decoding with it allocates nothing.
     */
    private Tensor uploadQMatrix(Tensor host) {
        if (qmatrixArrays.containsKey(host.address())) throw new IllegalArgumentException("upload: " + host + " is on the device already");
        MemorySegment src = host.data().reinterpret(qt_qmatrix.sizeof());
        int in = qt_qmatrix.in(src);
        MemorySegment struct = freeStructs.isEmpty() ? structArena.allocate(qt_qmatrix.layout()) : freeStructs.pop();
        List<Long> arrays = new ArrayList<>();
        try {
            // Straight from the host arrays (no Java copy), into device blocks of the same sizes as the last layer's
            // when layers stream (see freeQMatrixArrays).
            QMatrix.copyStruct(src, struct, (array, bytes) -> place(array, bytes, arrays));
            check(qt_qmatrix_prepare(struct, stream), "qt_qmatrix_prepare");  // the kernels' packing, in place
        } catch (RuntimeException e) {
            freeQMatrixArrays(arrays);
            freeStructs.push(struct);
            throw e;
        }
        Tensor t = new Tensor(struct, DType.QMATRIX, host.shape());
        qmatrixArrays.put(t.address(), arrays);
        MemorySegment hostPerm = qt_qmatrix.perm(src);
        if (hostPerm.address() != 0) {
            // The same matrix reading x already in its input order (see linears): its struct without the perm.
            MemorySegment ordered = freeStructs.isEmpty() ? structArena.allocate(qt_qmatrix.layout()) : freeStructs.pop();
            ordered.copyFrom(struct);
            qt_qmatrix.perm(ordered, MemorySegment.NULL);
            inputOrders.put(t.address(), new InputOrder(hostPerm.reinterpret((long) in * 4).asByteBuffer().hashCode(), ordered));
        }
        long gemvScratch = qmatrixGemvScratchBytes(t, QMATRIX_GEMV_MAX_ROWS);
        if (gemvScratch > 0) qmatrixScratch.ensure(gemvScratch);
        linearScratch.ensure(2L * QMATRIX_GEMV_MAX_ROWS * in);
        return t;
    }

    /** QMATRIX tensors get page-locked copies of their arrays: uploads from them run at the bus's speed. */
    @Override
    public Tensor stage(Tensor host) {
        if (host.dtype() != DType.QMATRIX || qmatrixArrays.containsKey(host.address())) return host;
        MemorySegment struct = structArena.allocate(qt_qmatrix.layout());
        QMatrix.copyStruct(host.data().reinterpret(qt_qmatrix.sizeof()), struct, this::pin);
        return new Tensor(struct, DType.QMATRIX, host.shape());
    }

    private MemorySegment pin(MemorySegment host, long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
            check(qt_host_alloc_pinned(out, bytes), "qt_host_alloc_pinned");
            MemorySegment block = out.get(ValueLayout.ADDRESS, 0).reinterpret(bytes);
            stagedBlocks.add(block);
            return block.copyFrom(host);
        }
    }

    /** A device copy of {@code bytes} at host address {@code host}, recorded in {@code arrays}. */
    private MemorySegment place(MemorySegment host, long bytes, List<Long> arrays) {
        ArrayDeque<Long> spare = spareQMatrixBlocks.get(bytes);
        long address = spare != null && !spare.isEmpty() ? spare.pop() : malloc(bytes);
        arrays.add(address);
        blockBytes.put(address, bytes);
        copyIn(host, address, bytes);
        return MemorySegment.ofAddress(address);
    }

    /**
     * Device blocks of freed quantized matrices are kept for the next upload of the same size rather than returned to
     * the driver: layers streamed per forward pass (--offload) upload and free the same shapes over and over, and a
     * cudaFree waits for the whole device.
     */
    private void freeQMatrixArrays(List<Long> arrays) {
        for (long a : arrays) {
            Long bytes = blockBytes.remove(a);
            if (bytes != null && owned.contains(a)) spareQMatrixBlocks.computeIfAbsent(bytes, b -> new ArrayDeque<>()).push(a);
        }
    }

    private static long qmatrixGemvScratchBytes(Tensor w, int rows) {
        return qmatrixGemvScratchBytes(w.data(), rows);
    }

    private static long qmatrixGemvScratchBytes(MemorySegment w, int rows) {
        return queryBytes("qt_qmatrix_gemv_scratch_bytes", b -> qt_qmatrix_gemv_scratch_bytes(w, rows, b));
    }

    @Override
    public void copyToHost(Tensor src, MemorySegment dst) {
        long bytes = src.byteSize();
        if (dst.byteSize() < bytes) throw new IllegalArgumentException("copyToHost: " + dst.byteSize() + " bytes for " + src);
        if (dst.isNative()) {
            check(qt_memcpy_dtoh(dst, src.data(), bytes, stream), "qt_memcpy_dtoh");
            return;
        }
        MemorySegment staging = pinned();
        for (long done = 0; done < bytes; done += PINNED_STAGING_BYTES) {
            long chunk = Math.min(PINNED_STAGING_BYTES, bytes - done);
            check(qt_memcpy_dtoh(staging, MemorySegment.ofAddress(src.address() + done), chunk, stream), "qt_memcpy_dtoh");
            MemorySegment.copy(staging, 0, dst, done, chunk);
        }
    }

    @Override
    public void copyFromHost(MemorySegment src, Tensor dst) {
        long bytes = dst.byteSize();
        if (src.byteSize() < bytes) throw new IllegalArgumentException("copyFromHost: " + src.byteSize() + " bytes for " + dst);
        copyIn(src, dst.address(), bytes);
    }

    /** Host bytes to device memory; returns once the source may be reused. */
    private void copyIn(MemorySegment src, long deviceAddress, long bytes) {
        if (bytes == 0) return;
        if (src.isNative()) {
            check(qt_memcpy_htod(MemorySegment.ofAddress(deviceAddress), src, bytes, stream), "qt_memcpy_htod");
            return;
        }
        MemorySegment staging = pinned();
        for (long done = 0; done < bytes; done += PINNED_STAGING_BYTES) {
            long chunk = Math.min(PINNED_STAGING_BYTES, bytes - done);
            MemorySegment.copy(src, done, staging, 0, chunk);
            // Waits: the staging buffer is refilled next round.
            check(qt_memcpy_htod(MemorySegment.ofAddress(deviceAddress + done), staging, chunk, stream), "qt_memcpy_htod");
        }
    }

    private MemorySegment pinned() {
        if (pinned.equals(MemorySegment.NULL)) {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
                check(qt_host_alloc_pinned(out, PINNED_STAGING_BYTES), "qt_host_alloc_pinned");
                pinned = out.get(ValueLayout.ADDRESS, 0).reinterpret(PINNED_STAGING_BYTES);
            }
        }
        return pinned;
    }

    @Override
    public void copy(Tensor dst, Tensor src) {
        check(qt_memcpy_dtod(dst.data(), src.data(), src.byteSize(), stream), "qt_memcpy_dtod");
    }

    // ---- quantization --------------------------------------------------------------------------------------------

    /** h += xᵀ·x through cuBLAS SSYRK in FP32 (no TF32) on the upper triangle, mirrored below: h stays symmetric. */
    @Override
    public void accumulateGram(Tensor h, Tensor x) {
        requireType(h, DType.F32, "accumulateGram h");
        requireType(x, DType.F32, "accumulateGram x");
        int in = x.cols(), rows = Math.toIntExact(x.numel() / Math.max(1, in));
        requireCount(h, (long) in * in, "accumulateGram h");
        check(qt_gram_accumulate(h.data(), x.data(), rows, in, stream), "qt_gram_accumulate");
    }

    /**
     * GPTQ on the GPU: the factor of H⁻¹ in float64 (cuSOLVER) and the column loop (a kernel per block of columns, one
     * SGEMM for the lazy update). The permutation, damping retries and g_idx come from {@link qtool.quantize.Gptq}'s
     * own helpers, so they cannot drift from the reference. Block sizes over 128 go through the CPU reference.
     */
    @Override
    public qtool.quantize.GptqResult gptq(Tensor weight, Tensor hessian, qtool.quantize.GptqParams params) {
        requireType(weight, DType.F32, "gptq weight");
        requireType(hessian, DType.F32, "gptq hessian");
        if (weight.shape().length != 2) throw new IllegalArgumentException("gptq weight: expected [out, in], got " + weight);
        int out = weight.rows(), in = weight.cols();
        if (out <= 0 || in <= 0) throw new IllegalArgumentException("empty layer: " + out + "×" + in);
        requireCount(hessian, (long) in * in, "gptq hessian");
        if (params.blockSize() > GPTQ_MAX_BLOCK) return gptqOnHost(weight, hessian, params);

        long t0 = System.nanoTime();
        float[] diagH = new float[in];
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment d = arena.allocate(4L * in, 64);
            check(qt_gptq_diagonal(d, hessian.data(), in, stream), "qt_gptq_diagonal");
            MemorySegment.copy(d, ValueLayout.JAVA_FLOAT, 0, diagH, 0, in);
        }
        double[] diag = qtool.quantize.Gptq.effectiveDiagonal(diagH);
        int[] perm = qtool.quantize.Gptq.processingOrder(diag, params.actOrder());
        double meanDiag = qtool.quantize.Gptq.meanDiagonal(diag);
        int groups = params.numGroups(in);

        long wsBytes = queryBytes("qt_gptq_workspace_bytes", b -> qt_gptq_workspace_bytes(out, in, params.blockSize(), b));
        // One device buffer, carved: workspace | U | perm | codes | scales | zeros | dequantized.
        long[] at = carve(wsBytes, 4L * in * in, 4L * in, (long) out * in, 4L * groups * out, 4L * groups * out, 4L * out * in);
        long base = gptqScratch.ensure(at[at.length - 1]);
        MemorySegment ws = MemorySegment.ofAddress(base + at[0]), u = MemorySegment.ofAddress(base + at[1]);
        MemorySegment permDev = MemorySegment.ofAddress(base + at[2]);
        Tensor codesDev = new Tensor(MemorySegment.ofAddress(base + at[3]), DType.U8, new long[] {out, in});
        Tensor scalesDev = new Tensor(MemorySegment.ofAddress(base + at[4]), DType.F32, new long[] {groups, out});
        Tensor zerosDev = new Tensor(MemorySegment.ofAddress(base + at[5]), DType.I32, new long[] {groups, out});
        MemorySegment deqDev = MemorySegment.ofAddress(base + at[6]);
        copyIn(MemorySegment.ofArray(perm), permDev.address(), 4L * in);

        long t1 = System.nanoTime(), t2;
        double damp = params.damp();
        int retries = 0;
        double loss;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment info = arena.allocate(ValueLayout.JAVA_INT);
            while (true) {
                int status = qt_gptq_inverse_factor(u, hessian.data(), permDev, in, damp * meanDiag, ws, wsBytes, info, stream);
                if (status == 0) break;
                if (status != QT_ERR_NOT_POSITIVE_DEFINITE()) check(status, "qt_gptq_inverse_factor");
                damp = qtool.quantize.Gptq.raisedDamp(damp, in, meanDiag);  // throws past Gptq.MAX_DAMP
                retries++;
            }
            t2 = System.nanoTime();
            MemorySegment lossOut = arena.allocate(ValueLayout.JAVA_DOUBLE);
            check(qt_gptq_quantize(weight.data(), hessian.data(), u, permDev, out, in, params.bits(), params.groupSize(),
                    params.sym() ? 1 : params.v1Zeros() ? 2 : 0, params.mse() ? 1 : 0, params.staticGroups() ? 1 : 0, params.blockSize(),
                    codesDev.data(), scalesDev.data(), zerosDev.data(), deqDev, lossOut, ws, wsBytes, stream),
                    "qt_gptq_quantize");
            loss = lossOut.get(ValueLayout.JAVA_DOUBLE, 0);
        }
        long t3 = System.nanoTime();
        byte[] codes = new byte[out * in];
        float[] scales = new float[groups * out];
        int[] zeros = new int[groups * out];
        copyToHost(codesDev, MemorySegment.ofArray(codes));
        copyToHost(scalesDev, MemorySegment.ofArray(scales));
        copyToHost(zerosDev, MemorySegment.ofArray(zeros));
        // The dequantized weight is scales·(codes − zeros) exactly, on the device as here: rebuilding it from the
        // codes costs less than copying four times the bytes over the bus.
        int[] gIdx = qtool.quantize.Gptq.groupIndex(perm, params);
        float[] dequantized = new float[out * in];
        java.util.stream.IntStream.range(0, out).parallel().forEach(o -> {
            float[] s = new float[groups];
            float[] z = new float[groups];
            for (int g = 0; g < groups; g++) {
                s[g] = scales[g * out + o];
                z[g] = zeros[g * out + o];
            }
            for (int i = 0, k = o * in; i < in; i++, k++) {
                dequantized[k] = qtool.quantize.Quantizer.dequantize(codes[k] & 0xFF, s[gIdx[i]], z[gIdx[i]]);
            }
        });
        lastGptqPhases = new double[] {(t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6, (System.nanoTime() - t3) / 1e6};
        return new qtool.quantize.GptqResult(out, in, params, codes, scales, zeros, gIdx, dequantized, loss, damp, retries,
                perm);
    }

    /**
     * Milliseconds of the last {@link #gptq}'s phases: setup (diagonal, order, scratch, perm upload), H⁻¹'s factor
     * (with retries), the column loop, the copies to host memory. For benchmarks.
     */
    double[] lastGptqPhases() {
        return lastGptqPhases.clone();
    }

    private double[] lastGptqPhases = new double[4];

    /** The widest lazy-update block the GPU column loop takes (qt_gptq_quantize). */
    private static final int GPTQ_MAX_BLOCK = 128;

    /** GPTQ's device memory (workspace, U, outputs), kept between layers; freed with the backend. */
    private final DeviceScratch gptqScratch = new DeviceScratch();

    /** Through host memory and the CPU reference: for settings the GPU loop does not take. */
    private qtool.quantize.GptqResult gptqOnHost(Tensor weight, Tensor hessian, qtool.quantize.GptqParams params) {
        CpuBackend cpu = new CpuBackend();
        Tensor w = cpu.allocate(DType.F32, weight.shape()), h = cpu.allocate(DType.F32, hessian.shape());
        copyToHost(weight, w.data());
        copyToHost(hessian, h.data());
        return cpu.gptq(w, h, params);
    }

    /**
     * EXL2 prepare on the GPU: diag(H) to the host for the order and the damping ({@link qtool.quantize.Exl2Gptq}'s
     * own helpers), then qt_gptq_inverse_factor at 1, 2, ... 10 times the damping until H factors. U and the
     * permutation stay on the device in the returned factor.
     */
    @Override
    public qtool.quantize.Exl2Gptq.Factor exl2Prepare(Tensor hessian) {
        requireType(hessian, DType.F32, "exl2Prepare hessian");
        int in = hessian.cols();
        requireCount(hessian, (long) in * in, "exl2Prepare hessian");
        float[] diagH = new float[in];
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment d = arena.allocate(4L * in, 64);
            check(qt_gptq_diagonal(d, hessian.data(), in, stream), "qt_gptq_diagonal");
            MemorySegment.copy(d, ValueLayout.JAVA_FLOAT, 0, diagH, 0, in);
        }
        double[] diag = new double[in];
        for (int i = 0; i < in; i++) diag[i] = diagH[i];
        int[] perm = qtool.quantize.Gptq.processingOrder(diag, true);
        double damp = qtool.quantize.Exl2Gptq.baseDamp(diag);
        Tensor u = allocate(DType.F32, in, in), permDev = allocate(DType.I32, in);
        try {
            copyIn(MemorySegment.ofArray(perm), permDev.address(), 4L * in);
            long wsBytes = queryBytes("qt_gptq_workspace_bytes", b -> qt_gptq_workspace_bytes(1, in, 1, b));
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment ws = MemorySegment.ofAddress(exl2Scratch.ensure(wsBytes));
                MemorySegment info = arena.allocate(ValueLayout.JAVA_INT);
                for (int attempt = 1; attempt <= qtool.quantize.Exl2Gptq.MAX_ATTEMPTS; attempt++) {
                    int status = qt_gptq_inverse_factor(u.data(), hessian.data(), permDev.data(), in, attempt * damp, ws, wsBytes, info, stream);
                    if (status == 0) return new CudaExl2Factor(in, perm, u, permDev, attempt * damp, attempt);
                    if (status != QT_ERR_NOT_POSITIVE_DEFINITE()) check(status, "qt_gptq_inverse_factor");
                }
            }
            throw qtool.quantize.Exl2Gptq.notInvertible(in, damp);
        } catch (RuntimeException e) {
            free(u);
            free(permDev);
            throw e;
        }
    }

    /** An EXL2 factor held on this device: U [in, in] and the permutation. */
    private final class CudaExl2Factor implements qtool.quantize.Exl2Gptq.Factor {
        private final int in;
        private final int[] perm;
        private final double damp;
        private final int attempts;
        private Tensor u, permDev;

        CudaExl2Factor(int in, int[] perm, Tensor u, Tensor permDev, double damp, int attempts) {
            this.in = in;
            this.perm = perm;
            this.u = u;
            this.permDev = permDev;
            this.damp = damp;
            this.attempts = attempts;
        }

        @Override public int in() { return in; }
        @Override public int[] perm() { return perm.clone(); }
        @Override public double damp() { return damp; }
        @Override public int attempts() { return attempts; }

        /** The host form, for groups the GPU loop does not take. */
        qtool.quantize.Exl2Gptq.Prepared toHost() {
            float[] hu = new float[in * in];
            copyToHost(u, MemorySegment.ofArray(hu));
            return new qtool.quantize.Exl2Gptq.Prepared(in, perm.clone(), hu, damp, attempts);
        }

        @Override
        public void close() {
            if (u == null) return;
            synchronize();
            free(u);
            free(permDev);
            u = permDev = null;
        }
    }

    /**
     * EXL2 quantization of one option on the GPU (qt_exl2_quantize); the dequantized weight is rebuilt on the host from
     * the codes and scales with {@link qtool.quantize.Exl2Tensor}'s arithmetic, which is the kernel's, so it costs
     * no copy of a float matrix.
     */
    @Override
    public qtool.quantize.Exl2Tensor exl2Quantize(qtool.quantize.Exl2Gptq.Factor factor, Tensor weight,
                                                  qtool.quantize.Exl2Params params) {
        requireType(weight, DType.F32, "exl2Quantize weight");
        if (!(factor instanceof CudaExl2Factor f) || f.u == null) {
            throw new IllegalArgumentException("exl2Quantize: the factor is closed or comes from another backend");
        }
        int out = weight.rows(), in = weight.cols();
        if (in != f.in) throw new IllegalArgumentException("exl2Quantize: weight has " + in + " inputs, the factor " + f.in);
        var layout = params.layout(in);
        int groups = layout.count(), maxRows = java.util.Arrays.stream(layout.rows()).max().orElse(0);
        if (maxRows > EXL2_MAX_GROUP_ROWS) {
            CpuBackend cpu = new CpuBackend();
            Tensor w = cpu.allocate(DType.F32, weight.shape());
            copyToHost(weight, w.data());
            return qtool.quantize.Exl2Gptq.quantize(f.toHost(), CpuBackend.f(w), out, params);
        }
        long wsBytes = queryBytes("qt_exl2_workspace_bytes", b -> qt_exl2_workspace_bytes(out, in, maxRows, b));
        // One device buffer: workspace | codes | qscale | qscale_max.
        long[] at = carve(wsBytes, (long) in * out, (long) groups * out, 4L * groups);
        long base = exl2Scratch.ensure(at[at.length - 1]);
        Tensor codesDev = new Tensor(MemorySegment.ofAddress(base + at[1]), DType.U8, new long[] {in, out});
        Tensor qscaleDev = new Tensor(MemorySegment.ofAddress(base + at[2]), DType.U8, new long[] {groups, out});
        Tensor qscaleMaxDev = new Tensor(MemorySegment.ofAddress(base + at[3]), DType.F32, new long[] {groups});
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bits = arena.allocateFrom(ValueLayout.JAVA_INT, layout.bits());
            MemorySegment rows = arena.allocateFrom(ValueLayout.JAVA_INT, layout.rows());
            check(qt_exl2_quantize(weight.data(), f.u.data(), f.permDev.data(), out, in, groups, bits, rows, codesDev.data(),
                    qscaleDev.data(), qscaleMaxDev.data(), MemorySegment.ofAddress(base + at[0]), wsBytes, stream), "qt_exl2_quantize");
        }
        byte[] codes = new byte[in * out], qscale = new byte[groups * out];
        float[] qscaleMax = new float[groups];
        copyToHost(codesDev, MemorySegment.ofArray(codes));
        copyToHost(qscaleDev, MemorySegment.ofArray(qscale));
        copyToHost(qscaleMaxDev, MemorySegment.ofArray(qscaleMax));
        int[] perm = f.perm;
        int[] groupOfRow = new int[in];
        for (int g = 0; g < groups; g++) java.util.Arrays.fill(groupOfRow, layout.firstRow()[g], layout.firstRow()[g] + layout.rows()[g], g);
        float[] dequantized = new float[out * in];
        java.util.stream.IntStream.range(0, out).parallel().forEach(o -> {
            float[] scale = new float[groups];
            for (int g = 0; g < groups; g++) scale[g] = qtool.quantize.Exl2Tensor.subScale(qscale[g * out + o], qscaleMax[g]);
            for (int k = 0; k < in; k++) {
                int g = groupOfRow[k];
                dequantized[o * in + perm[k]] = qtool.quantize.Exl2Tensor.dequantize(codes[k * out + o] & 0xFF, layout.bits()[g], scale[g]);
            }
        });
        return new qtool.quantize.Exl2Tensor(out, in, params, layout, perm.clone(), codes, qscale, qscaleMax, dequantized,
                f.damp, f.attempts);
    }

    /** The largest EXL2 group qt_exl2_quantize takes (it keeps a group's column slice in shared memory). */
    private static final int EXL2_MAX_GROUP_ROWS = 1024;

    /** EXL2's device workspace, kept between linears; freed with the backend. */
    private final DeviceScratch exl2Scratch = new DeviceScratch();

    /**
     * AWQ's clipping search on the GPU: the inputs' Gram matrix XᵀX [in, in] (qt_gram_accumulate), whose diagonal
     * blocks qt_awq_clip_search reads. Groups wider than {@link #AWQ_CLIP_MAX_WIDTH} columns (group size -1 on a wide
     * linear) go through the CPU reference.
     */
    @Override
    public float[] awqClip(Tensor weight, Tensor x, qtool.quantize.AwqParams params, boolean asymmetric) {
        requireType(weight, DType.F32, "awqClip weight");
        requireType(x, DType.F32, "awqClip x");
        int out = weight.rows(), in = weight.cols(), groups = params.numGroups(in);
        if (x.cols() != in) throw new IllegalArgumentException("awqClip: weight has " + in + " inputs, x " + x.cols() + " columns");
        if (params.groupWidth(in) > AWQ_CLIP_MAX_WIDTH) {
            CpuBackend cpu = new CpuBackend();
            Tensor w = cpu.allocate(DType.F32, weight.shape()), xh = cpu.allocate(DType.F32, x.shape());
            copyToHost(weight, w.data());
            copyToHost(x, xh.data());
            return cpu.awqClip(w, xh, params, asymmetric);
        }
        Tensor gram = allocate(DType.F32, in, in), range = null;
        try {
            check(qt_memset_async(gram.data(), 0, gram.byteSize(), stream), "qt_memset_async");
            accumulateGram(gram, x);
            range = allocate(DType.F32, out, groups, 2);
            check(qt_awq_clip_search(range.data(), weight.data(), gram.data(), out, in, params.groupSize(), params.bits(),
                    params.zeroPoint() ? 1 : 0, asymmetric && params.zeroPoint() ? 1 : 0, stream), "qt_awq_clip_search");
            float[] host = new float[2 * out * groups];
            copyToHost(range, MemorySegment.ofArray(host));
            return host;
        } finally {
            free(gram);
            if (range != null) free(range);
        }
    }

    /** The widest group qt_awq_clip_search takes (it keeps the group's block of XᵀX in shared memory). */
    private static final int AWQ_CLIP_MAX_WIDTH = 128;

    // ---- kernels -----------------------------------------------------------------------------------------------

    @Override
    public void embedding(Tensor out, Tensor table, Tensor ids) {
        requireType(ids, DType.I32, "embedding ids");
        requireType(out, DType.F32, "embedding out");
        requireFloat(table, "embedding table");
        int rows = Math.toIntExact(ids.numel()), dim = table.cols();
        requireCount(out, (long) rows * dim, "embedding out");
        check(qt_embedding(out.data(), table.data(), code(table.dtype()), ids.data(), rows, dim, table.rows(), stream),
                "qt_embedding");
    }

    /** F16/BF16 activations for F16/BF16 linears, when the tensor-core attention takes the head size. */
    @Override
    public DType activationType(DType linearType, int headDim) {
        boolean halfLinear = linearType == DType.F16 || linearType == DType.BF16;
        return halfLinear && headDim > 0 && headDim % 8 == 0 && headDim <= 128 ? linearType : DType.F32;
    }

    @Override
    public void rmsNorm(Tensor out, Tensor x, Tensor weight, float eps) {
        requireType(x, DType.F32, "rmsNorm x");
        requireFloat(out, "rmsNorm out");
        requireFloat(weight, "rmsNorm weight");
        requireCount(out, x.numel(), "rmsNorm out");
        requireCount(weight, x.cols(), "rmsNorm weight");
        check(qt_rmsnorm(out.data(), code(out.dtype()), x.data(), weight.data(), code(weight.dtype()), x.rows(), x.cols(),
                eps, stream), "qt_rmsnorm");
    }

    @Override
    public void linear(Tensor out, Tensor x, Tensor weight, Tensor bias) {
        linear(out, x, weight, bias, false);
    }

    /** out (F32) += x weight^T (+ bias): cuBLAS with beta = 1, no separate add. */
    @Override
    public void linearAdd(Tensor out, Tensor x, Tensor weight, Tensor bias) {
        requireType(out, DType.F32, "linearAdd out");
        linear(out, x, weight, bias, true);
    }

    private void linear(Tensor out, Tensor x, Tensor weight, Tensor bias, boolean accumulate) {
        if (weight.dtype() == DType.QMATRIX) {
            qmatrixLinear(out, x, weight, bias, accumulate);
            return;
        }
        requireFloat(weight, "linear weight");
        DType allowed = weight.dtype();  // besides F32, x and out may be of the weight's 16-bit type
        if (x.dtype() != DType.F32 && x.dtype() != allowed) throw new IllegalArgumentException("linear x: expected F32 or " + allowed + ", got " + x);
        if (out.dtype() != DType.F32 && out.dtype() != allowed) throw new IllegalArgumentException("linear out: expected F32 or " + allowed + ", got " + out);
        int rows = x.rows(), in = x.cols(), outF = weight.rows();
        if (weight.cols() != in) throw new IllegalArgumentException("linear: x " + x + " does not match weight " + weight);
        requireCount(out, (long) rows * outF, "linear out");
        if (bias != null) {
            requireFloat(bias, "linear bias");
            requireCount(bias, outF, "linear bias");
        }
        long scratchBytes = 0;
        MemorySegment scratch = MemorySegment.NULL;
        if (weight.dtype() != DType.F32 && x.dtype() == DType.F32) {
            scratchBytes = 2L * rows * in;
            scratch = MemorySegment.ofAddress(linearScratch.ensure(scratchBytes));
        }
        check(qt_linear(out.data(), code(out.dtype()), x.data(), code(x.dtype()), weight.data(), code(weight.dtype()),
                bias == null ? MemorySegment.NULL : bias.data(), bias == null ? 0 : code(bias.dtype()),
                rows, in, outF, accumulate ? 1 : 0, scratch, scratchBytes, stream), "qt_linear");
    }

    /**
     * Most rows qt_qmatrix_gemv takes (a CUDA-core GEMV up to 8 rows, tensor cores from 9); more rows dequantize
     * into a scratch weight for one cuBLAS product.
     */
    public static final int QMATRIX_GEMV_MAX_ROWS = 64;

    /** Most matrices one qt_qmatrix_gemv_many launch takes. */
    private static final int QMATRIX_GEMV_MAX_SET = 4;

    /**
     * Consecutive quantized weights of one input order (q/k/v, gate/up) multiply x, at up to
     * {@link #QMATRIX_GEMV_MAX_ROWS} rows, in one qt_qmatrix_gemv_many launch: one gather of x for them all, and one
     * grid that fills the GPU where each 4096-output product alone fills half of it. Orders are compared by their
     * arrays' hashes and sizes, taken at upload; weights without a perm share x as it is.
     */
    @Override
    public void linears(Tensor x, Tensor[] outs, Tensor[] weights, Tensor[] biases) {
        for (int j = 0; j < outs.length; ) {
            int end = j + 1;
            while (end < outs.length && end - j < QMATRIX_GEMV_MAX_SET && oneGemvLaunch(x, outs[j], weights[j], outs[end], weights[end])) end++;
            if (end - j == 1) linear(outs[j], x, weights[j], biases == null ? null : biases[j]);
            else gemvMany(x, Arrays.copyOfRange(outs, j, end), Arrays.copyOfRange(weights, j, end),
                    biases == null ? new Tensor[end - j] : Arrays.copyOfRange(biases, j, end));
            j = end;
        }
    }

    /** Whether weight w (writing out) may join the qt_qmatrix_gemv_many launch of weight first (writing firstOut). */
    private boolean oneGemvLaunch(Tensor x, Tensor firstOut, Tensor first, Tensor out, Tensor w) {
        if (first.dtype() != DType.QMATRIX || w.dtype() != DType.QMATRIX || x.rows() < 1 || x.rows() > QMATRIX_GEMV_MAX_ROWS) return false;
        if (!qmatrixArrays.containsKey(first.address()) || !qmatrixArrays.containsKey(w.address())) return false;
        if (w.cols() != first.cols() || out.dtype() != firstOut.dtype()) return false;
        InputOrder a = inputOrders.get(first.address()), b = inputOrders.get(w.address());
        return a == null ? b == null : b != null && a.hash() == b.hash();
    }

    /** qt_qmatrix_gemv_many: out[i] = x weights[i]^T (+ biases[i]) in one launch (see linears). */
    private void gemvMany(Tensor x, Tensor[] outs, Tensor[] weights, Tensor[] biases) {
        int rows = x.rows(), n = outs.length;
        for (int i = 0; i < n; i++) checkQMatrixLinear(outs[i], x, weights[i], biases[i]);
        MemorySegment x16 = float16Rows(x);
        long structBytes = qt_qmatrix.sizeof();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment structs = arena.allocate(qt_qmatrix.layout(), n), ys = arena.allocate(ValueLayout.ADDRESS, n);
            for (int i = 0; i < n; i++) {
                structs.asSlice(i * structBytes, structBytes).copyFrom(weights[i].data().reinterpret(structBytes));
                ys.setAtIndex(ValueLayout.ADDRESS, i, outs[i].data());
            }
            long scratchBytes = qmatrixGemvScratchBytes(weights[0], rows);
            MemorySegment scratch = scratchBytes == 0 ? MemorySegment.NULL : MemorySegment.ofAddress(qmatrixScratch.ensure(scratchBytes));
            check(qt_qmatrix_gemv_many(n, ys, code(outs[0].dtype()), 0, x16, structs, rows, scratch, scratchBytes, stream),
                    "qt_qmatrix_gemv_many");
        }
        for (int i = 0; i < n; i++) if (biases[i] != null) addBias(outs[i], biases[i], rows, weights[i].rows());
    }

    /** The checks of a quantized linear's operands (w a QMATRIX tensor of this backend). */
    private void checkQMatrixLinear(Tensor out, Tensor x, Tensor w, Tensor bias) {
        if (!qmatrixArrays.containsKey(w.address())) throw new IllegalArgumentException("linear weight " + w + " is not a QMATRIX tensor of this backend (upload it)");
        if (w.cols() != x.cols()) throw new IllegalArgumentException("linear: x " + x + " does not match weight " + w);
        if (x.dtype() != DType.F32 && x.dtype() != DType.F16) throw new IllegalArgumentException("linear x: expected F32 or F16 with a QMATRIX weight, got " + x);
        if (out.dtype() != DType.F32 && out.dtype() != DType.F16) throw new IllegalArgumentException("linear out: expected F32 or F16 with a QMATRIX weight, got " + out);
        requireCount(out, (long) x.rows() * w.rows(), "linear out");
        if (bias != null) {
            requireFloat(bias, "linear bias");
            requireCount(bias, w.rows(), "linear bias");
        }
    }

    /** x's rows as F16 for the GEMV: x itself, or x rounded into the linear scratch. */
    private MemorySegment float16Rows(Tensor x) {
        if (x.dtype() == DType.F16) return x.data();
        MemorySegment x16 = MemorySegment.ofAddress(linearScratch.ensure(2L * x.numel()));
        check(qt_cast(x16, QT_F16(), x.data(), QT_F32(), x.numel(), stream), "qt_cast");
        return x16;
    }

    /**
     * A quantized linear (w a QMATRIX tensor of this backend). Up to {@link #QMATRIX_GEMV_MAX_ROWS} rows:
     * qt_qmatrix_gemv straight from the packed codes (x rounded to F16 first when it is F32; the residual add fused
     * for linearAdd), the bias added after as qt_linear adds it. More rows: qt_qmatrix_dequant into a scratch F16
     * weight, then the dense product.
     */
    private void qmatrixLinear(Tensor out, Tensor x, Tensor w, Tensor bias, boolean accumulate) {
        checkQMatrixLinear(out, x, w, bias);
        int rows = x.rows(), in = x.cols(), outF = w.rows();
        if (rows == 0) return;
        if (rows > QMATRIX_GEMV_MAX_ROWS) {
            MemorySegment matrix = w.data();
            InputOrder order = inputOrders.get(w.address());
            if (order != null && x.dtype() == DType.F16) {
                // x's columns into W's processing order and W dequantized in that order: its writes stay contiguous
                // (dequantizing through the perm scatters them, ~15x slower on an 11008-input EXL2 weight)
                Tensor gathered = new Tensor(MemorySegment.ofAddress(gatherScratch.ensure(2L * rows * in)), DType.F16, new long[] {rows, in});
                check(qt_gather_columns(gathered.data(), x.data(), qt_qmatrix.perm(matrix), rows, in, stream), "qt_gather_columns");
                x = gathered;
                matrix = order.ordered();
            }
            Tensor weight = new Tensor(MemorySegment.ofAddress(qmatrixWeightScratch.ensure(2L * outF * in)), DType.F16, new long[] {outF, in});
            check(qt_qmatrix_dequant(weight.data(), matrix, stream), "qt_qmatrix_dequant");
            linear(out, x, weight, bias, accumulate);
            return;
        }
        long scratchBytes = qmatrixGemvScratchBytes(w, rows);
        MemorySegment scratch = scratchBytes == 0 ? MemorySegment.NULL : MemorySegment.ofAddress(qmatrixScratch.ensure(scratchBytes));
        check(qt_qmatrix_gemv(out.data(), code(out.dtype()), accumulate ? 1 : 0, float16Rows(x), w.data(), rows, scratch, scratchBytes, stream),
                "qt_qmatrix_gemv");
        if (bias != null) addBias(out, bias, rows, outF);
    }

    /** out [rows, outF] += bias: qt_linear's empty product (in_features 0 reads neither x nor weight) plus its bias kernel. */
    private void addBias(Tensor out, Tensor bias, int rows, int outF) {
        check(qt_linear(out.data(), code(out.dtype()), out.data(), QT_F16(), out.data(), QT_F16(), bias.data(), code(bias.dtype()),
                rows, 0, outF, 1, MemorySegment.NULL, 0, stream), "qt_linear (bias)");
    }

    // ---- decoding ------------------------------------------------------------------------------------------------

    /** qt_decode_attention: the position read on the device, so that one captured graph serves every step. All F16. */
    @Override
    public void decodeAttention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache, int batch, int heads,
                                int kvHeads, int headDim, Tensor pos, Tensor invFreq) {
        for (Tensor t : new Tensor[] {out, q, k, v, kCache, vCache}) requireType(t, DType.F16, "decodeAttention (q, k, v, caches, out)");
        requireType(pos, DType.I32, "decodeAttention pos");
        requireCount(pos, 1, "decodeAttention pos");
        requireType(invFreq, DType.F32, "decodeAttention invFreq");
        long qCount = (long) batch * heads * headDim, kvCount = (long) batch * kvHeads * headDim;
        requireCount(q, qCount, "decodeAttention q");
        requireCount(out, qCount, "decodeAttention out");
        requireCount(k, kvCount, "decodeAttention k");
        requireCount(v, kvCount, "decodeAttention v");
        if (kvCount == 0 || kCache.numel() % kvCount != 0 || vCache.numel() != kCache.numel()) {
            throw new IllegalArgumentException("decodeAttention: caches " + kCache + ", " + vCache + " are not [batch, maxSeq, kvHeads * headDim]");
        }
        if (invFreq.numel() < headDim / 2) throw new IllegalArgumentException("decodeAttention: invFreq " + invFreq + " < headDim / 2");
        int maxSeq = Math.toIntExact(kCache.numel() / kvCount);
        long bytes = decodeScratchBytes(batch, maxSeq, heads, kvHeads, headDim);
        MemorySegment scratch = bytes == 0 ? MemorySegment.NULL : MemorySegment.ofAddress(decodeScratch.ensure(bytes));
        check(qt_decode_attention(out.data(), q.data(), k.data(), v.data(), kCache.data(), vCache.data(), batch, maxSeq, heads, kvHeads,
                headDim, pos.data(), invFreq.data(), scratch, bytes, stream), "qt_decode_attention");
    }

    @Override
    public void prepareDecode(int batch, int maxSeq, int heads, int kvHeads, int headDim) {
        long bytes = decodeScratchBytes(batch, maxSeq, heads, kvHeads, headDim);
        if (bytes > 0) decodeScratch.ensure(bytes);
    }

    private static long decodeScratchBytes(int batch, int maxSeq, int heads, int kvHeads, int headDim) {
        return queryBytes("qt_decode_attention_scratch_bytes",
                b -> qt_decode_attention_scratch_bytes(batch, maxSeq, heads, kvHeads, headDim, b));
    }

    /**
     * Starts recording this backend's calls into a CUDA graph instead of running them (qt_graph_begin on its
     * stream), until {@link #graphEnd}. Only calls that neither wait nor allocate may be recorded: kernels and
     * products whose scratch is already set aside (see the class comment).
     */
    public void graphBegin() {
        if (capturing) throw new IllegalStateException("graphBegin: a capture is already running");
        check(qt_graph_begin(stream), "qt_graph_begin");
        capturing = true;
    }

    /** Ends the capture and returns the instantiated graph (for {@link #graphLaunch}; {@link #graphDestroy} frees it). */
    public MemorySegment graphEnd() {
        capturing = false;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment graph = arena.allocate(ValueLayout.ADDRESS);
            check(qt_graph_end(stream, graph), "qt_graph_end");
            return graph.get(ValueLayout.ADDRESS, 0);
        }
    }

    /** Queues one replay of {@code graph} on this backend's stream. */
    public void graphLaunch(MemorySegment graph) {
        check(qt_graph_launch(graph, stream), "qt_graph_launch");
    }

    public void graphDestroy(MemorySegment graph) {
        check(qt_graph_destroy(graph), "qt_graph_destroy");
    }

    /** Device milliseconds per call of {@code work} (queued on this backend), timed with CUDA events after a warm-up. */
    public double timeMs(Runnable work, int iterations) {
        work.run();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocate(ValueLayout.ADDRESS), b = arena.allocate(ValueLayout.ADDRESS);
            check(qt_event_create(a), "qt_event_create");
            check(qt_event_create(b), "qt_event_create");
            MemorySegment start = a.get(ValueLayout.ADDRESS, 0), end = b.get(ValueLayout.ADDRESS, 0);
            try {
                check(qt_event_record(start, stream), "qt_event_record");
                for (int k = 0; k < iterations; k++) work.run();
                check(qt_event_record(end, stream), "qt_event_record");
                check(qt_event_synchronize(end), "qt_event_synchronize");
                MemorySegment ms = arena.allocate(ValueLayout.JAVA_FLOAT);
                check(qt_event_elapsed_ms(start, end, ms), "qt_event_elapsed_ms");
                return ms.get(ValueLayout.JAVA_FLOAT, 0) / iterations;
            } finally {
                qt_event_destroy(start);
                qt_event_destroy(end);
            }
        }
    }

    @Override
    public void rope(Tensor x, int heads, int headDim, int seqLen, int startPos, Tensor invFreq) {
        requireFloat(x, "rope x");
        requireType(invFreq, DType.F32, "rope invFreq");
        if (x.cols() != heads * headDim) throw new IllegalArgumentException("rope: x " + x + " is not heads * headDim wide");
        if (invFreq.numel() < headDim / 2) throw new IllegalArgumentException("rope: invFreq " + invFreq + " < headDim / 2");
        check(qt_rope(x.data(), code(x.dtype()), x.rows(), heads, headDim, seqLen, startPos, invFreq.data(), stream), "qt_rope");
    }

    @Override
    public void attention(Tensor out, Tensor q, Tensor k, Tensor v, Tensor kCache, Tensor vCache,
                          int batch, int seqLen, int startPos, int heads, int kvHeads, int headDim) {
        requireFloat(q, "attention q");
        DType type = q.dtype();
        for (Tensor t : new Tensor[] {out, k, v, kCache, vCache}) requireType(t, type, "attention (all tensors of q's type)");
        long qCount = (long) batch * seqLen * heads * headDim, kvCount = (long) batch * seqLen * kvHeads * headDim;
        requireCount(q, qCount, "attention q");
        requireCount(out, qCount, "attention out");
        requireCount(k, kvCount, "attention k");
        requireCount(v, kvCount, "attention v");
        long perPosition = (long) batch * kvHeads * headDim;
        if (perPosition == 0 || kCache.numel() % perPosition != 0 || vCache.numel() != kCache.numel()) {
            throw new IllegalArgumentException("attention: caches " + kCache + ", " + vCache + " are not [batch, maxSeq, kvHeads * headDim]");
        }
        int maxSeq = Math.toIntExact(kCache.numel() / perPosition);
        long scratchBytes = queryBytes("qt_attention_scratch_bytes",
                b -> qt_attention_scratch_bytes(code(type), batch, seqLen, startPos, heads, kvHeads, headDim, b));
        MemorySegment scratch = scratchBytes == 0 ? MemorySegment.NULL : MemorySegment.ofAddress(attentionScratch.ensure(scratchBytes));
        check(qt_attention(out.data(), q.data(), k.data(), v.data(), kCache.data(), vCache.data(), code(type), batch, seqLen,
                startPos, maxSeq, heads, kvHeads, headDim, scratch, scratchBytes, stream), "qt_attention");
    }

    @Override
    public void siluMul(Tensor out, Tensor gate, Tensor up) {
        requireFloat(gate, "siluMul gate");
        for (Tensor t : new Tensor[] {out, up}) requireType(t, gate.dtype(), "siluMul (all tensors of gate's type)");
        requireCount(up, gate.numel(), "siluMul up");
        requireCount(out, gate.numel(), "siluMul out");
        check(qt_silu_mul(out.data(), gate.data(), up.data(), code(gate.dtype()), gate.numel(), stream), "qt_silu_mul");
    }

    @Override
    public void add(Tensor x, Tensor y) {
        requireType(x, DType.F32, "add x");
        requireType(y, DType.F32, "add y");
        requireCount(y, x.numel(), "add y");
        check(qt_add(x.data(), y.data(), x.numel(), stream), "qt_add");
    }

    @Override
    public void crossEntropy(Tensor out, Tensor logits, Tensor targets) {
        requireType(logits, DType.F32, "crossEntropy logits");
        requireType(out, DType.F32, "crossEntropy out");
        requireType(targets, DType.I32, "crossEntropy targets");
        requireCount(targets, logits.rows(), "crossEntropy targets");
        requireCount(out, logits.rows(), "crossEntropy out");
        check(qt_cross_entropy(out.data(), logits.data(), targets.data(), logits.rows(), logits.cols(), stream),
                "qt_cross_entropy");
    }

    @Override
    public void synchronize() {
        check(qt_stream_synchronize(stream), "qt_stream_synchronize");
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        // Pending work may still use what is freed below.
        int status = qt_stream_synchronize(stream);
        for (long address : owned) qt_free(MemorySegment.ofAddress(address));
        owned.clear();
        for (MemorySegment block : stagedBlocks) qt_host_free_pinned(block);
        stagedBlocks.clear();
        linearScratch.release();
        attentionScratch.release();
        uploadScratch.release();
        decodeScratch.release();
        qmatrixScratch.release();
        qmatrixWeightScratch.release();
        gatherScratch.release();
        qmatrixArrays.clear();
        structArena.close();
        if (!pinned.equals(MemorySegment.NULL)) qt_host_free_pinned(pinned);
        pinned = MemorySegment.NULL;
        qt_stream_destroy(stream);
        check(status, "qt_stream_synchronize");
    }

    // ---- helpers -----------------------------------------------------------------------------------------------

    /** One of libqtool's size queries: {@code query} gets a place for the size_t answer, which is returned. */
    private static long queryBytes(String call, java.util.function.ToIntFunction<MemorySegment> query) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bytes = arena.allocate(ValueLayout.JAVA_LONG);
            check(query.applyAsInt(bytes), call);
            return bytes.get(ValueLayout.JAVA_LONG, 0);
        }
    }

    /** Offsets of blocks of the given sizes carved one after another, 256-byte aligned, from one buffer; the last entry is its size. */
    private static long[] carve(long... sizes) {
        long[] at = new long[sizes.length + 1];
        for (int k = 0; k < sizes.length; k++) at[k + 1] = at[k] + ((sizes[k] + 255) & ~255L);
        return at;
    }

    private long malloc(long bytes) {
        if (capturing) throw new IllegalStateException("a device allocation of " + bytes + " bytes inside a CUDA graph capture: "
                + "upload weights and call prepareDecode before graphBegin");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
            check(qt_malloc(out, bytes), "qt_malloc");
            long address = out.get(ValueLayout.ADDRESS, 0).address();
            if (address != 0) owned.add(address);
            return address;
        }
    }

    /** A device buffer that only grows. */
    private final class DeviceScratch {
        private long address;
        private long bytes;

        long ensure(long need) {
            if (need <= bytes) return address;
            if (capturing) throw new IllegalStateException("a CUDA graph capture needs " + need + " bytes of scratch (" + bytes
                    + " set aside): upload weights and call prepareDecode before graphBegin");
            // The stream may still read the old buffer: finish that work before freeing it.
            synchronize();
            release();
            long grown = Math.max(need, bytes + bytes / 2);
            address = malloc(grown);
            bytes = grown;
            return address;
        }

        void release() {
            if (address != 0 && owned.remove(address)) qt_free(MemorySegment.ofAddress(address));
            address = 0;
            bytes = 0;
        }
    }

    /** Throws a QtoolException naming the call, the status and libqtool's detail message, unless status is QT_OK. */
    static void check(int status, String call) {
        if (status == 0) return;
        String name = NativeLibrary.string(qt_status_string(status));
        String detail = NativeLibrary.string(qt_last_error());
        throw new QtoolException(call + " failed: " + name + (detail.isEmpty() ? "" : ": " + detail));
    }

    static int code(DType dtype) {
        return switch (dtype) {
            case F32 -> QT_F32();
            case F16 -> QT_F16();
            case BF16 -> QT_BF16();
            case I32 -> QT_I32();
            case F64 -> QT_F64();
            default -> throw new IllegalArgumentException("no kernel takes " + dtype);
        };
    }

    private static boolean isFloat16Or32(DType d) {
        return d == DType.F32 || d == DType.F16 || d == DType.BF16;
    }

    private static void requireType(Tensor t, DType dtype, String what) {
        if (t.dtype() != dtype) throw new IllegalArgumentException(what + ": expected " + dtype + ", got " + t);
    }

    private static void requireFloat(Tensor t, String what) {
        if (!isFloat16Or32(t.dtype())) throw new IllegalArgumentException(what + ": expected F32, F16 or BF16, got " + t);
    }

    private static void requireCount(Tensor t, long count, String what) {
        if (t.numel() != count) throw new IllegalArgumentException(what + ": expected " + count + " elements, got " + t);
    }
}
