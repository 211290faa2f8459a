package qtool.format.exl2;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;

/**
 * A model directory in ExLlamaV2's EXL2 format: quantized linears as the tensors of {@link Exl2Layout}, everything
 * else (embeddings, norms, unquantized linears) as plain tensors under their HF names.
 */
public final class Exl2Checkpoint implements AutoCloseable {
    private final Weights weights;

    private Exl2Checkpoint(Weights weights) {
        this.weights = weights;
    }

    public static Exl2Checkpoint open(Path dir) {
        return new Exl2Checkpoint(Weights.open(dir));
    }

    /**
     * Whether {@code dir} is EXL2: config.json's {@code quantization_config.quant_method} is "exl2", or (configs
     * ExLlamaV2 wrote before it added that entry) a tensor is named {@code *.q_weight}.
     */
    public static boolean isExl2(Path dir) {
        Path config = dir.resolve("config.json");
        if (Files.isRegularFile(config)) {
            Object qc = Json.readObject(config).get("quantization_config");
            if (qc instanceof Map<?, ?> m && m.get("quant_method") != null) return "exl2".equals(String.valueOf(m.get("quant_method")));
        }
        if (!Files.isDirectory(dir)) return false;
        try (Weights w = Weights.open(dir)) {
            return w.all().keySet().stream().anyMatch(n -> n.endsWith("." + Exl2Layout.Q_WEIGHT));
        } catch (QtoolException e) {
            return false;
        }
    }

    public Weights weights() {
        return weights;
    }

    /** Whether linear {@code key} (e.g. {@code model.layers.0.self_attn.q_proj}) is stored quantized. */
    public boolean isQuantized(String key) {
        return weights.has(key + "." + Exl2Layout.Q_WEIGHT);
    }

    /** The packed tensors of quantized linear {@code key}, with their types and shapes checked. */
    public Exl2Packer.PackedLinear read(String key) {
        Tensor qWeight = tensor(key, Exl2Layout.Q_WEIGHT, DType.I32, 2);
        Tensor qInvperm = tensor(key, Exl2Layout.Q_INVPERM, DType.I32, 1);
        Tensor qScale = tensor(key, Exl2Layout.Q_SCALE, DType.I32, 2);
        Tensor qScaleMax = tensor(key, Exl2Layout.Q_SCALE_MAX, DType.F16, 1);
        Tensor qGroups = tensor(key, Exl2Layout.Q_GROUPS, DType.I16, 1);
        int columns = (int) qWeight.shape()[1], groups = (int) qScaleMax.shape()[0];
        if (columns % 32 != 0) throw new QtoolException(weights.dir() + ": " + key + ".q_weight has " + columns + " columns, not a multiple of 32");
        if (qScale.shape()[0] != groups || qScale.shape()[1] * 8 != columns) {
            throw new QtoolException(weights.dir() + ": " + key + ".q_scale is " + qScale + ", expected I32[" + groups + ", " + columns / 8 + "]");
        }
        if (qGroups.shape()[0] != 2L * groups) {
            throw new QtoolException(weights.dir() + ": " + key + ".q_groups is " + qGroups + ", expected I16[" + 2 * groups + "]");
        }
        short[] bias = null;
        Tensor b = weights.find(key + "." + Exl2Layout.BIAS);
        if (b != null) {
            if (b.dtype() != DType.F16 || b.numel() != columns) {
                throw new QtoolException(weights.dir() + ": " + key + ".bias is " + b + ", expected F16[" + columns + "]");
            }
            bias = b.data().toArray(Tensor.F16);
        }
        return new Exl2Packer.PackedLinear(key, (int) qInvperm.shape()[0], columns, qWeight.data().toArray(Tensor.I32),
                qScale.data().toArray(Tensor.I32), qScaleMax.data().toArray(Tensor.F16), qGroups.data().toArray(Tensor.F16),
                qInvperm.data().toArray(Tensor.I32), bias);
    }

    /** {@code [out_padded, in]} of quantized linear {@code key} without unpacking it. */
    public long[] paddedShape(String key) {
        return new long[] {weights.get(key + "." + Exl2Layout.Q_WEIGHT).shape()[1], weights.get(key + "." + Exl2Layout.Q_INVPERM).numel()};
    }

    /** The weight [out, in] of quantized linear {@code key} with {@code out} real outputs, as ExLlamaV2 rebuilds it. */
    public float[] dequantize(String key, int out) {
        return Exl2Packer.dequantize(read(key), out);
    }

    /** The first {@code out} values of {@code key}'s (padded) bias, or null when it has none. */
    public float[] bias(String key, int out) {
        Tensor b = weights.find(key + "." + Exl2Layout.BIAS);
        if (b == null) return null;
        float[] all = b.toFloatArray();
        if (all.length < out) throw new QtoolException(weights.dir() + ": " + key + ".bias has " + all.length + " values, the layer " + out);
        return java.util.Arrays.copyOf(all, out);
    }

    private Tensor tensor(String key, String suffix, DType dtype, int dims) {
        Tensor t = weights.get(key + "." + suffix);
        if (t.dtype() != dtype || t.shape().length != dims) {
            throw new QtoolException(weights.dir() + ": " + key + "." + suffix + " is " + t + ", expected a " + dims + "-D " + dtype + " tensor");
        }
        return t;
    }

    @Override
    public void close() {
        weights.close();
    }
}
