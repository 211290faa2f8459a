package qtool.convert;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import qtool.QtoolException;
import qtool.load.Json;

/**
 * A conversion job's working directory ({@code -o WORK}): {@code job.json} says which job it is (input and settings)
 * and how far it got; large state sits beside it in files that {@code job.json} names. Every file is written to a
 * temporary name, fsynced and renamed, and {@code job.json} is rewritten only after the files it names are in
 * place, so a job killed at any moment resumes from its last consistent point, never from a half-written file.
 */
public final class JobDir {
    public static final String JOB = "job.json";

    private final Path dir;
    private Map<String, Object> job;

    private JobDir(Path dir, Map<String, Object> job) {
        this.dir = dir;
        this.job = job;
    }

    /**
     * Opens WORK for a job with these settings: a fresh or missing directory starts a new job; a directory holding
     * the same job resumes it; anything else is refused. {@code noResume} (-nr) wipes WORK first.
     */
    public static JobDir open(Path dir, Map<String, Object> settings, boolean noResume) {
        try {
            if (noResume && Files.exists(dir)) wipe(dir);
            Files.createDirectories(dir);
            Path jobFile = dir.resolve(JOB);
            boolean empty;
            try (Stream<Path> s = Files.list(dir)) {
                empty = s.findAny().isEmpty();
            }
            if (empty) {
                Map<String, Object> job = new LinkedHashMap<>();
                job.put("settings", settings);
                job.put("progress", new LinkedHashMap<String, Object>());
                JobDir j = new JobDir(dir, job);
                j.save();
                return j;
            }
            if (!Files.isRegularFile(jobFile)) {
                throw new QtoolException(dir + ": not empty and holds no " + JOB + " (not a qtool job directory; use another -o or -nr to wipe it)");
            }
            Map<String, Object> job;
            try {
                job = Json.readObject(jobFile);
            } catch (QtoolException e) {
                throw new QtoolException(jobFile + ": corrupted job state (" + e.getMessage() + "); use -nr to start over");
            }
            Object old = job.get("settings");
            if (!Json.write(settings).equals(Json.write(old))) {
                throw new QtoolException(dir + ": holds another job's state (settings differ: " + difference(old, settings)
                        + "); use another -o, or -nr to wipe it");
            }
            if (!(job.get("progress") instanceof Map)) throw new QtoolException(jobFile + ": corrupted job state (no progress); use -nr to start over");
            return new JobDir(dir, job);
        } catch (IOException e) {
            throw new QtoolException(dir + ": " + e.getMessage());
        }
    }

    private static String difference(Object old, Map<String, Object> now) {
        if (!(old instanceof Map<?, ?> o)) return "no settings recorded";
        for (var e : now.entrySet()) {
            Object was = o.get(e.getKey());
            if (!Json.write(e.getValue()).equals(Json.write(was))) return e.getKey() + " was " + Json.write(was) + ", now " + Json.write(e.getValue());
        }
        return "keys differ";
    }

    private static void wipe(Path dir) throws IOException {
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) Files.delete(p);
        }
    }

    public Path dir() {
        return dir;
    }

    public Path file(String name) {
        return dir.resolve(name);
    }

    @SuppressWarnings("unchecked")
    public Map<String, Object> progress() {
        return (Map<String, Object>) job.get("progress");
    }

    /** Records progress (after the files it refers to have been committed) and saves job.json atomically. */
    public void commit(String key, Object value) {
        progress().put(key, value);
        save();
    }

    private void save() {
        Json.writeFile(dir.resolve(JOB), job);
    }

    /** Fills a file through its channel (in pieces, so that no buffer has to hold it whole). */
    @FunctionalInterface
    public interface Contents {
        void writeTo(FileChannel ch) throws IOException;
    }

    /** Writes bytes to {@code name} atomically: temporary file, fsync, rename. */
    public void writeAtomically(String name, MemorySegment data) {
        writeAtomically(name, ch -> write(ch, data));
    }

    /** Writes a segment of any size (a ByteBuffer holds at most 2 GiB). */
    public static void write(FileChannel ch, MemorySegment data) throws IOException {
        for (long pos = 0; pos < data.byteSize(); pos += 1L << 30) {
            ByteBuffer b = data.asSlice(pos, Math.min(1L << 30, data.byteSize() - pos)).asByteBuffer();
            while (b.hasRemaining()) ch.write(b);
        }
    }

    /** Writes {@code name} atomically from {@code contents}: temporary file, fsync, rename. */
    public void writeAtomically(String name, Contents contents) {
        Path target = dir.resolve(name), tmp = dir.resolve(name + ".tmp");
        try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING, StandardOpenOption.WRITE)) {
            contents.writeTo(ch);
            ch.force(true);
        } catch (IOException e) {
            throw new QtoolException(tmp + ": cannot write: " + e.getMessage());
        }
        moveAtomically(tmp, target);
    }

    /** Renames a finished temporary file or directory into place. */
    public static void moveAtomically(Path from, Path to) {
        try {
            try {
                Files.move(from, to, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(from, to, StandardCopyOption.REPLACE_EXISTING);
            }
        } catch (IOException e) {
            throw new QtoolException(to + ": cannot move into place: " + e.getMessage());
        }
    }

    /** A committed map of numbers (such as "seconds"), in its order; empty when absent. */
    public static Map<String, Double> numbers(Object committed) {
        Map<String, Double> m = new LinkedHashMap<>();
        if (committed instanceof Map<?, ?> map) map.forEach((k, v) -> m.put(String.valueOf(k), ((Number) v).doubleValue()));
        return m;
    }

    /** A committed list (such as "warnings") as strings; empty when absent. */
    public static List<String> strings(Object committed) {
        List<String> l = new ArrayList<>();
        if (committed instanceof List<?> list) list.forEach(x -> l.add(String.valueOf(x)));
        return l;
    }

    /** A committed number, NaN when absent. */
    public static double number(Object committed) {
        return committed instanceof Number n ? n.doubleValue() : Double.NaN;
    }
}
