package qtool.cli;

import picocli.CommandLine.Option;
import qtool.backend.Backend;
import qtool.backend.Backends;

/** The {@code --device} flag, mixed into every command that computes. */
public final class DeviceOption {
    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda",
            description = "Where to compute: auto (CUDA when libqtool loads and a GPU answers, else CPU), cpu or cuda. Default: ${DEFAULT-VALUE}.")
    String device;

    public Backend open() {
        if (!device.equals("auto") && !device.equals("cpu") && !device.equals("cuda")) {
            throw new qtool.QtoolException("--device must be auto, cpu or cuda, not '" + device + "'");
        }
        return Backends.open(device, System.err);
    }
}
