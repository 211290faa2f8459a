package qtool.format.gptq;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker.PackedLinear;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.quantize.GptqParams;
import qtool.quantize.GptqResult;
import qtool.write.SafetensorsWriter;

/**
 * A GPTQ checkpoint directory (AutoGPTQ / GPTQModel / transformers): its quantization config and, for each linear
 * {@code prefix}, the dequantized float weight [out, in]; plus the helpers that write one.
 *
 * <p>The config is {@code config.json}'s {@code quantization_config}, else {@code quantize_config.json}. Keys read:
 * {@code quant_method} (or GPTQModel's {@code method}), {@code bits}, {@code group_size}, {@code desc_act},
 * {@code sym}, {@code checkpoint_format} (or {@code format}; absent = v1), {@code pack_dtype} (int32 only), and
 * GPTQModel's {@code dynamic}: module-name regexes (Python {@code re.match}: anchored at the start only), a
 * {@code -:} prefix excluding the module from quantization, {@code +:} or none overriding keys such as bits and
 * group_size; rules are tried in file order and the first match decides (GPTQModel's {@code dynamic_get}). A
 * checkpoint with a different bit width per linear (mixed-bit GPTQ) is written by {@link #writeLinear} per module
 * and {@link #quantizationConfig} with the per-module settings; readers take each module's bits from its rule.
 */
public final class GptqCheckpoint implements AutoCloseable {
    public static final String QUANTIZE_CONFIG = "quantize_config.json";

    /** The settings that decide how one module's tensors read. */
    public record ModuleSettings(int bits, int groupSize, boolean sym, boolean descAct) {}

    /** One {@code dynamic} entry. */
    public record DynamicRule(String key, boolean exclude, Pattern pattern, Map<String, Object> overrides) {}

    /** A GPTQ quantization config, as read. */
    public record Config(int bits, int groupSize, boolean descAct, boolean sym, CheckpointFormat format,
                         List<DynamicRule> dynamic, String source) {

        /** The settings of module {@code prefix}; empty when a {@code -:} rule leaves it unquantized. */
        public Optional<ModuleSettings> forModule(String prefix) {
            for (DynamicRule rule : dynamic) {
                if (!rule.pattern().matcher(prefix).lookingAt()) continue;
                if (rule.exclude()) return Optional.empty();
                String where = source + ": dynamic '" + rule.key() + "'";
                Map<String, Object> o = rule.overrides();
                return Optional.of(new ModuleSettings(
                        o.containsKey("bits") ? intValue(o.get("bits"), where + ".bits") : bits,
                        o.containsKey("group_size") ? intValue(o.get("group_size"), where + ".group_size") : groupSize,
                        o.containsKey("sym") ? boolValue(o.get("sym"), where + ".sym") : sym,
                        o.containsKey("desc_act") ? boolValue(o.get("desc_act"), where + ".desc_act") : descAct));
            }
            return Optional.of(new ModuleSettings(bits, groupSize, sym, descAct));
        }
    }

    private final Config config;
    private final Weights weights;

    private GptqCheckpoint(Config config, Weights weights) {
        this.config = config;
        this.weights = weights;
    }

    public static GptqCheckpoint open(Path dir) {
        Config config = readConfig(dir);
        return new GptqCheckpoint(config, Weights.open(dir));
    }

    /** Whether {@code dir} holds a GPTQ quantization config (the test {@code qtool ppl} can make before opening). */
    public static boolean isGptq(Path dir) {
        try {
            readConfig(dir);
            return true;
        } catch (QtoolException e) {
            return false;
        }
    }

    public static Config readConfig(Path dir) {
        Map<String, Object> qc = null;
        String where = null;
        Path configJson = dir.resolve("config.json");
        if (Files.isRegularFile(configJson)) {
            Object q = Json.readObject(configJson).get("quantization_config");
            if (q != null) {
                qc = Json.object(q, configJson + ": quantization_config");
                where = configJson + ": quantization_config";
            }
        }
        Path quantizeConfig = dir.resolve(QUANTIZE_CONFIG);
        if (qc == null && Files.isRegularFile(quantizeConfig)) {
            qc = Json.readObject(quantizeConfig);
            where = quantizeConfig.toString();
        }
        if (qc == null) {
            throw new QtoolException(dir + ": not a GPTQ checkpoint: no quantization_config in config.json and no " + QUANTIZE_CONFIG);
        }
        return parseConfig(qc, where);
    }

