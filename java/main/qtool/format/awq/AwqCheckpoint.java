package qtool.format.awq;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.format.awq.AwqPacker.PackedLinear;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.quantize.AwqParams;
import qtool.write.SafetensorsWriter;

/**
 * An AWQ GEMM checkpoint directory (see {@link AwqLayout}): its config and, for each linear, the dequantized float
 * weight; plus the helpers that write one.
 */
public final class AwqCheckpoint implements AutoCloseable {

    /** What a reader needs from the config. */
    public record Config(int bits, int groupSize, boolean zeroPoint, List<String> modulesToNotConvert, String source) {}

    private final Config config;
    private final Weights weights;

    private AwqCheckpoint(Config config, Weights weights) {
        this.config = config;
        this.weights = weights;
    }

    public static AwqCheckpoint open(Path dir) {
        return new AwqCheckpoint(readConfig(dir), Weights.open(dir));
    }

    /** Whether config.json's quantization_config says awq, or (older AutoAWQ) a quant_config.json is present. */
    public static boolean isAwq(Path dir) {
        Map<String, Object> qc = quantizationConfig(dir);
        return qc != null ? "awq".equalsIgnoreCase(String.valueOf(qc.get("quant_method"))) : Files.isRegularFile(dir.resolve(AwqLayout.QUANT_CONFIG));
    }

    private static Map<String, Object> quantizationConfig(Path dir) {
        Path configJson = dir.resolve("config.json");
        if (!Files.isRegularFile(configJson)) return null;
        Object q = Json.readObject(configJson).get("quantization_config");
        return q == null ? null : Json.object(q, configJson + ": quantization_config");
    }

    /** config.json's quantization_config (transformers keys), else quant_config.json (AutoAWQ's own keys). */
    public static Config readConfig(Path dir) {
        Map<String, Object> qc = quantizationConfig(dir);
        String where = dir.resolve("config.json") + ": quantization_config";
        String bitsKey = "bits", groupKey = "group_size";
        if (qc == null) {
            Path file = dir.resolve(AwqLayout.QUANT_CONFIG);
            if (!Files.isRegularFile(file)) throw new QtoolException(dir + ": not an AWQ checkpoint: no quantization_config in config.json and no " + AwqLayout.QUANT_CONFIG);
            qc = Json.readObject(file);
            where = file.toString();
            bitsKey = "w_bit";
            groupKey = "q_group_size";
        }
        Object version = qc.get("version");
        if (version != null && !"gemm".equalsIgnoreCase(String.valueOf(version))) {
            throw new QtoolException(where + ": version '" + version + "': qtool reads AWQ GEMM checkpoints only");
        }
        int bits = intValue(qc.getOrDefault(bitsKey, 4), where + ": " + bitsKey);
        if (bits != AwqLayout.BITS) throw new QtoolException(where + ": " + bitsKey + " = " + bits + ": AWQ GEMM checkpoints are 4-bit");
        int group = intValue(qc.getOrDefault(groupKey, 128), where + ": " + groupKey);
        boolean zeroPoint = !(qc.get("zero_point") instanceof Boolean b) || b;
        List<String> skip = new ArrayList<>();
        if (qc.get("modules_to_not_convert") instanceof List<?> l) l.forEach(x -> skip.add(String.valueOf(x)));
        return new Config(bits, group, zeroPoint, List.copyOf(skip), where);
    }

    public Config config() {
        return config;
    }

    public Weights weights() {
        return weights;
    }

    public boolean isQuantized(String prefix) {
        return weights.has(prefix + "." + AwqLayout.QWEIGHT);
    }

    /** {out, in} of a linear, quantized or not. */
    public int[] shape(String prefix) {
        if (!isQuantized(prefix)) {
            Tensor t = weights.get(prefix + ".weight");
            return new int[] {(int) t.shape()[0], t.cols()};
        }
        Tensor qw = weights.get(prefix + "." + AwqLayout.QWEIGHT);
        return new int[] {qw.cols() * AwqLayout.PACK, (int) qw.shape()[0]};
    }

    /** The float weight [out, in]: dequantized, or the plain weight of a module left unconverted. */
    public float[] dequantize(String prefix) {
        if (!isQuantized(prefix)) return weights.get(prefix + ".weight").toFloatArray();
        return AwqPacker.dequantize(read(prefix));
    }

