package qtool.cli;

import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import qtool.backend.Backend;
import qtool.backend.CudaBackend;

/** {@code qtool device}: which backend qtool picks here, the GPU's properties and its measured copy bandwidth. */
@Command(name = "device", mixinStandardHelpOptions = true, description = "Show the compute device; --bench measures device copy bandwidth.")
public final class DeviceCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec picocli.CommandLine.Model.CommandSpec spec;

    private java.io.PrintWriter out() {
        return spec.commandLine().getOut();
    }

    @Mixin DeviceOption device;

    @Option(names = "--bench", description = "Measure device-to-device copy bandwidth (CUDA events; bytes read + written).")
    boolean bench;

    @Override
    public Integer call() {
        try (Backend b = device.open()) {
            out().println(b.description());
            if (b instanceof CudaBackend cuda) {
                CudaBackend.DeviceInfo i = cuda.deviceInfo();
                out().printf("compute capability %d.%d, %d SMs, %.1f GiB (%.1f GiB free), peak memory bandwidth %.0f GB/s%n",
                        i.computeMajor(), i.computeMinor(), i.multiprocessors(), i.totalMemoryBytes() / (double) (1L << 30),
                        i.freeMemoryBytes() / (double) (1L << 30), i.peakBandwidthGBps());
                if (bench) out().printf("device copy bandwidth %.1f GB/s (1 GiB buffer)%n", cuda.copyBandwidthGBps(1L << 30, 20));
            }
            return 0;
        }
    }
}