    /** Reads a {@code quantization_config} object; {@code where} names it in errors. */
    public static Config parseConfig(Map<String, Object> qc, String where) {
        Object method = qc.containsKey("quant_method") ? qc.get("quant_method") : qc.get("method");
        if (method != null && !"gptq".equalsIgnoreCase(String.valueOf(method))) {
            throw new QtoolException(where + ": quant_method is '" + method + "', not 'gptq'");
        }
        Object format = qc.containsKey("checkpoint_format") ? qc.get("checkpoint_format") : qc.get("format");
        CheckpointFormat fmt = CheckpointFormat.fromConfig(format == null ? null : String.valueOf(format), where);
        Object packDtype = qc.get("pack_dtype");
        if (packDtype != null && !String.valueOf(packDtype).replace("torch.", "").equals("int32")) {
            throw new QtoolException(where + ": pack_dtype '" + packDtype + "' is not supported (qtool reads int32 packing)");
        }
        if (!qc.containsKey("bits")) throw new QtoolException(where + ": no 'bits'");
        int bits = intValue(qc.get("bits"), where + ": bits");
        int groupSize = qc.containsKey("group_size") ? intValue(qc.get("group_size"), where + ": group_size") : -1;
        boolean descAct = qc.containsKey("desc_act") && boolValue(qc.get("desc_act"), where + ": desc_act");
        boolean sym = !qc.containsKey("sym") || boolValue(qc.get("sym"), where + ": sym");

        List<DynamicRule> rules = new ArrayList<>();
        Object dyn = qc.get("dynamic");
        if (dyn != null) {
            for (Map.Entry<String, Object> e : Json.object(dyn, where + ": dynamic").entrySet()) {
                String key = e.getKey();
                boolean exclude = key.startsWith("-:");
                String regex = key.startsWith("-:") || key.startsWith("+:") ? key.substring(2) : key;
                Pattern pattern;
                try {
                    pattern = Pattern.compile(regex);
                } catch (PatternSyntaxException ex) {
                    throw new QtoolException(where + ": dynamic key '" + key + "' is not a valid regex: " + ex.getDescription());
                }
                Map<String, Object> overrides = e.getValue() == null ? Map.of() : Json.object(e.getValue(), where + ": dynamic '" + key + "'");
                rules.add(new DynamicRule(key, exclude, pattern, overrides));
            }
        }
        Config config = new Config(bits, groupSize, descAct, sym, fmt, List.copyOf(rules), where);
        checkBits(bits, where + ": bits");
        for (DynamicRule rule : config.dynamic()) {
            if (rule.overrides().containsKey("bits")) checkBits(intValue(rule.overrides().get("bits"), where), where + ": dynamic '" + rule.key() + "' bits");
        }
        return config;
    }

    public Config config() {
        return config;
    }

    public Weights weights() {
        return weights;
    }

    /** Prefixes of every quantized linear (tensors named {@code prefix.qweight}), in file order. */
    public List<String> quantizedLinears() {
        List<String> prefixes = new ArrayList<>();
        String suffix = "." + GptqLayout.QWEIGHT;
        for (String name : weights.all().keySet()) {
            if (name.endsWith(suffix)) prefixes.add(name.substring(0, name.length() - suffix.length()));
        }
        return prefixes;
    }

    public boolean isQuantized(String prefix) {
        return weights.has(prefix + "." + GptqLayout.QWEIGHT);
    }

    /** {out, in} of a linear, quantized or not. */
    public int[] shape(String prefix) {
        if (!isQuantized(prefix)) {
            Tensor t = weights.get(prefix + ".weight");
            return new int[] {(int) t.shape()[0], t.cols()};
        }
        PackedLinear p = read(prefix);
        return new int[] {p.out(), p.in()};
    }

    /**
     * The float weight [out, in] of linear {@code prefix}: dequantized from its GPTQ tensors, or the plain
     * {@code prefix.weight} of a module the checkpoint left unquantized.
     */
    public float[] dequantize(String prefix) {
        if (!isQuantized(prefix)) return weights.get(prefix + ".weight").toFloatArray();
        return GptqPacker.dequantize(read(prefix));
    }

    /** The bias of linear {@code prefix} as floats, or null when it has none. */
    public float[] bias(String prefix) {
        Tensor b = weights.find(prefix + "." + GptqLayout.BIAS);
        return b == null ? null : b.toFloatArray();
    }

