package qtool.convert;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Comparator;
import java.util.List;
import java.util.function.Consumer;
import java.util.stream.Stream;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.Weights;
import qtool.model.LlamaModel;
import qtool.write.SafetensorsWriter;

/** File steps every conversion's output shares: fp16 copies of unquantized tensors, side files, -cf, job files. */
public final class ConvertFiles {
    private ConvertFiles() {}

    public static short[] toHalf(float[] v) {
        short[] h = new short[v.length];
        for (int k = 0; k < v.length; k++) h[k] = Float.floatToFloat16(v[k]);
        return h;
    }

    /** The model's own tensor {@code name} in fp16. */
    public static void half(SafetensorsWriter w, LlamaModel model, String name) {
        half(w, name, model.weights.get(name), model.dir);
    }

    /** Writes {@code t} as {@code name} in fp16, refusing values beyond fp16's range ({@code where} names the source). */
    public static void half(SafetensorsWriter w, String name, Tensor t, Path where) {
        if (t.dtype() == DType.F16) { // as stored: straight from the mapping, which need not stay resident after
            w.add(name, DType.F16, t.shape(), t.data());
            if (t.data().isMapped()) t.data().unload();
            return;
        }
        int n = Math.toIntExact(t.numel());
        short[] h = new short[n];
        for (int k = 0; k < n; k++) {
            float v = t.getFloat(k);
            h[k] = Float.floatToFloat16(v);
            if (Float.isFinite(v) && Float.isInfinite(Float.float16ToFloat(h[k]))) {
                throw new QtoolException(where + ": " + name + " holds " + v + ", beyond fp16's range");
            }
        }
        w.add(name, DType.F16, t.shape(), GptqCheckpoint.littleEndian(h));
    }

    /** Tokenizer, generation config and the like: every input file that is not weights, config.json or a quantization config. */
    public static void copyNonWeightFiles(Path from, Path to) throws IOException {
        try (Stream<Path> s = Files.list(from)) {
            for (Path p : s.toList()) {
                String n = p.getFileName().toString();
                if (!Files.isRegularFile(p) || n.endsWith(".safetensors") || n.equals(Weights.INDEX) || n.equals("config.json")
                        || n.equals(GptqCheckpoint.QUANTIZE_CONFIG) || n.equals("quant_config.json") || n.endsWith(".bin") || n.endsWith(".pt")
                        || n.endsWith(".pth")) {
                    continue;
                }
                Files.copy(p, to.resolve(n), StandardCopyOption.REPLACE_EXISTING);
            }
        }
    }

    /** -cf: the finished model in DIR, refusing to mix with files this job did not write. */
    public static void compileFull(Path out, Path dir) {
        try {
            List<String> ours;
            try (Stream<Path> s = Files.list(out)) {
                ours = s.map(p -> p.getFileName().toString()).toList();
            }
            if (Files.exists(dir) && !Files.isDirectory(dir)) throw new QtoolException(dir + ": exists and is not a directory (-cf)");
            if (Files.isDirectory(dir)) {
                try (Stream<Path> s = Files.list(dir)) {
                    for (Path p : s.toList()) {
                        if (!ours.contains(p.getFileName().toString())) {
                            throw new QtoolException(dir + ": holds " + p.getFileName() + ", which this job did not write; use an empty -cf directory");
                        }
                    }
                }
            }
            Files.createDirectories(dir);
            for (String n : ours) Files.copy(out.resolve(n), dir.resolve(n), StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new QtoolException(dir + ": " + e.getMessage());
        }
    }

    /**
     * One layer's tensors as the finished file {@code dir/NNNN.safetensors}, written by {@code body} into a temporary
     * directory and moved into place (a job step: a file there is whole).
     */
    public static void writeLayerFile(Path dir, int layer, Consumer<SafetensorsWriter> body) {
        Path tmp = dir.resolve(String.format(".%04d.tmp", layer));
        try {
            Files.createDirectories(tmp);
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, 0)) {
                body.accept(w);
            }
            JobDir.moveAtomically(tmp.resolve("model.safetensors"), dir.resolve(String.format("%04d.safetensors", layer)));
            Files.delete(tmp);
        } catch (IOException e) {
            throw new QtoolException(tmp + ": " + e.getMessage());
        }
    }

    public static ByteBuffer ints(int[] v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asIntBuffer().put(v);
        return b;
    }

    public static int[] readInts(Path file) {
        try {
            ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
            int[] v = new int[b.remaining() / 4];
            b.asIntBuffer().get(v);
            return v;
        } catch (IOException e) {
            throw new QtoolException(file + ": " + e.getMessage());
        }
    }

    public static void deleteTree(Path dir) throws IOException {
        if (!Files.exists(dir)) return;
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) Files.delete(p);
        }
    }
}
