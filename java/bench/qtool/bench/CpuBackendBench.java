package qtool.bench;

import java.lang.foreign.MemorySegment;
import java.util.Random;
import java.util.concurrent.TimeUnit;
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
import org.openjdk.jmh.annotations.Warmup;
import qtool.backend.CpuBackend;
import qtool.backend.Tensor;
import qtool.load.DType;

/**
 * The CPU backend's two heavy operations at the shapes of a 512-token window: linear [512×576]·[576×1536]^T
 * (SmolLM2-135M's gate/up projection; GMAC/s = 0.453 / ms per call) and causal attention over 512 positions
 * (SmolLM2: 9 q / 3 kv heads of 64; stories260K: 8 q / 4 kv heads of 8).
 *
 * <p>Run: {@code java -jar target/benchmarks.jar CpuBackendBench}; the fork gets the Vector API module. Add
 * {@code -jvmArgsAppend -Dqtool.cpu.scalar=true} for the plain-Java kernels.
 */
@Fork(value = 1, jvmArgsAppend = {"--add-modules", "jdk.incubator.vector"})
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class CpuBackendBench {

    @State(Scope.Benchmark)
    public static class Linear {
        final CpuBackend cpu = new CpuBackend();
        Tensor x, w, out;

        @Setup(Level.Trial)
        public void make() {
            x = random(cpu, 1, 512, 576);
            w = random(cpu, 2, 1536, 576);
            out = cpu.allocate(DType.F32, 512, 1536);
            System.out.println("CpuBackendBench: " + cpu.description());
        }
    }

    @State(Scope.Benchmark)
    public static class Attention {
        @Param({"9,3,64", "8,4,8"})
        String heads;

        final CpuBackend cpu = new CpuBackend();
        int q, kv, hd;
        Tensor qs, ks, vs, kc, vc, out;

        @Setup(Level.Trial)
        public void make() {
            String[] p = heads.split(",");
            q = Integer.parseInt(p[0]);
            kv = Integer.parseInt(p[1]);
            hd = Integer.parseInt(p[2]);
            qs = random(cpu, 3, 512, q * hd);
            ks = random(cpu, 4, 512, kv * hd);
            vs = random(cpu, 5, 512, kv * hd);
            kc = cpu.allocate(DType.F32, 1, 512, kv * hd);
            vc = cpu.allocate(DType.F32, 1, 512, kv * hd);
            out = cpu.allocate(DType.F32, 512, q * hd);
        }
    }

    @Benchmark
    public Tensor linear512x576x1536(Linear s) {
        s.cpu.linear(s.out, s.x, s.w, null);
        return s.out;
    }

    @Benchmark
    public Tensor attention512(Attention s) {
        s.cpu.attention(s.out, s.qs, s.ks, s.vs, s.kc, s.vc, 1, 512, 0, s.q, s.kv, s.hd);
        return s.out;
    }

    static Tensor random(CpuBackend cpu, long seed, int rows, int cols) {
        float[] a = new float[rows * cols];
        Random r = new Random(seed);
        for (int i = 0; i < a.length; i++) a[i] = (float) r.nextGaussian();
        Tensor t = cpu.allocate(DType.F32, rows, cols);
        cpu.copyFromHost(MemorySegment.ofArray(a), t);
        return t;
    }
}
