package qtool.backend;

import static qtool.ffi.qtool_h.qt_init;
import static qtool.ffi.qtool_h.qt_last_error;

import java.io.File;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.URISyntaxException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import qtool.QtoolException;
import qtool.ffi.qtool_h;

/**
 * Finds and loads libqtool.so, then initializes CUDA and cuBLAS through {@code qt_init}. The jextract bindings in
 * {@code qtool.ffi} name no library: their symbols resolve in whatever this class has {@link System#load}ed.
 *
 * <p>Where the library is looked for, in order: the system property {@code qtool.lib}, the environment variable
 * {@code QTOOL_LIB}, {@code libqtool.so} beside the running jar, {@code build/native/libqtool.so} under the current
 * folder, and {@code build/native/libqtool.so} of the checkout the classes were built in. The first two, when set,
 * are the only place looked.
 *
 * <p>CUDA libraries (cuBLAS, cuSOLVER) come from {@code QTOOL_CUDA_LIB_DIR} (one folder or a ':'-separated list)
 * when set, else from the CUDA 13 toolkit's usual folders and PyTorch's {@code nvidia/cu13/lib}.
 *
 * <p>Every failure is a {@link QtoolException} whose message says why in words, first line a summary suitable for
 * one line of log ({@link #summary}).
 */
public final class NativeLibrary {
    public static final String FILE_NAME = "libqtool.so";

    private static Path loadedPath;
    private static QtoolException loadFailure;
    private static boolean initialized;
    private static QtoolException initFailure;

    private NativeLibrary() {}

    /** Loads libqtool.so and initializes CUDA; idempotent. Throws the same exception again after a failure. */
    public static synchronized Path ensureReady() {
        Path path = load();
        if (initialized) return path;
        if (initFailure != null) throw initFailure;
        String dirs = String.join(":", cudaLibraryDirs());
        int status;
        String detail;
        try (Arena arena = Arena.ofConfined()) {
            status = qt_init(arena.allocateFrom(dirs));
            detail = status == 0 ? "" : string(qt_last_error());
        }
        if (status == qtool_h.QT_OK()) {
            initialized = true;
            return path;
        }
        String summary;
        if (status == qtool_h.QT_ERR_NO_DEVICE()) {
            summary = firstLine(detail);  // "no usable GPU: cudaGetDeviceCount: ... (CUDA error 35)"
        } else if (status == qtool_h.QT_ERR_LIBRARY_NOT_FOUND()) {
            summary = "cuBLAS 13 not found (set QTOOL_CUDA_LIB_DIR)";
        } else {
            summary = "CUDA initialization failed: " + firstLine(detail);
        }
        initFailure = new QtoolException(detail.equals(summary) ? summary : summary + "\n" + detail);
        throw initFailure;
    }

    /** Loads libqtool.so without touching the GPU (enough for qt_status_string, qt_noop). */
    public static synchronized Path load() {
        if (loadedPath != null) return loadedPath;
        if (loadFailure != null) throw loadFailure;
        List<Path> tried = new ArrayList<>();
        for (Path candidate : candidates()) {
            tried.add(candidate);
            if (!Files.isRegularFile(candidate)) continue;
            try {
                System.load(candidate.toAbsolutePath().toString());
                loadedPath = candidate.toAbsolutePath();
                return loadedPath;
            } catch (UnsatisfiedLinkError e) {
                loadFailure = new QtoolException(FILE_NAME + " at " + candidate + " does not load: " + e.getMessage());
                throw loadFailure;
            }
        }
        StringBuilder where = new StringBuilder();
        for (Path p : tried) where.append("\n  ").append(p);
        loadFailure = new QtoolException(FILE_NAME + " not found; run scripts/build-native.sh or set QTOOL_LIB"
                + "\nlooked in:" + where);
        throw loadFailure;
    }

    /** The first line of a failure's message: what a one-line log says. */
    public static String summary(Throwable failure) {
        return firstLine(String.valueOf(failure.getMessage()));
    }

    /** Places looked for libqtool.so, in order. */
    static List<Path> candidates() {
        String property = System.getProperty("qtool.lib");
        if (property != null && !property.isBlank()) return List.of(Path.of(property));
        String env = System.getenv("QTOOL_LIB");
        if (env != null && !env.isBlank()) return List.of(Path.of(env));
        Set<Path> places = new LinkedHashSet<>();
        Path codeSource = codeSource();
        if (codeSource != null && codeSource.toString().endsWith(".jar") && codeSource.getParent() != null) {
            places.add(codeSource.getParent().resolve(FILE_NAME));
        }
        places.add(Path.of("build", "native", FILE_NAME).toAbsolutePath());
        if (codeSource != null && codeSource.getParent() != null && codeSource.getParent().getParent() != null) {
            // target/classes or target/qtool.jar: the checkout is two levels up.
            places.add(codeSource.getParent().getParent().resolve(Path.of("build", "native", FILE_NAME)).toAbsolutePath().normalize());
        }
        return new ArrayList<>(places);
    }

    /** Folders handed to qt_init, most specific first; only those that exist. */
    static List<String> cudaLibraryDirs() {
        String env = System.getenv("QTOOL_CUDA_LIB_DIR");
        if (env != null && !env.isBlank()) return List.of(env);
        Set<String> dirs = new LinkedHashSet<>();
        for (String d : List.of("/usr/local/cuda-13.0/targets/x86_64-linux/lib", "/usr/local/cuda/lib64",
                "/usr/local/cuda/targets/x86_64-linux/lib", "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib")) {
            if (Files.isDirectory(Path.of(d))) dirs.add(d);
        }
        // PyTorch wheels ship cuBLAS in site-packages/nvidia/cu13/lib of whichever Python holds them.
        List<Path> roots = new ArrayList<>();
        String venv = System.getenv("VIRTUAL_ENV");
        if (venv != null) roots.add(Path.of(venv, "lib"));
        roots.add(Path.of("/usr/local/lib"));
        roots.add(Path.of("/usr/lib"));
        roots.add(Path.of(System.getProperty("user.home"), ".local", "lib"));
        for (Path root : roots) {
            if (!Files.isDirectory(root)) continue;
            try (DirectoryStream<Path> pythons = Files.newDirectoryStream(root, "python3*")) {
                for (Path python : pythons) {
                    for (String packages : List.of("site-packages", "dist-packages")) {
                        Path lib = python.resolve(packages).resolve("nvidia/cu13/lib");
                        if (Files.isDirectory(lib)) dirs.add(lib.toString());
                    }
                }
            } catch (IOException | SecurityException ignored) {
                // an unreadable folder is simply not a candidate
            }
        }
        return new ArrayList<>(dirs);
    }

    private static Path codeSource() {
        try {
            var source = NativeLibrary.class.getProtectionDomain().getCodeSource();
            return source == null ? null : new File(source.getLocation().toURI()).toPath();
        } catch (URISyntaxException | SecurityException | IllegalArgumentException e) {
            return null;
        }
    }

    static String string(MemorySegment cString) {
        return cString.equals(MemorySegment.NULL) ? "" : cString.reinterpret(Long.MAX_VALUE).getString(0);
    }

    private static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }
}
