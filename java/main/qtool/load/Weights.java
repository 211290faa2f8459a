package qtool.load;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import qtool.QtoolException;
import qtool.backend.Tensor;

/**
 * All tensors of a model directory, from one or more memory-mapped safetensors shards: through
 * {@code model.safetensors.index.json} when present, else every {@code *.safetensors} file in the folder.
 * Tensors are zero-copy views of the mappings, valid until {@link #close}.
 */
public final class Weights implements AutoCloseable {
    public static final String INDEX = "model.safetensors.index.json";

    private final Arena arena = Arena.ofShared();
    private final List<SafetensorsFile> files = new ArrayList<>();
    private final Map<String, Tensor> tensors = new LinkedHashMap<>();
    private final Path dir;

    private Weights(Path dir) {
        this.dir = dir;
    }

    public static Weights open(Path dir) {
        Weights w = new Weights(dir);
        try {
            for (Path shard : shardFiles(dir)) {
                SafetensorsFile f = SafetensorsFile.open(shard, w.arena);
                w.files.add(f);
                for (var e : f.tensors().entrySet()) {
                    if (w.tensors.put(e.getKey(), e.getValue()) != null) {
                        throw new QtoolException(shard + ": tensor '" + e.getKey() + "' also appears in another shard");
                    }
                }
            }
            return w;
        } catch (RuntimeException e) {
            w.close();
            throw e;
        }
    }

    /** The shard files of a model folder, in a stable order. */
    public static List<Path> shardFiles(Path dir) {
        if (!Files.isDirectory(dir)) throw new QtoolException(dir + ": not a directory");
        Path index = dir.resolve(INDEX);
        if (Files.exists(index)) {
            Map<String, Object> weightMap = Json.object(Json.readObject(index).get("weight_map"), index + ": weight_map");
            TreeSet<String> names = new TreeSet<>();
            for (Object v : weightMap.values()) names.add(String.valueOf(v));
            List<Path> shards = new ArrayList<>();
            for (String n : names) {
                Path p = dir.resolve(n);
                if (!Files.isRegularFile(p)) throw new QtoolException(index + ": shard '" + n + "' is named in the index but missing");
                shards.add(p);
            }
            return shards;
        }
        try (Stream<Path> s = Files.list(dir)) {
            List<Path> shards = s.filter(p -> p.getFileName().toString().endsWith(".safetensors")).sorted().toList();
            if (shards.isEmpty()) throw new QtoolException(dir + ": no .safetensors files");
            return shards;
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot list: " + e.getMessage());
        }
    }

    public Path dir() {
        return dir;
    }

    public List<SafetensorsFile> files() {
        return Collections.unmodifiableList(files);
    }

    public Map<String, Tensor> all() {
        return Collections.unmodifiableMap(tensors);
    }

    public boolean has(String name) {
        return tensors.containsKey(name);
    }

    public Tensor get(String name) {
        Tensor t = tensors.get(name);
        if (t == null) throw new QtoolException(dir + ": tensor '" + name + "' not found");
        return t;
    }

    /** The tensor, or null when the checkpoint has none (optional biases). */
    public Tensor find(String name) {
        return tensors.get(name);
    }

    @Override
    public void close() {
        if (arena.scope().isAlive()) arena.close();
    }
}
