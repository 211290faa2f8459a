package qtool.backend;

import java.io.PrintStream;

/** Placeholder until the CUDA backend lands: every device is the CPU. */
public final class Backends {
    private Backends() {}

    public static Backend open(String device, PrintStream log) {
        Backend b = new CpuBackend();
        log.println("qtool: device cpu");
        return b;
    }
}