    /** The packed tensors of quantized linear {@code prefix}, checked against the config and each other. */
    public PackedLinear read(String prefix) {
        ModuleSettings ms = config.forModule(prefix).orElseThrow(() -> new QtoolException(
                weights.dir() + ": " + prefix + " has GPTQ tensors but the quantization_config's dynamic rules exclude it from quantization"));
        int bits = ms.bits();
        Tensor qweight = tensor(prefix, GptqLayout.QWEIGHT, DType.I32);
        Tensor qzeros = tensor(prefix, GptqLayout.QZEROS, DType.I32);
        Tensor scales = weights.get(prefix + "." + GptqLayout.SCALES);
        if (!scales.dtype().isFloat() || scales.shape().length != 2) {
            throw new QtoolException(weights.dir() + ": " + prefix + ".scales is " + scales + ", expected F16 [groups, out]");
        }
        int groups = (int) scales.shape()[0], out = (int) scales.shape()[1];
        String bitsFrom = "bits=" + bits + " (from " + config.source() + (config.dynamic().isEmpty() ? "" : " and its dynamic rules") + ")";
        if (qzeros.shape()[0] != groups || qzeros.shape()[1] * 32 != (long) out * bits) {
            throw new QtoolException(weights.dir() + ": " + prefix + ".qzeros is " + qzeros + " but scales " + scales + " and "
                    + bitsFrom + " need I32[" + groups + ", " + out + "·" + bits + "/32]");
        }
        if (qweight.shape()[1] != out || qweight.shape()[0] * 32 % bits != 0) {
            throw new QtoolException(weights.dir() + ": " + prefix + ".qweight is " + qweight + " but scales " + scales + " and "
                    + bitsFrom + " need I32[in·" + bits + "/32, " + out + "]");
        }
        int in = (int) (qweight.shape()[0] * 32 / bits);
        int[] gIdx;
        Tensor g = weights.find(prefix + "." + GptqLayout.G_IDX);
        if (g != null) {
            if (g.numel() != in || (g.dtype() != DType.I32 && g.dtype() != DType.I64)) {
                throw new QtoolException(weights.dir() + ": " + prefix + ".g_idx is " + g + ", expected I32[" + in + "] (in_features from qweight and bits)");
            }
            gIdx = new int[in];
            for (int i = 0; i < in; i++) {
                gIdx[i] = g.dtype() == DType.I32 ? g.data().getAtIndex(Tensor.I32, i)
                        : Math.toIntExact(g.data().getAtIndex(ValueLayout.JAVA_LONG_UNALIGNED, i));
            }
        } else {
            int width = ms.groupSize() == -1 ? in : ms.groupSize();
            if ((in + width - 1) / width != groups) {
                throw new QtoolException(weights.dir() + ": " + prefix + " has no g_idx and " + groups + " groups of scales, but in_features "
                        + in + " with group_size " + ms.groupSize() + " makes " + (in + width - 1) / width);
            }
            gIdx = GptqLayout.defaultGIdx(in, ms.groupSize());
        }
        return new PackedLinear(prefix, in, out, bits, groups,
                qweight.data().toArray(Tensor.I32), qzeros.data().toArray(Tensor.I32), scales.toFloatArray(),
                gIdx, config.format(), 0);
    }

    private Tensor tensor(String prefix, String suffix, DType dtype) {
        Tensor t = weights.get(prefix + "." + suffix);
        if (t.dtype() != dtype || t.shape().length != 2) {
            throw new QtoolException(weights.dir() + ": " + prefix + "." + suffix + " is " + t + ", expected a 2-D " + dtype + " tensor");
        }
        return t;
    }

    @Override
    public void close() {
        weights.close();
    }

    // ---- writing ----

    /**
     * Packs one GPTQ result and writes {@code prefix.qweight}, {@code .qzeros}, {@code .scales}, {@code .g_idx} and,
     * when {@code bias} is not null, {@code .bias} (F16). Returns what was written (see
     * {@link PackedLinear#v1WrappedZeros} for the v1 zero-point caveat).
     */
    public static PackedLinear writeLinear(SafetensorsWriter out, String prefix, GptqResult result, float[] bias, CheckpointFormat format) {
        PackedLinear p = GptqPacker.pack(prefix, result, format);
        write(out, p, bias);
        return p;
    }

    /** Writes the tensors of a packed linear (and its F16 bias when not null). */
    public static void write(SafetensorsWriter out, PackedLinear p, float[] bias) {
        String prefix = p.prefix();
        out.add(prefix + "." + GptqLayout.QWEIGHT, DType.I32, p.qweightShape(), littleEndian(p.qweight()));
        out.add(prefix + "." + GptqLayout.QZEROS, DType.I32, p.qzerosShape(), littleEndian(p.qzeros()));
        out.add(prefix + "." + GptqLayout.SCALES, DType.F16, new long[] {p.groups(), p.out()}, littleEndian(p.scalesF16()));
        out.add(prefix + "." + GptqLayout.G_IDX, DType.I32, new long[] {p.in()}, littleEndian(p.gIdx()));
        if (bias != null) {
            if (bias.length != p.out()) throw new IllegalArgumentException(prefix + ": bias has " + bias.length + " values, not " + p.out());
            short[] half = new short[bias.length];
            for (int k = 0; k < half.length; k++) half[k] = Float.floatToFloat16(bias[k]);
            out.add(prefix + "." + GptqLayout.BIAS, DType.F16, new long[] {p.out()}, littleEndian(half));
        }
    }

