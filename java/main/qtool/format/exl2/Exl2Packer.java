package qtool.format.exl2;

import java.util.Arrays;
import java.util.stream.IntStream;
import qtool.QtoolException;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.quantize.Exl2Tensor;
import qtool.write.SafetensorsWriter;

/**
 * Packs an {@link Exl2Tensor} into the tensors of {@link Exl2Layout} (bit-exact with what ExLlamaV2's converter
 * writes for the same quantization), and rebuilds the float weight from packed tensors alone, reading them the way
 * ExLlamaV2's reconstruct kernel does (group map from q_groups, sub-scales, q_perm).
 */
public final class Exl2Packer {
    private Exl2Packer() {}

    /**
     * One linear's EXL2 tensors, arrays as stored; {@code columns} is the padded width P.
     *
     * @param qScaleMax fp16 bit patterns [groups]
     * @param qGroups   (bits, first packed row) pairs [2·groups]
     * @param bias      fp16 bit patterns [P], or null
     */
    public record PackedLinear(String key, int in, int columns, int[] qWeight, int[] qScale, short[] qScaleMax,
                               short[] qGroups, int[] qInvperm, short[] bias) {

        public int groups() {
            return qScaleMax.length;
        }

        public int packedRows() {
            return qWeight.length / columns;
        }

        /** Writes the tensors under {@code key.}. */
        public void write(SafetensorsWriter out) {
            out.add(key + "." + Exl2Layout.Q_INVPERM, DType.I32, new long[] {in}, GptqCheckpoint.littleEndian(qInvperm));
            out.add(key + "." + Exl2Layout.Q_SCALE_MAX, DType.F16, new long[] {groups()}, GptqCheckpoint.littleEndian(qScaleMax));
            out.add(key + "." + Exl2Layout.Q_GROUPS, DType.I16, new long[] {qGroups.length}, GptqCheckpoint.littleEndian(qGroups));
            if (bias != null) out.add(key + "." + Exl2Layout.BIAS, DType.F16, new long[] {columns}, GptqCheckpoint.littleEndian(bias));
            out.add(key + "." + Exl2Layout.Q_SCALE, DType.I32, new long[] {groups(), columns / 8}, GptqCheckpoint.littleEndian(qScale));
            out.add(key + "." + Exl2Layout.Q_WEIGHT, DType.I32, new long[] {packedRows(), columns}, GptqCheckpoint.littleEndian(qWeight));
        }
    }

    /**
     * adaptivegptq.pack: the tensors of {@code t} under {@code key}, with its bias ([out] floats, stored fp16) or null.
     *
     * @throws QtoolException when the shape does not fit the layout (see {@link qtool.quantize.Exl2Params#requireStorable})
     */
    public static PackedLinear pack(String key, Exl2Tensor t, float[] bias) {
        t.params().requireStorable(t.in(), t.out(), key);
        int out = t.out(), in = t.in(), columns = Exl2Layout.paddedColumns(out);
        var layout = t.layout();
        int groups = layout.count();
        short[] qGroups = new short[2 * groups];
        for (int g = 0; g < groups; g++) {
            qGroups[2 * g] = (short) layout.bits()[g];
            qGroups[2 * g + 1] = (short) layout.firstPackedRow(g);
        }
        int[] qWeight = new int[layout.totalPackedRows() * columns];
        IntStream.range(0, groups).parallel().forEach(g -> {
            int bits = layout.bits()[g], first = layout.firstRow()[g], packed = layout.firstPackedRow(g);
            int padCode = 1 << (bits - 1); // a zero-padded column quantizes to the zero point
            for (int j = 0; j < layout.rows()[g]; j++) {
                for (int c = 0; c < columns; c++) {
                    int code = c < out ? t.code(first + j, c) : padCode;
                    Exl2Layout.put(qWeight, columns, packed, j, c, bits, code);
                }
            }
        });
        int[] qScale = new int[groups * columns / 8];
        for (int g = 0; g < groups; g++) {
            for (int c = 0; c < columns; c++) {
                int stored = c < out ? t.qscale()[g * out + c] - 1 : 0; // a padded column's sub-scale is 1
                qScale[(g * columns + c) / 8] |= stored << (4 * (c & 7));
            }
        }
        short[] qScaleMax = new short[groups];
        for (int g = 0; g < groups; g++) qScaleMax[g] = Float.floatToFloat16(t.qscaleMax()[g]);
        short[] b = null;
        if (bias != null) {
            if (bias.length != out) throw new IllegalArgumentException(key + ": bias has " + bias.length + " values, not " + out);
            b = new short[columns];
            for (int c = 0; c < out; c++) b[c] = Float.floatToFloat16(bias[c]);
        }
        return new PackedLinear(key, in, columns, qWeight, qScale, qScaleMax, qGroups, t.invperm(), b);
    }

