package qtool.bench;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;
import org.openjdk.jmh.infra.Blackhole;
import qtool.QtoolException;
import qtool.backend.CudaBackend;
import qtool.backend.NativeLibrary;
import qtool.ffi.qtool_h;

/**
 * Costs at the Java/native boundary: an FFM downcall into libqtool.so (needs the library, not a GPU), and the
 * GPU's device-to-device copy bandwidth measured with CUDA events (needs a GPU; without one the benchmark says so
 * once and returns at once).
 *
 * <p>Run: {@code java -jar target/benchmarks.jar NativeBench} (with libqtool.so at build/native/ or QTOOL_LIB).
 */
@Fork(value = 1, jvmArgsAppend = "--enable-native-access=ALL-UNNAMED")
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
public class NativeBench {

    @State(Scope.Benchmark)
    public static class Library {
        @Setup(Level.Trial)
        public void load() {
            NativeLibrary.load();
        }
    }

    @State(Scope.Benchmark)
    public static class Gpu {
        CudaBackend backend;
        double lastGBps;

        @Setup(Level.Trial)
        public void open() {
            try {
                backend = new CudaBackend();
            } catch (QtoolException e) {
                System.out.println("NativeBench: no GPU, copy bandwidth skipped (" + NativeLibrary.summary(e) + ")");
            }
        }

        @TearDown(Level.Trial)
        public void close() {
            if (backend != null) {
                System.out.printf("NativeBench: device copy %.1f GB/s (read + write, CUDA events, 256 MiB) on %s%n",
                        lastGBps, backend.description());
                backend.close();
            }
        }
    }

    /** One downcall that does nothing: the floor under every kernel launch from Java. */
    @Benchmark
    @BenchmarkMode(Mode.AverageTime)
    @OutputTimeUnit(TimeUnit.NANOSECONDS)
    public int downcallNoop(Library library) {
        return qtool_h.qt_noop();
    }

    /** A downcall returning a C string (a pointer), without reading it. */
    @Benchmark
    @BenchmarkMode(Mode.AverageTime)
    @OutputTimeUnit(TimeUnit.NANOSECONDS)
    public MemorySegment downcallStatusString(Library library) {
        return qtool_h.qt_status_string(qtool_h.QT_ERR_CUDA());
    }

    /**
     * Device-to-device copy bandwidth in GB/s (bytes read + written), each invocation 20 copies of 256 MiB timed
     * with CUDA events. The score is the time per invocation; the GB/s go to the blackhole and are printed at the end.
     */
    @Benchmark
    @BenchmarkMode(Mode.SingleShotTime)
    @Warmup(iterations = 2)
    @Measurement(iterations = 5)
    @OutputTimeUnit(TimeUnit.MILLISECONDS)
    public void deviceCopyBandwidth(Gpu gpu, Blackhole bh) {
        if (gpu.backend == null) return;
        gpu.lastGBps = gpu.backend.copyBandwidthGBps(256L << 20, 20);
        bh.consume(gpu.lastGBps);
    }
}
