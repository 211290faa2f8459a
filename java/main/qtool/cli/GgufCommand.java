package qtool.cli;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;
import qtool.format.gguf.GgmlCodec;
import qtool.format.gguf.GgmlType;
import qtool.format.gguf.HfToGguf;
import qtool.format.gguf.Imatrix;
import qtool.format.gguf.LlamaFileType;
import qtool.format.gguf.GgufFile;
import qtool.format.gguf.GgufTensor;
import qtool.format.gguf.GgufToHf;
import qtool.format.gguf.GptqToGguf;
import qtool.load.DType;
import qtool.format.gguf.GgufValue;
import qtool.format.gguf.GgufValueType;
import qtool.load.Json;
import qtool.backend.Backend;
import qtool.calibrate.CalibrationSet;
import qtool.convert.CalibrationImportance;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/** {@code qtool gguf ...}: GGUF files (llama.cpp's format). */
@Command(name = "gguf", mixinStandardHelpOptions = true,
        description = "Work with GGUF files (llama.cpp's model format).",
        subcommands = {GgufCommand.Inspect.class, GgufCommand.Import.class, GgufCommand.Export.class, GgufCommand.FromGptq.class, CommandLine.HelpCommand.class})
public final class GgufCommand implements Runnable {
    @Spec
    CommandSpec spec;

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "missing subcommand (inspect, import, export, from-gptq)");
    }

    /** Arrays longer than this are summarized (type, length, first items). */
    static final int ARRAY_PREVIEW = 8;
    /** Strings longer than this are shown cut, with their length. */
    static final int STRING_PREVIEW = 120;

    @Command(name = "inspect", mixinStandardHelpOptions = true,
            description = "Show a GGUF file's header, metadata and tensors.")
    static final class Inspect implements Callable<Integer> {
        @Spec
        CommandSpec spec;

        @Parameters(index = "0", paramLabel = "FILE", description = "The .gguf file.")
        Path file;

        @Option(names = "--json", description = "Print JSON instead of text.")
        boolean json;

        @Override
        public Integer call() {
            PrintWriter out = spec.commandLine().getOut();
            try (GgufFile g = GgufFile.open(file)) {
                if (json) {
                    out.println(Json.writePretty(describe(g)));
                } else {
                    printText(g, out);
                }
            }
            out.flush();
            return 0;
        }
    }

    @Command(name = "import", mixinStandardHelpOptions = true,
            description = "Convert a llama GGUF into an HF model directory: safetensors dequantized to fp16, q/k rows "
                    + "in transformers' order, config.json, generation_config.json, tokenizer.json, tokenizer_config.json.")
    static final class Import implements Callable<Integer> {
        @Spec
        CommandSpec spec;

        @Option(names = {"-i", "--input"}, required = true, paramLabel = "FILE", description = "The .gguf file.")
        Path input;

        @Option(names = {"-o", "--output"}, required = true, paramLabel = "DIR",
                description = "The HF model directory to create (must not exist, or be empty).")
        Path output;

        @Option(names = "--dtype", defaultValue = "float16", paramLabel = "TYPE",
                description = "Element type of the weights: float16, bfloat16 or float32. Default ${DEFAULT-VALUE}.")
        String dtype;

        @Option(names = {"-ss", "--shard-size"}, defaultValue = "8192",
                description = "Shard size in MB (0 = one file). Default ${DEFAULT-VALUE}.")
        long shardMb;

        @Override
        public Integer call() {
            DType d = switch (dtype.toLowerCase()) {
                case "float16", "fp16", "f16" -> DType.F16;
                case "bfloat16", "bf16" -> DType.BF16;
                case "float32", "fp32", "f32" -> DType.F32;
                default -> throw new CommandLine.ParameterException(spec.commandLine(),
                        "--dtype must be float16, bfloat16 or float32, not '" + dtype + "'");
            };
            if (shardMb < 0) throw new CommandLine.ParameterException(spec.commandLine(), "--shard-size must be >= 0");
            long t0 = System.nanoTime();
            GgufToHf.convert(input, output, d, shardMb * 1_000_000L, System.err);
            PrintWriter out = spec.commandLine().getOut();
            out.printf("wrote %s (%s) in %.1f s%n", output, GgufToHf.torchDtype(d), (System.nanoTime() - t0) / 1e9);
            out.flush();
            return 0;
        }
    }

    @Command(name = "export", mixinStandardHelpOptions = true,
            description = "Write an HF Llama model directory as a GGUF file, as llama.cpp's convert_hf_to_gguf.py and "
                    + "llama-quantize would: llama metadata and tokenizer, q/k rows in llama.cpp's RoPE order, the "
                    + "tensor types of llama-quantize's mixes, bit-exact quantization.")
    static final class Export implements Callable<Integer> {
        @Spec
        CommandSpec spec;

        @Option(names = {"-i", "--input"}, required = true, paramLabel = "DIR", description = "The HF model directory (float weights).")
        Path input;

        @Option(names = {"-o", "--output"}, required = true, paramLabel = "FILE", description = "The .gguf file to write.")
        Path output;

        @Option(names = {"-t", "--type"}, required = true, paramLabel = "TYPE",
                description = "File type, as llama-quantize names it: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, "
                        + "q2_k_s, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (q3_k, q4_k, q5_k: the _m mixes).")
        String type;

        @Option(names = "--pure", description = "Every quantizable tensor in the type itself, no mix (llama-quantize --pure).")
        boolean pure;

        @Option(names = "--imatrix", paramLabel = "FILE",
                description = "llama.cpp importance matrix (imatrix .gguf or legacy .dat) to weight the quantization error.")
        Path imatrix;

        @Option(names = {"--imatrix-from-calibration", "--calibration"}, paramLabel = "FILE",
                description = "Compute the importance here: the model runs layer by layer over calibration text (parquet text "
                        + "column or raw text) and each linear's importance is the mean squared input per column, diag(XᵀX)/n.")
        Path calibration;

        @Option(names = "--save-imatrix", paramLabel = "FILE",
                description = "Also write the importance computed by --imatrix-from-calibration as a llama.cpp imatrix (legacy "
                        + ".dat; llama-quantize --imatrix and --imatrix read it).")
        Path saveImatrix;

        @Option(names = {"-r", "--dataset-rows"}, defaultValue = "64", description = "Calibration rows for --calibration (default ${DEFAULT-VALUE}).")
        int rows;

        @Option(names = {"-l", "--length"}, defaultValue = "512", description = "Tokens per calibration row (default ${DEFAULT-VALUE}).")
        int length;

        @Option(names = "--batch", defaultValue = "4", description = "Calibration rows per forward pass (default ${DEFAULT-VALUE}).")
        int batch;

        @picocli.CommandLine.Mixin
        DeviceOption device;

        @Option(names = "--output-tensor-type", paramLabel = "TYPE", description = "Type of output.weight (a ggml type: q8_0, q6_k, f16...).")
        String outputTensorType;

        @Option(names = "--token-embedding-type", paramLabel = "TYPE", description = "Type of token_embd.weight.")
        String tokenEmbeddingType;

        @Option(names = "--name", paramLabel = "NAME", description = "general.name (default: the directory's name).")
        String name;

        @Option(names = "--tokenizer-pre", paramLabel = "NAME",
                description = "tokenizer.ggml.pre for a byte-level BPE tokenizer (default: detected from tokenizer.json).")
        String tokenizerPre;

        @Override
        public Integer call() {
            LlamaFileType t = LlamaFileType.byName(type);
            if (t == null) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--type '" + type + "' is not one of " + LlamaFileType.names());
            }
            if (imatrix != null && calibration != null) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--imatrix and --imatrix-from-calibration exclude each other");
            }
            if (calibration != null && (rows < 1 || length < 2)) {
                throw new CommandLine.ParameterException(spec.commandLine(), "-r must be >= 1 and -l >= 2");
            }
            if (saveImatrix != null && calibration == null) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--save-imatrix needs --imatrix-from-calibration");
            }
            Map<String, float[]> importance = imatrix == null ? null : Imatrix.read(imatrix);
            if (calibration != null) importance = calibrationImportance(input, calibration, rows, length, batch, device);
            if (saveImatrix != null) {
                Map<String, float[]> byGgufName = new LinkedHashMap<>();
                importance.forEach((hf, v) -> byGgufName.put(HfToGguf.ggufName(hf), v));
                Imatrix.writeLegacy(saveImatrix, byGgufName, rows, calibration.getFileName().toString());
            }
            HfToGguf.Options o = new HfToGguf.Options(t, pure, ggmlType(outputTensorType, "--output-tensor-type"),
                    ggmlType(tokenEmbeddingType, "--token-embedding-type"), importance, name, tokenizerPre);
            HfToGguf.Result r = HfToGguf.convert(input, output, o, System.err);
            PrintWriter out = spec.commandLine().getOut();
            StringBuilder types = new StringBuilder();
            HfToGguf.summary(r.tensors()).forEach((gt, v) -> types.append(types.isEmpty() ? "" : ", ").append(v[0]).append(' ').append(gt));
            out.printf("wrote %s (%s: %s; %,d bytes) in %.1f s%n", output, t, types, r.fileBytes(), r.seconds());
            out.flush();
            return 0;
        }

        /** Importance from running the model over calibration text (see {@link CalibrationImportance}). */
        static Map<String, float[]> calibrationImportance(Path model, Path text, int rows, int length, int batch, DeviceOption device) {
            long t0 = System.nanoTime();
            try (LlamaModel m = LlamaModel.open(model); Backend b = device.open()) {
                Tokenizer tok = Tokenizer.load(model);
                CalibrationSet cal = CalibrationSet.fromFile(text, tok, rows, length);
                Map<String, float[]> imp = CalibrationImportance.compute(m, b, cal, batch);
                System.err.printf("gguf export: importance of %d linears from %d x %d calibration tokens (%s) in %.1f s on %s%n",
                        imp.size(), rows, length, cal.source(), (System.nanoTime() - t0) / 1e9, b.name());
                return imp;
            }
        }

        private GgmlType ggmlType(String s, String option) {
            return ggmlType(spec, s, option);
        }

        static GgmlType ggmlType(CommandSpec spec, String s, String option) {
            if (s == null) return null;
            GgmlType g = GgmlType.byName(s);
            if (g == null || !GgmlCodec.canQuantize(g)) {
                throw new CommandLine.ParameterException(spec.commandLine(), option + " '" + s + "' is not a ggml type qtool writes");
            }
            return g;
        }
    }

    @Command(name = "from-gptq", mixinStandardHelpOptions = true,
            description = "Write a GPTQ checkpoint of a Llama model as GGUF, carrying its grid over exactly where a ggml "
                    + "block type holds it (symmetric -> Q4_0, asymmetric -> Q4_1, 8-bit -> Q8_0, when every 32-block "
                    + "of inputs lies in one group) and requantizing the rest with a warning.")
    static final class FromGptq implements Callable<Integer> {
        @Spec
        CommandSpec spec;

        @Option(names = {"-i", "--input"}, required = true, paramLabel = "DIR", description = "The GPTQ checkpoint directory.")
        Path input;

        @Option(names = {"-o", "--output"}, required = true, paramLabel = "FILE", description = "The .gguf file to write.")
        Path output;

        @Option(names = {"-t", "--type"}, paramLabel = "TYPE",
                description = "ggml type of tensors that must be requantized (default: q8_0 for 8-bit grids, else q4_k; k-quants "
                        + "fall back as llama-quantize's do, e.g. q4_k to q5_0 when rows are not a multiple of 256).")
        String type;

        @Option(names = "--requantize", description = "Requantize every GPTQ linear to --type instead of carrying grids over exactly "
                + "(e.g. a 2/3-bit checkpoint to q2_k/q3_k, smaller than its exact Q4_0/Q4_1 form).")
        boolean requantize;

        @Option(names = "--float-type", paramLabel = "TYPE", description = "Type of unquantized matrices (embeddings, lm_head). Default f16.")
        String floatType;

        @Option(names = "--name", paramLabel = "NAME", description = "general.name (default: the directory's name).")
        String name;

        @Override
        public Integer call() {
            GptqToGguf.Options o = new GptqToGguf.Options(Export.ggmlType(spec, type, "--type"), Export.ggmlType(spec, floatType, "--float-type"), name, requantize);
            GptqToGguf.Result r = GptqToGguf.convert(input, output, o, System.err);
            PrintWriter out = spec.commandLine().getOut();
            Map<GgmlType, Integer> counts = new TreeMap<>();
            long exact = 0, linears = 0;
            double worst = 0;
            for (GptqToGguf.Mapped m : r.tensors()) {
                counts.merge(m.type(), 1, Integer::sum);
                if (!m.gptq()) continue;
                linears++;
                if (m.reason() == null) exact++;
                worst = Math.max(worst, m.maxAbsChange());
            }
            StringBuilder types = new StringBuilder();
            counts.forEach((gt, n) -> types.append(types.isEmpty() ? "" : ", ").append(n).append(' ').append(gt));
            out.printf("wrote %s (%s; %,d bytes) in %.1f s: %d of %d GPTQ linears mapped directly, %d requantized; "
                    + "largest weight change %.4g%n", output, types, r.fileBytes(), r.seconds(), exact, linears, linears - exact, worst);
            out.flush();
            return 0;
        }
    }

    /** Per-type totals of a file's tensors. */
    record TypeTotals(GgmlType type, int tensors, long parameters, long bytes) {}

    static Map<GgmlType, TypeTotals> histogram(GgufFile g) {
        Map<GgmlType, TypeTotals> h = new TreeMap<>();
        for (GgufTensor t : g.tensors()) {
            TypeTotals old = h.getOrDefault(t.type(), new TypeTotals(t.type(), 0, 0, 0));
            h.put(t.type(), new TypeTotals(t.type(), old.tensors + 1, old.parameters + t.elementCount(), old.bytes + t.byteSize()));
        }
        return h;
    }

    static long parameterCount(GgufFile g) {
        long n = 0;
        for (GgufTensor t : g.tensors()) n += t.elementCount();
        return n;
    }

    /** The JSON form of {@code inspect}. */
    static Map<String, Object> describe(GgufFile g) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("file", g.path().toString());
        m.put("version", g.version());
        m.put("alignment", g.alignment());
        m.put("data_offset", g.dataOffset());
        m.put("file_size", g.fileSize());
        Map<String, Object> meta = new LinkedHashMap<>();
        for (var e : g.entries().entrySet()) meta.put(e.getKey(), describeValue(e.getValue()));
        m.put("metadata", meta);
        m.put("tensor_count", g.tensors().size());
        List<Object> tensors = new ArrayList<>();
        for (GgufTensor t : g.tensors()) {
            Map<String, Object> tm = new LinkedHashMap<>();
            tm.put("name", t.name());
            tm.put("type", t.type().name());
            tm.put("dims", t.dims());
            tm.put("offset", t.offset());
            tm.put("bytes", t.byteSize());
            tensors.add(tm);
        }
        m.put("tensors", tensors);
        Map<String, Object> types = new LinkedHashMap<>();
        for (TypeTotals tt : histogram(g).values()) {
            Map<String, Object> tm = new LinkedHashMap<>();
            tm.put("tensors", tt.tensors);
            tm.put("parameters", tt.parameters);
            tm.put("bytes", tt.bytes);
            types.put(tt.type.name(), tm);
        }
        m.put("types", types);
        m.put("parameters", parameterCount(g));
        return m;
    }

    private static Object describeValue(GgufValue v) {
        Map<String, Object> d = new LinkedHashMap<>();
        if (v.type() != GgufValueType.ARRAY) {
            d.put("type", typeName(v.type()));
            d.put("value", v.value());
            return d;
        }
        d.put("type", "array");
        d.put("element_type", typeName(v.elementType()));
        int n = v.length();
        d.put("length", n);
        List<Object> items = new ArrayList<>();
        for (int i = 0; i < Math.min(n, ARRAY_PREVIEW); i++) {
            Object e = v.element(i);
            items.add(e instanceof GgufValue nested ? describeValue(nested) : e instanceof List<?> l ? l : e);
        }
        d.put(n > ARRAY_PREVIEW ? "first" : "values", items);
        return d;
    }

    private static String typeName(GgufValueType t) {
        return t.name().toLowerCase();
    }

    static void printText(GgufFile g, PrintWriter out) {
        out.printf("%s: GGUF v%d, alignment %d, data at byte %d, %d bytes%n", g.path(), g.version(), g.alignment(),
                g.dataOffset(), g.fileSize());
        out.printf("metadata: %d entries%n", g.entries().size());
        for (var e : g.entries().entrySet()) out.printf("  %s = %s%n", e.getKey(), formatValue(e.getValue()));
        out.printf("tensors: %d%n", g.tensors().size());
        int nameWidth = 4;
        for (GgufTensor t : g.tensors()) nameWidth = Math.max(nameWidth, t.name().length());
        String row = "  %-" + nameWidth + "s  %-5s  %-22s  %12s%n";
        out.printf(row, "name", "type", "dims (ggml order)", "bytes");
        for (GgufTensor t : g.tensors()) {
            out.printf(row, t.name(), t.type(), Arrays.toString(t.dims()), t.byteSize());
        }
        out.println("types:");
        long totalBytes = 0;
        for (TypeTotals tt : histogram(g).values()) {
            out.printf("  %-5s %5d tensors %,15d parameters %,15d bytes%n", tt.type, tt.tensors, tt.parameters, tt.bytes);
            totalBytes += tt.bytes;
        }
        long params = parameterCount(g);
        out.printf("total: %,d parameters, %,d bytes of tensor data (%.2f bits per parameter)%n", params, totalBytes,
                params == 0 ? 0.0 : totalBytes * 8.0 / params);
    }

    static String formatValue(GgufValue v) {
        if (v.type() != GgufValueType.ARRAY) return formatScalar(v.value()) + " (" + typeName(v.type()) + ")";
        int n = v.length();
        StringBuilder sb = new StringBuilder("[").append(typeName(v.elementType())).append(" x ").append(n).append("]");
        if (n == 0) return sb.toString();
        sb.append(' ');
        for (int i = 0; i < Math.min(n, ARRAY_PREVIEW); i++) {
            if (i > 0) sb.append(", ");
            Object e = v.element(i);
            sb.append(e instanceof List<?> l ? "[array x " + l.size() + "]" : formatScalar(e));
        }
        if (n > ARRAY_PREVIEW) sb.append(", ...");
        return sb.toString();
    }

    private static String formatScalar(Object o) {
        if (!(o instanceof String s)) return String.valueOf(o);
        String cut = s.length() > STRING_PREVIEW ? s.substring(0, STRING_PREVIEW) : s;
        StringBuilder sb = new StringBuilder("\"");
        for (char c : cut.toCharArray()) {
            switch (c) {
                case '\n' -> sb.append("\\n");
                case '\t' -> sb.append("\\t");
                case '\r' -> sb.append("\\r");
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                default -> {
                    if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
                    else sb.append(c);
                }
            }
        }
        sb.append('"');
        if (s.length() > STRING_PREVIEW) sb.append("... (").append(s.length()).append(" chars)");
        return sb.toString();
    }
}