    /**
     * Rows of each group as the kernels derive them from q_groups (make_group_map / QMatrix): (next offset − this
     * offset)·32/bits, the last group the rows left. Checks what the kernels take for granted.
     */
    public static int[] groupRows(PackedLinear p) {
        int groups = p.groups();
        String where = p.key();
        if (groups == 0 || p.qGroups().length != 2 * groups) {
            throw new QtoolException(where + ": q_groups has " + p.qGroups().length + " values for " + groups + " groups (q_scale_max)");
        }
        int[] rows = new int[groups];
        int row = 0, prevBits = 8;
        for (int g = 0; g < groups; g++) {
            int bits = p.qGroups()[2 * g], start = p.qGroups()[2 * g + 1] & 0xFFFF;
            if (!qtool.quantize.Exl2Params.BIT_WIDTHS.contains(bits) || bits > prevBits) {
                throw new QtoolException(where + ": group " + g + " has " + bits + " bits; EXL2 takes 8, 6, 5, 4, 3, 2 in decreasing order");
            }
            prevBits = bits;
            int end = g + 1 < groups ? p.qGroups()[2 * g + 3] & 0xFFFF : p.packedRows();
            if (end < start) throw new QtoolException(where + ": q_groups offsets decrease at group " + g);
            rows[g] = g + 1 < groups ? (end - start) * 32 / bits : p.in() - row;
            int step = bits == 2 ? 16 : 32;
            if (rows[g] <= 0 || rows[g] % step != 0 || (long) rows[g] * bits != 32L * (end - start)) {
                throw new QtoolException(where + ": group " + g + " (" + bits + "-bit) spans " + rows[g] + " rows in " + (end - start)
                        + " packed rows of q_weight; EXL2 groups are whole multiples of " + step + " rows");
            }
            if (g == 0 && start != 0) throw new QtoolException(where + ": the first group starts at packed row " + start + ", not 0");
            row += rows[g];
        }
        if (row != p.in()) throw new QtoolException(where + ": q_groups cover " + row + " rows, q_invperm has " + p.in());
        return rows;
    }

    /**
     * The weight [out, in] (HF orientation, original input order) that ExLlamaV2's kernels rebuild from the packed
     * tensors: fp16 values as floats. {@code out} is the layer's real width (the stored columns are padded).
     */
    public static float[] dequantize(PackedLinear p, int out) {
        int in = p.in(), columns = p.columns();
        if (columns != Exl2Layout.paddedColumns(out)) {
            throw new QtoolException(p.key() + ": q_weight has " + columns + " columns, the layer has " + out + " outputs (padded: "
                    + Exl2Layout.paddedColumns(out) + ")");
        }
        int[] rows = groupRows(p);
        int[] perm = new int[in];
        Arrays.fill(perm, -1);
        for (int i = 0; i < in; i++) {
            int k = p.qInvperm()[i];
            if (k < 0 || k >= in || perm[k] != -1) throw new QtoolException(p.key() + ": q_invperm is not a permutation of 0.." + (in - 1));
            perm[k] = i;
        }
        int groups = rows.length;
        int[] firstRow = new int[groups];
        for (int g = 1; g < groups; g++) firstRow[g] = firstRow[g - 1] + rows[g - 1];
        float[] w = new float[out * in];
        IntStream.range(0, groups).parallel().forEach(g -> {
            int bits = p.qGroups()[2 * g], packed = p.qGroups()[2 * g + 1] & 0xFFFF;
            float scaleMax = Float.float16ToFloat(p.qScaleMax()[g]);
            for (int c = 0; c < out; c++) {
                int qs = ((p.qScale()[(g * columns + c) / 8] >>> (4 * (c & 7))) & 15) + 1;
                float scale = Exl2Tensor.subScale(qs, scaleMax);
                for (int j = 0; j < rows[g]; j++) {
                    int code = Exl2Layout.get(p.qWeight(), columns, packed, j, c, bits);
                    w[c * in + perm[firstRow[g] + j]] = Exl2Tensor.dequantize(code, bits, scale);
                }
            }
        });
        return w;
    }
}
