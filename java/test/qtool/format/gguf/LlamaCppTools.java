package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.opentest4j.TestAbortedException;

/**
 * llama.cpp's command-line tools from ../shared/peers/llama.cpp (xz-packed CPU builds), unpacked once per JVM into a
 * temporary folder deleted at exit. A test that needs one is skipped when the package or xz is missing or the binary
 * cannot run here.
 */
final class LlamaCppTools {
    private LlamaCppTools() {}

    private static final Map<String, Path> UNPACKED = new HashMap<>();
    private static Path dir;

    static synchronized Path tool(String name) {
        Path p = UNPACKED.get(name);
        if (p != null) return p;
        Path xz = GgufTestFiles.requireShared("peers/llama.cpp/" + name + ".xz");
        try {
            if (dir == null) {
                dir = Files.createTempDirectory("qtool-llama-cpp-");
                Path d = dir;
                Runtime.getRuntime().addShutdownHook(new Thread(() -> GgufToHf.deleteRecursively(d)));
            }
            p = dir.resolve(name);
            Process x;
            try {
                x = new ProcessBuilder("xz", "-dc", xz.toString()).redirectOutput(p.toFile())
                        .redirectError(ProcessBuilder.Redirect.DISCARD).start();
            } catch (IOException e) {
                throw new TestAbortedException("xz is not installed: " + e.getMessage());
            }
            if (x.waitFor() != 0) throw new TestAbortedException("xz could not unpack " + xz);
            if (!p.toFile().setExecutable(true)) throw new TestAbortedException("cannot make " + p + " executable");
        } catch (IOException | InterruptedException e) {
            throw new TestAbortedException("cannot unpack " + xz + ": " + e);
        }
        UNPACKED.put(name, p);
        return p;
    }

    /** Runs a tool; returns stdout and stderr together; fails on a non-zero exit, skips when it cannot start. */
    static String run(String name, String... args) {
        return run(true, name, args);
    }

    /** Runs a tool and returns what it printed on stdout only (generated text; the log goes to stderr). */
    static String stdout(String name, String... args) {
        return run(false, name, args);
    }

    private static String run(boolean withStderr, String name, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(tool(name).toString());
        cmd.addAll(Arrays.asList(args));
        try {
            ProcessBuilder pb = new ProcessBuilder(cmd);
            if (withStderr) pb.redirectErrorStream(true);
            else pb.redirectError(ProcessBuilder.Redirect.DISCARD);
            Process p = pb.start();
            byte[] out = p.getInputStream().readAllBytes();
            if (!p.waitFor(300, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                fail(name + " timed out");
            }
            String log = new String(out, StandardCharsets.UTF_8);
            if (p.exitValue() != 0) {
                if (log.contains("error while loading shared libraries") || p.exitValue() == 126 || p.exitValue() == 127) {
                    throw new TestAbortedException(name + " cannot run here: " + log.lines().findFirst().orElse(""));
                }
                fail(name + " " + String.join(" ", args) + " failed (" + p.exitValue() + "):\n" + log);
            }
            return log;
        } catch (IOException | InterruptedException e) {
            throw new TestAbortedException(name + " cannot run here: " + e);
        }
    }

    private static final Pattern FINAL_PPL = Pattern.compile("Final estimate: PPL = ([0-9.]+)");

    /**
     * llama-perplexity's final estimate over the first {@code chunks} windows of {@code ctx} tokens. This build now and
     * then exits (status 0) before its log thread has printed the results; such runs are repeated, up to 6 times.
     */
    static double perplexity(Path gguf, Path text, int ctx, int chunks) {
        String log = "";
        for (int attempt = 0; attempt < 6; attempt++) {
            log = run("llama-perplexity", "-m", gguf.toString(), "-f", text.toString(), "-c", String.valueOf(ctx),
                    "--chunks", String.valueOf(chunks), "-t", "2");
            Matcher m = FINAL_PPL.matcher(log);
            if (m.find()) return Double.parseDouble(m.group(1));
        }
        // the lost output says nothing about the file: skip rather than fail (a refused file fails in run())
        throw new TestAbortedException("llama-perplexity printed no final estimate in 6 runs for " + gguf + ":\n" + log);
    }

    /** llama-tokenize's ids of a text file, without BOS. */
    static int[] tokenize(Path gguf, Path text) {
        String log = run("llama-tokenize", "-m", gguf.toString(), "-f", text.toString(), "--ids", "--no-bos", "--log-disable");
        String last = log.strip().lines().reduce((a, b) -> b).orElse("");
        if (!last.startsWith("[")) fail("llama-tokenize printed no id list:\n" + log);
        String inner = last.substring(1, last.length() - 1).strip();
        if (inner.isEmpty()) return new int[0];
        return Arrays.stream(inner.split(",")).map(String::strip).mapToInt(Integer::parseInt).toArray();
    }

    private static final Pattern DRY_RUN = Pattern.compile(
            "^\\[\\s*\\d+/\\s*\\d+\\]\\s+(\\S+)\\s+- \\[.*?\\], type =\\s+(\\S+),.*?(?:\\((\\S+)\\))?$");

    /** llama-quantize --dry-run: the type each tensor would get. */
    static Map<String, GgmlType> dryRunTypes(Path gguf, String type) {
        String log = run("llama-quantize", "--dry-run", "--allow-requantize", gguf.toString(), type);
        Map<String, GgmlType> out = new HashMap<>();
        for (String line : log.lines().toList()) {
            Matcher m = DRY_RUN.matcher(line.strip());
            if (!m.matches()) continue;
            String t = m.group(3) != null ? m.group(3) : m.group(2);
            GgmlType g = GgmlType.byName(t);
            if (g == null) fail("unknown type '" + t + "' in: " + line);
            out.put(m.group(1), g);
        }
        if (out.isEmpty()) fail("llama-quantize --dry-run listed no tensors:\n" + log);
        return out;
    }
}