    /** The little-endian bytes of an int array, as a byte[]-backed segment (what SafetensorsWriter streams). */
    public static MemorySegment littleEndian(int[] values) {
        MemorySegment bytes = MemorySegment.ofArray(new byte[values.length * 4]);
        MemorySegment.copy(values, 0, bytes, ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, values.length);
        return bytes;
    }

    /** The little-endian bytes of a short array (fp16 bit patterns), as a byte[]-backed segment. */
    public static MemorySegment littleEndian(short[] values) {
        MemorySegment bytes = MemorySegment.ofArray(new byte[values.length * 2]);
        MemorySegment.copy(values, 0, bytes, ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, values.length);
        return bytes;
    }

    /**
     * The {@code quantization_config} of a checkpoint written with {@code base} settings (the same map is the content
     * of {@code quantize_config.json}). Modules in {@code perModule} whose settings differ from {@code base} get a
     * GPTQModel {@code dynamic} override ({@code +:} exact-name regex → bits, group_size, and sym/desc_act where they
     * differ); modules in {@code unquantized} get a {@code -:} rule.
     */
    public static Map<String, Object> quantizationConfig(GptqParams base, Map<String, GptqParams> perModule,
                                                         Collection<String> unquantized, CheckpointFormat format,
                                                         boolean trueSequential) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("quant_method", "gptq");
        m.put("bits", base.bits());
        m.put("group_size", base.groupSize());
        m.put("desc_act", base.actOrder());
        m.put("sym", base.sym());
        m.put("damp_percent", base.damp());
        m.put("static_groups", base.staticGroups());
        m.put("true_sequential", trueSequential);
        m.put("checkpoint_format", format.configName);
        Map<String, Object> dynamic = new LinkedHashMap<>();
        for (String name : unquantized) dynamic.put("-:" + exactRegex(name), Map.of());
        for (Map.Entry<String, GptqParams> e : perModule.entrySet()) {
            GptqParams p = e.getValue();
            Map<String, Object> o = new LinkedHashMap<>();
            if (p.bits() != base.bits() || p.groupSize() != base.groupSize()) {
                o.put("bits", p.bits());
                o.put("group_size", p.groupSize());
            }
            if (p.sym() != base.sym()) o.put("sym", p.sym());
            if (p.actOrder() != base.actOrder()) o.put("desc_act", p.actOrder());
            if (!o.isEmpty()) dynamic.put("+:" + exactRegex(e.getKey()), o);
        }
        if (!dynamic.isEmpty()) m.put("dynamic", dynamic);
        Map<String, Object> meta = new LinkedHashMap<>();
        meta.put("quantizer", List.of("qtool"));
        meta.put("mse", base.mse());
        meta.put("block_size", base.blockSize());
        m.put("meta", meta);
        return m;
    }

    /** Writes {@code quantize_config.json} and {@code config.json} = the model's config plus quantization_config. */
    public static void writeConfigs(Path dir, Map<String, Object> modelConfig, Map<String, Object> quantizationConfig) {
        Map<String, Object> config = new LinkedHashMap<>(modelConfig);
        config.put("quantization_config", quantizationConfig);
        Json.writeFile(dir.resolve("config.json"), config);
        Json.writeFile(dir.resolve(QUANTIZE_CONFIG), quantizationConfig);
    }

    /** A Python regex matching exactly {@code name}: punctuation escaped, end anchored (re.match anchors the start). */
    static String exactRegex(String name) {
        StringBuilder sb = new StringBuilder();
        for (char c : name.toCharArray()) {
            if (!Character.isLetterOrDigit(c) && c != '_') sb.append('\\');
            sb.append(c);
        }
        return sb.append('$').toString();
    }

    private static void checkBits(int bits, String where) {
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
            throw new QtoolException(where + " = " + bits + ": qtool reads GPTQ checkpoints of 2, 3, 4 or 8 bits");
        }
    }

    private static int intValue(Object v, String where) {
        if (v instanceof Long l) return Math.toIntExact(l);
        if (v instanceof Integer i) return i;
        if (v instanceof Double d && d == Math.rint(d)) return (int) (double) d;
        throw new QtoolException(where + ": expected an integer, found " + v);
    }

    private static boolean boolValue(Object v, String where) {
        if (v instanceof Boolean b) return b;
        throw new QtoolException(where + ": expected true or false, found " + v);
    }
}