    /** The packed tensors of {@code prefix}, checked against each other and the config. */
    public PackedLinear read(String prefix) {
        String where = weights.dir() + ": " + prefix;
        Tensor qweight = weights.get(prefix + "." + AwqLayout.QWEIGHT), qzeros = weights.get(prefix + "." + AwqLayout.QZEROS);
        Tensor scales = weights.get(prefix + "." + AwqLayout.SCALES);
        if (qweight.dtype() != DType.I32 || qzeros.dtype() != DType.I32 || !scales.dtype().isFloat()) {
            throw new QtoolException(where + ": qweight and qzeros must be I32 and scales a float type, found " + qweight + ", " + qzeros + ", " + scales);
        }
        if (qweight.shape().length != 2 || scales.shape().length != 2) throw new QtoolException(where + ".qweight/.scales: expected 2-D tensors");
        int in = (int) qweight.shape()[0], out = qweight.cols() * AwqLayout.PACK;
        int width = config.groupSize() == -1 ? in : config.groupSize();
        if (in % width != 0) throw new QtoolException(where + ": " + in + " inputs are not a multiple of group_size " + width + " (from " + config.source() + ")");
        int groups = in / width;
        AwqLayout.checkShape(where + ".scales", scales.shape(), groups, out);
        AwqLayout.checkShape(where + ".qzeros", qzeros.shape(), groups, out / AwqLayout.PACK);
        return new PackedLinear(prefix, in, out, groups, qweight.data().toArray(Tensor.I32), qzeros.data().toArray(Tensor.I32), scales.toFloatArray());
    }

    @Override
    public void close() {
        weights.close();
    }

    // ---- writing ----

    /** Writes {@code prefix.qweight}, {@code .qzeros}, {@code .scales} and, when not null, {@code .bias} (F16). */
    public static void write(SafetensorsWriter w, PackedLinear p, float[] bias) {
        String prefix = p.prefix();
        w.add(prefix + "." + AwqLayout.QWEIGHT, DType.I32, new long[] {p.in(), p.out() / AwqLayout.PACK}, GptqCheckpoint.littleEndian(p.qweight()));
        w.add(prefix + "." + AwqLayout.QZEROS, DType.I32, new long[] {p.groups(), p.out() / AwqLayout.PACK}, GptqCheckpoint.littleEndian(p.qzeros()));
        w.add(prefix + "." + AwqLayout.SCALES, DType.F16, new long[] {p.groups(), p.out()}, GptqCheckpoint.littleEndian(p.scalesF16()));
        if (bias != null) w.add(prefix + "." + AwqLayout.BIAS, DType.F16, new long[] {p.out()}, GptqCheckpoint.littleEndian(toHalf(bias)));
    }

    public static short[] toHalf(float[] v) {
        short[] h = new short[v.length];
        for (int k = 0; k < v.length; k++) h[k] = Float.floatToFloat16(v[k]);
        return h;
    }

    /** AutoAWQ's {@code to_transformers_dict}: config.json's quantization_config. */
    public static Map<String, Object> quantizationConfig(AwqParams p, List<String> modulesToNotConvert) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("quant_method", "awq");
        m.put("zero_point", p.zeroPoint());
        m.put("group_size", p.groupSize());
        m.put("bits", p.bits());
        m.put("version", "gemm");
        m.put("modules_to_not_convert", modulesToNotConvert.isEmpty() ? null : modulesToNotConvert);
        return m;
    }

    /** Writes config.json (the model's config plus quantization_config) and quant_config.json (AutoAWQ's own keys). */
    public static void writeConfigs(Path dir, Map<String, Object> modelConfig, AwqParams p, List<String> modulesToNotConvert) {
        Map<String, Object> config = new LinkedHashMap<>(modelConfig);
        config.put("quantization_config", quantizationConfig(p, modulesToNotConvert));
        Json.writeFile(dir.resolve("config.json"), config);
        Map<String, Object> q = new LinkedHashMap<>();
        q.put("zero_point", p.zeroPoint());
        q.put("q_group_size", p.groupSize());
        q.put("w_bit", p.bits());
        q.put("version", "GEMM");
        q.put("modules_to_not_convert", modulesToNotConvert.isEmpty() ? null : modulesToNotConvert);
        Json.writeFile(dir.resolve(AwqLayout.QUANT_CONFIG), q);
    }

    private static int intValue(Object v, String where) {
        if (v instanceof Long l) return Math.toIntExact(l);
        if (v instanceof Integer i) return i;
        if (v instanceof Double d && d == Math.rint(d)) return (int) (double) d;
        throw new QtoolException(where + ": expected an integer, found " + v);
    }
}
