package qtool.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;

class CudaBackendTest {

    @Test
    void autoSaysInOneLineWhichDeviceAndWhy() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (PrintStream log = new PrintStream(bytes, true, StandardCharsets.UTF_8);
             Backend backend = Backends.open("auto", log)) {
            String text = bytes.toString(StandardCharsets.UTF_8);
            assertEquals(1, text.lines().count(), text);
            assertTrue(text.startsWith("qtool: device " + backend.name()), text);
            if (backend.name().equals("cpu")) assertTrue(text.contains("("), "the reason CUDA was not used: " + text);
        }
    }

    @Test
    void unknownDeviceIsAnError() {
        assertThrows(QtoolException.class, () -> Backends.open("tpu", null));
    }

    @Test
    void cudaWithoutAGpuIsAnErrorThatSaysWhy() {
        CudaBackend gpu = openOrNull();
        Assumptions.assumeTrue(gpu == null, "a GPU answers here");
        QtoolException e = assertThrows(QtoolException.class, () -> Backends.open("cuda", null));
        assertTrue(e.getMessage().contains("libqtool.so") || e.getMessage().contains("GPU") || e.getMessage().contains("cuBLAS"),
                e.getMessage());
    }

    @Test
    void kernelsMatchReferencesOnTheGpu() {
        CudaBackend gpu = openOrNull();
        Assumptions.assumeTrue(gpu != null, "no GPU here");
        try (gpu) {
            for (CudaBackendCheck.Result r : new CudaBackendCheck(gpu, 42).runAll()) {
                assertTrue(r.pass(), r.name() + ": error " + r.error() + " > " + r.limit());
            }
        }
    }

    private static CudaBackend openOrNull() {
        try {
            return new CudaBackend();
        } catch (QtoolException e) {
            return null;
        }
    }
}
