package qtool.backend;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import qtool.format.gptq.GptqLayout;
import qtool.format.gptq.GptqLayout.CheckpointFormat;
import qtool.format.gptq.GptqPacker.PackedLinear;
import qtool.load.DType;

/**
 * One GPTQ linear W [out, in] resident on a backend in its packed checkpoint tensors ({@link GptqLayout}), which
 * {@link Backend#gptqLinear} multiplies without a float copy of W on the CUDA backend.
 *
 * @param qweight   I32 [in·bits/32, out]
 * @param qzeros    I32 [groups, out·bits/32], in {@code format}'s convention
 * @param scales    F16 [groups, out] (F32 holding fp16 values on the CPU backend)
 * @param gIdx      I32 [in], or null when input i is in group i / groupSize (no act-order), which kernels then compute
 * @param groupSize inputs per group, −1 for one group; meaningful when gIdx is null
 */
public record GptqLinear(Tensor qweight, Tensor qzeros, Tensor scales, Tensor gIdx, int in, int out, int bits, int groups,
                         int groupSize, CheckpointFormat format) {

    /**
     * Puts {@code p}'s tensors on {@code backend}. g_idx is kept only where it is not i / groupSize for a group size of
     * −1 or a multiple of 32 (act-order), so that the common case reads no per-input group.
     */
    public static GptqLinear upload(Backend backend, PackedLinear p) {
        int groupSize = p.groups() == 1 ? -1 : (p.in() + p.groups() - 1) / p.groups();
        boolean implicit = (groupSize == -1 || groupSize % 32 == 0)
                && Arrays.equals(p.gIdx(), GptqLayout.defaultGIdx(p.in(), groupSize));
        Tensor qweight = backend.upload(ints(p.qweight(), p.qweightShape()), DType.I32);
        Tensor qzeros = backend.upload(ints(p.qzeros(), p.qzerosShape()), DType.I32);
        Tensor scales = backend.upload(new Tensor(MemorySegment.ofArray(p.scales()), DType.F32, new long[] {p.groups(), p.out()}), DType.F16);
        Tensor gIdx = implicit ? null : backend.upload(ints(p.gIdx(), new long[] {p.in()}), DType.I32);
        return new GptqLinear(qweight, qzeros, scales, gIdx, p.in(), p.out(), p.bits(), p.groups(), groupSize, p.format());
    }

    /** The packed arrays back on the host (the CPU reference dequantizes them). */
    public PackedLinear toHost(Backend backend) {
        int[] g = gIdx == null ? GptqLayout.defaultGIdx(in, groupSize) : hostInts(backend, gIdx);
        float[] s = new float[groups * out];
        if (scales.dtype() == DType.F32) {
            backend.copyToHost(scales, MemorySegment.ofArray(s));
        } else {
            short[] half = new short[s.length];
            backend.copyToHost(scales, MemorySegment.ofArray(half));
            for (int k = 0; k < s.length; k++) s[k] = Float.float16ToFloat(half[k]);
        }
        return new PackedLinear("gptq", in, out, bits, groups, hostInts(backend, qweight), hostInts(backend, qzeros), s, g,
                format, 0);
    }

    /** Frees the device tensors. */
    public void free(Backend backend) {
        backend.free(qweight);
        backend.free(qzeros);
        backend.free(scales);
        if (gIdx != null) backend.free(gIdx);
    }

    /** Bytes a product reads from the packed tensors (qweight, qzeros, scales, g_idx). */
    public long packedBytes() {
        return qweight.byteSize() + qzeros.byteSize() + scales.byteSize() + (gIdx == null ? 0 : gIdx.byteSize());
    }

    private static Tensor ints(int[] a, long[] shape) {
        return new Tensor(MemorySegment.ofArray(a), DType.I32, shape);
    }

    private static int[] hostInts(Backend backend, Tensor t) {
        int[] a = new int[Math.toIntExact(t.numel())];
        backend.copyToHost(t, MemorySegment.ofArray(a));
        return a;
    }
}
