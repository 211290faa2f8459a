package qtool.backend;

import java.io.PrintStream;
import qtool.QtoolException;

/** Opens the backend the global {@code --device auto|cpu|cuda} flag names, and says which one in one line. */
public final class Backends {
    private Backends() {}

    /**
     * {@code auto}: CUDA when libqtool.so loads and a GPU answers, otherwise the CPU, with the reason.
     * {@code cuda}: CUDA or a {@link QtoolException} saying why not. {@code cpu}: the CPU.
     * The choice goes to {@code log} (when not null) as one line, e.g.
     * "qtool: device cuda (NVIDIA H100 80GB HBM3, 79.1 GiB)", "qtool: device cpu (2 threads, vector 256-bit, Java 25)" or
     * "qtool: device cpu (libqtool.so not found; run scripts/build-native.sh or set QTOOL_LIB)".
     */
    public static Backend open(String device, PrintStream log) {
        String choice = device == null ? "auto" : device.trim().toLowerCase(java.util.Locale.ROOT);
        switch (choice) {
            case "cpu" -> {
                Backend cpu = new CpuBackend();
                say(log, "qtool: device " + cpu.description());
                return cpu;
            }
            case "cuda" -> {
                CudaBackend cuda = new CudaBackend();
                say(log, "qtool: device cuda (" + cuda.description() + ")");
                return cuda;
            }
            case "auto" -> {
                try {
                    CudaBackend cuda = new CudaBackend();
                    say(log, "qtool: device cuda (" + cuda.description() + ")");
                    return cuda;
                } catch (QtoolException e) {
                    Backend cpu = new CpuBackend();
                    say(log, "qtool: device cpu (" + NativeLibrary.summary(e) + ")");
                    return cpu;
                }
            }
            default -> throw new QtoolException("--device must be auto, cpu or cuda, not '" + device + "'");
        }
    }

    private static void say(PrintStream log, String line) {
        if (log != null) log.println(line);
    }
}
