package qtool.cli;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import java.io.PrintWriter;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import qtool.backend.Tensor;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.load.Weights;

/** {@code qtool inspect DIR}: what a model directory holds, read from config.json and the tensor headers. */
@Command(name = "inspect", mixinStandardHelpOptions = true, description = "Describe a model directory: shapes, parameter count, dtypes, sizes.")
public final class InspectCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "DIR", description = "HF model directory (config.json + safetensors).")
    Path dir;

    @Option(names = "--json", description = "Print one JSON object.")
    boolean json;

    @Option(names = "--top", defaultValue = "5", description = "How many of the largest tensors to list (default ${DEFAULT-VALUE}).")
    int top;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        ModelConfig c = ModelConfig.read(dir);
        try (Weights w = Weights.open(dir)) {
            long params = 0, bytes = 0;
            Map<String, long[]> dtypes = new TreeMap<>(); // dtype -> {tensors, params, bytes}
            List<Map.Entry<String, Tensor>> all = new ArrayList<>(w.all().entrySet());
            for (var e : all) {
                Tensor t = e.getValue();
                params += t.numel();
                bytes += t.byteSize();
                long[] d = dtypes.computeIfAbsent(t.dtype().name(), k -> new long[3]);
                d[0]++;
                d[1] += t.numel();
                d[2] += t.byteSize();
            }
            all.sort(Comparator.comparingLong((Map.Entry<String, Tensor> e) -> e.getValue().byteSize()).reversed());

            Map<String, Object> r = new LinkedHashMap<>();
            r.put("path", dir.toString());
            r.put("architecture", c.modelType());
            r.put("layers", c.numLayers());
            r.put("hidden_size", c.hiddenSize());
            r.put("intermediate_size", c.intermediateSize());
            r.put("heads", c.numHeads());
            r.put("kv_heads", c.numKvHeads());
            r.put("head_dim", c.headDim());
            r.put("vocab_size", c.vocabSize());
            r.put("tied_embeddings", !w.has("lm_head.weight"));
            r.put("parameters", params);
            r.put("bytes", bytes);
            r.put("tensors", all.size());
            r.put("shards", w.files().size());
            Map<String, Object> mix = new LinkedHashMap<>();
            dtypes.forEach((k, d) -> {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("tensors", d[0]);
                m.put("parameters", d[1]);
                m.put("bytes", d[2]);
                mix.put(k, m);
            });
            r.put("dtypes", mix);
            List<Object> largest = new ArrayList<>();
            for (var e : all.subList(0, Math.min(top, all.size()))) {
                Tensor t = e.getValue();
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("name", e.getKey());
                m.put("dtype", t.dtype().name());
                m.put("shape", t.shape());
                m.put("bytes", t.byteSize());
                largest.add(m);
            }
            r.put("largest", largest);

            PrintWriter out = spec.commandLine().getOut();
            if (json) {
                out.println(Json.writePretty(r));
                out.flush();
                return 0;
            }
            out.printf("%s: %s, %d layers, hidden %d, intermediate %d, heads %d (kv %d, dim %d), vocab %d%s%n", dir, c.modelType(),
                    c.numLayers(), c.hiddenSize(), c.intermediateSize(), c.numHeads(), c.numKvHeads(), c.headDim(), c.vocabSize(),
                    w.has("lm_head.weight") ? "" : ", tied embeddings");
            out.printf("parameters %,d in %d tensors, %s in %d shard(s)%n", params, all.size(), human(bytes), w.files().size());
            dtypes.forEach((k, d) -> out.printf("  %-5s %5d tensors %,16d parameters %10s%n", k, d[0], d[1], human(d[2])));
            out.println("largest tensors:");
            for (var e : all.subList(0, Math.min(top, all.size()))) {
                out.printf("  %-48s %-5s %-16s %10s%n", e.getKey(), e.getValue().dtype(),
                        java.util.Arrays.toString(e.getValue().shape()), human(e.getValue().byteSize()));
            }
            out.flush();
            return 0;
        }
    }

    static String human(long bytes) {
        if (bytes < 1024) return bytes + " B";
        String[] u = {"KiB", "MiB", "GiB", "TiB"};
        double v = bytes;
        int i = -1;
        while (v >= 1024 && i < u.length - 1) {
            v /= 1024;
            i++;
        }
        return String.format("%.2f %s", v, u[i]);
    }
}
