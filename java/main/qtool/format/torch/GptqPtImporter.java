package qtool.format.torch;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.ModelConfig;
import qtool.load.Weights;
import qtool.write.SafetensorsWriter;

/**
 * A GPTQ-for-LLaMa checkpoint ({@code torch.save(model.state_dict())} after quantization: for each quantized linear
 * {@code qweight} I32 [in·bits/32, out], {@code qzeros} I32 [groups, out·bits/32] holding z − 1, {@code scales} F16
 * [groups, out], optional {@code g_idx} and {@code bias}) into a GPTQ directory as AutoGPTQ writes it: the packing is
 * the same (v1), so the tensors are copied as they are. The older layout with float {@code zeros} (w = q·scale −
 * zeros) is turned into qzeros where zeros/scale is an integer, which is how that layout was produced. All-zero
 * biases (GPTQ-for-LLaMa registers one for every layer) are dropped. Every other tensor is copied.
 */
public final class GptqPtImporter {

    public record Result(int quantizedLinears, int tensors, boolean descAct) {}

    public static Result importFile(Path pt, int bits, int groupSize, Path configDir, Path out, long shardBytes) {
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8) throw new QtoolException("--bits must be 2, 3, 4 or 8, not " + bits);
        if (groupSize != -1 && groupSize < 1) throw new QtoolException("--group-size must be positive or -1, not " + groupSize);
        Map<String, Object> modelConfig = Json.readObject(configDir.resolve("config.json"));
        ModelConfig.parse(modelConfig, configDir.resolve("config.json").toString());
        MetaLlamaImporter.refuseStaleWeights(out);
        if (out.toAbsolutePath().normalize().equals(configDir.toAbsolutePath().normalize())) throw new QtoolException("-o must differ from --config");
        try (Arena arena = Arena.ofShared()) {
            Map<String, Tensor> t = TorchZipFile.open(pt, arena).tensors();
            if (t.isEmpty()) throw new QtoolException(pt + ": holds no tensors");
            TreeSet<String> linears = new TreeSet<>();
            for (String k : t.keySet()) if (k.endsWith("." + GptqLayout.QWEIGHT)) linears.add(k.substring(0, k.length() - 1 - GptqLayout.QWEIGHT.length()));
            if (linears.isEmpty()) throw new QtoolException(pt + ": no '.qweight' tensors: not a GPTQ checkpoint");
            boolean descAct = false;
            SafetensorsWriter w = new SafetensorsWriter(out, shardBytes);
            int written = 0;
            try (Arena scratch = Arena.ofConfined()) {
                List<String> handled = new ArrayList<>();
                for (String p : linears) {
                    descAct |= writeLinear(pt, t, p, bits, groupSize, w, scratch);
                    for (String s : List.of(GptqLayout.QWEIGHT, GptqLayout.QZEROS, "zeros", GptqLayout.SCALES, GptqLayout.G_IDX, GptqLayout.BIAS, "wf")) {
                        handled.add(p + "." + s);
                    }
                }
                for (var e : t.entrySet()) {
                    if (handled.contains(e.getKey()) || e.getKey().endsWith("rotary_emb.inv_freq")) continue;
                    Tensor x = e.getValue();
                    w.add(e.getKey(), x.dtype(), x.shape(), x.data());
                    written++;
                }
                w.close();
            } catch (RuntimeException e) {
                w.abandon();
                throw e;
            }
            Map<String, Object> qc = new LinkedHashMap<>();
            qc.put("quant_method", "gptq");
            qc.put("bits", bits);
            qc.put("group_size", groupSize);
            qc.put("desc_act", descAct);
            qc.put("sym", false);
            qc.put("checkpoint_format", "gptq");
            qc.put("meta", Map.of("quantizer", List.of("GPTQ-for-LLaMa", "qtool import-gptq-pt")));
            Map<String, Object> mc = new LinkedHashMap<>(modelConfig);
            mc.put("torch_dtype", "float16");
            GptqCheckpoint.writeConfigs(out, mc, qc);
            copyTokenizerFiles(configDir, out);
            // read back every linear: shapes against bits and group size, as any loader will
            try (GptqCheckpoint ck = GptqCheckpoint.open(out)) {
                for (String p : linears) ck.read(p);
            }
            return new Result(linears.size(), written + 4 * linears.size(), descAct);
        }
    }

    /** Writes one linear's tensors; returns whether its g_idx is not the plain i / group_size (act-order). */
    private static boolean writeLinear(Path pt, Map<String, Tensor> t, String p, int bits, int groupSize, SafetensorsWriter w, Arena scratch) {
        Tensor qweight = need(pt, t, p, GptqLayout.QWEIGHT, DType.I32);
        Tensor scales = t.get(p + "." + GptqLayout.SCALES);
        if (scales == null || !scales.dtype().isFloat()) throw new QtoolException(pt + ": " + p + ".scales is missing or not a float tensor");
        if (qweight.shape().length != 2) throw new QtoolException(pt + ": " + p + ".qweight is " + qweight + ", not 2-D");
        long out = qweight.shape()[1];
        if (qweight.shape()[1] > Integer.MAX_VALUE / 32 || qweight.shape()[0] > Integer.MAX_VALUE / 32) {
            throw new QtoolException(pt + ": " + p + ".qweight is " + qweight + ", too large for a linear layer");
        }
        if (qweight.shape()[0] * 32 % bits != 0) throw new QtoolException(pt + ": " + p + ".qweight is " + qweight + ", which --bits " + bits + " cannot unpack");
        long in = qweight.shape()[0] * 32 / bits;
        long groups = groupSize == -1 ? 1 : (in + groupSize - 1) / groupSize;
        Tensor scales2 = scales.shape().length == 2 && scales.shape()[1] == 1 && scales.shape()[0] == out
                ? scales.reshape(1, out) : scales; // the oldest layout: one scale per row, [out, 1]
        if (scales2.shape().length != 2 || scales2.shape()[1] != out) {
            throw new QtoolException(pt + ": " + p + ".scales is " + scales + ", expected [groups, " + out + "]");
        }
        if (scales2.shape()[0] != groups) { // act-order too: g_idx permutes columns, the group count stays ceil(in / group_size)
            throw new QtoolException(pt + ": " + p + ".scales has " + scales2.shape()[0] + " groups but in_features " + in + " (from qweight and --bits "
                    + bits + ") with --group-size " + groupSize + " makes " + groups + " (wrong --bits or --group-size?)");
        }
        groups = scales2.shape()[0];
        w.add(p + "." + GptqLayout.QWEIGHT, DType.I32, qweight.shape(), qweight.data());
        Tensor qzeros = t.get(p + "." + GptqLayout.QZEROS);
        MemorySegment zerosBytes;
        if (qzeros != null) {
            if (qzeros.dtype() != DType.I32 || qzeros.shape().length != 2 || qzeros.shape()[0] != groups || qzeros.shape()[1] * 32 != out * bits) {
                throw new QtoolException(pt + ": " + p + ".qzeros is " + qzeros + ", expected I32[" + groups + ", " + out * bits / 32 + "] for --bits " + bits);
            }
            zerosBytes = qzeros.data();
        } else {
            Tensor zeros = t.get(p + ".zeros");
            if (zeros == null) throw new QtoolException(pt + ": " + p + " has neither qzeros nor zeros");
            zerosBytes = packZeros(pt, p, zeros, scales2, bits, (int) groups, (int) out);
        }
        w.add(p + "." + GptqLayout.QZEROS, DType.I32, new long[] {groups, out * bits / 32}, zerosBytes);
        w.add(p + "." + GptqLayout.SCALES, DType.F16, new long[] {groups, out}, f16(scales2, scratch));
        int width = groupSize == -1 ? (int) in : groupSize;
        int[] gIdx = new int[(int) in];
        boolean actOrder = false;
        Tensor g = t.get(p + "." + GptqLayout.G_IDX);
        for (int i = 0; i < in; i++) {
            if (g == null) gIdx[i] = i / width;
            else {
                if (g.numel() != in) throw new QtoolException(pt + ": " + p + ".g_idx is " + g + ", expected " + in + " entries (in_features)");
                long gi = g.dtype() == DType.I64 ? g.data().getAtIndex(ValueLayout.JAVA_LONG_UNALIGNED, i)
                        : g.dtype() == DType.I32 ? g.data().getAtIndex(Tensor.I32, i) : -1;
                if (gi < 0 || gi >= groups) throw new QtoolException(pt + ": " + p + ".g_idx[" + i + "] = " + gi + " is not a group (" + groups + "; g_idx must be I32 or I64)");
                gIdx[i] = (int) gi;
                actOrder |= gIdx[i] != i / width;
            }
        }
        w.add(p + "." + GptqLayout.G_IDX, DType.I32, new long[] {in}, GptqCheckpoint.littleEndian(gIdx));
        Tensor bias = t.get(p + "." + GptqLayout.BIAS);
        if (bias != null) {
            boolean allZero = true;
            for (long i = 0; i < bias.numel() && allZero; i++) allZero = bias.getFloat(i) == 0;
            if (!allZero) w.add(p + "." + GptqLayout.BIAS, DType.F16, new long[] {out}, f16(bias, scratch));
        }
        return actOrder;
    }

    /**
     * Float zeros (w = q·scale − zeros, GPTQ-for-LLaMa's layout before qzeros) → qzeros holding z − 1 (v1) at any
     * width, 3 bits included (a bit stream across words, as GPTQ packs 3-bit fields). v1 holds zero points 1..2^bits;
     * GPTQ-for-LLaMa's asymmetric grids have z = 0 only for a row with no negative weight, which is refused by name.
     */
    private static MemorySegment packZeros(Path pt, String p, Tensor zeros, Tensor scales, int bits, int groups, int out) {
        if (zeros.numel() != (long) groups * out) throw new QtoolException(pt + ": " + p + ".zeros is " + zeros + ", expected " + groups + "×" + out + " values");
        int[] z = new int[groups * out];
        for (int k = 0; k < z.length; k++) {
            float s = scales.getFloat(k), zf = zeros.getFloat(k);
            double v = s == 0 ? 0 : zf / s;
            long zi = Math.round(v);
            if (Math.abs(v - zi) > 1e-2 || zi < 1 || zi > (1 << bits)) {
                throw new QtoolException(pt + ": " + p + ".zeros[" + k / out + "," + k % out + "] / scale = " + v + " is not an integer zero point in 1.."
                        + (1 << bits) + " (what GPTQ's v1 qzeros hold)");
            }
            z[k] = (int) zi;
        }
        return GptqCheckpoint.littleEndian(GptqLayout.packZeros(z, groups, out, bits, GptqLayout.CheckpointFormat.GPTQ, p));
    }

    private static MemorySegment f16(Tensor t, Arena scratch) {
        if (t.dtype() == DType.F16) return t.data();
        short[] h = new short[Math.toIntExact(t.numel())];
        for (int i = 0; i < h.length; i++) h[i] = Float.floatToFloat16(t.getFloat(i));
        return GptqCheckpoint.littleEndian(h);
    }

    private static Tensor need(Path pt, Map<String, Tensor> t, String p, String suffix, DType dtype) {
        Tensor x = t.get(p + "." + suffix);
        if (x == null || x.dtype() != dtype) throw new QtoolException(pt + ": " + p + "." + suffix + " is " + x + ", expected " + dtype);
        return x;
    }

    private static void copyTokenizerFiles(Path from, Path to) {
        try (Stream<Path> s = Files.list(from)) {
            for (Path f : s.toList()) {
                String n = f.getFileName().toString();
                if (!Files.isRegularFile(f) || n.endsWith(".safetensors") || n.equals(Weights.INDEX) || n.equals("config.json")
                        || n.equals(GptqCheckpoint.QUANTIZE_CONFIG) || n.endsWith(".bin") || n.endsWith(".pt") || n.endsWith(".pth")) continue;
                Files.copy(f, to.resolve(n), StandardCopyOption.REPLACE_EXISTING);
            }
        } catch (IOException e) {
            throw new QtoolException(to + ": cannot copy tokenizer files from " + from + ": " + e.getMessage());
        }
    }
}
