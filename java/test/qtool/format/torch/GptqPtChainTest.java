package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.format.gguf.GgmlCodec;
import qtool.format.gguf.GgmlType;
import qtool.format.gguf.GgufFile;
import qtool.format.gguf.GptqToGguf;
import qtool.format.gptq.GptqCheckpoint;
import qtool.load.DType;
import qtool.load.Weights;

/**
 * GPTQ-for-LLaMa checkpoints of a small synth Llama, made by hand (TorchSaveWriter) with codes packed as a plain bit
 * stream per column (independently of qtool's packer), through {@code import-gptq-pt} and then {@code gguf from-gptq}:
 * the seed's .pt → GPTQ → ggml path. One in the qzeros layout (4-bit, group 32), one in the older float-zeros layout
 * at 3 bits (float32 zeros = zero·scale and scales [out, 1]).
 */
class GptqPtChainTest {
    @TempDir
    Path dir;

    private Path synth() {
        Path m = dir.resolve("synth");
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "128", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    /**
     * A GPTQ-for-LLaMa state dict for every linear of {@code hf} with random codes, zero points in 1..2^bits and
     * scales; returns the dequantized weights GPTQ-for-LLaMa's kernels compute, by prefix.
     */
    private static Map<String, float[]> makePt(Path hf, Path pt, int bits, int group, boolean floatZeros) throws Exception {
        Random rnd = new Random(bits);
        Map<String, TorchSaveWriter.RawTensor> sd = new LinkedHashMap<>();
        Map<String, float[]> expected = new LinkedHashMap<>();
        try (Weights w = Weights.open(hf)) {
            for (var e : w.all().entrySet()) {
                Tensor t = e.getValue();
                if (!e.getKey().endsWith("_proj.weight")) {
                    sd.put(e.getKey(), new TorchSaveWriter.RawTensor(DType.F16, t.shape(), GptqPtImporterTest.f16(t.toFloatArray())));
                    continue;
                }
                String p = e.getKey().substring(0, e.getKey().length() - ".weight".length());
                int out = (int) t.shape()[0], in = t.cols(), width = group == -1 ? in : group, groups = in / width;
                int[] q = new int[in * out], z = new int[groups * out];
                float[] s = new float[groups * out], zf = new float[groups * out];
                for (int k = 0; k < q.length; k++) q[k] = rnd.nextInt(1 << bits);
                for (int k = 0; k < z.length; k++) {
                    z[k] = 1 + rnd.nextInt(1 << bits);
                    s[k] = 0.001f + rnd.nextFloat() * 0.01f;
                    if (!floatZeros) s[k] = Float.float16ToFloat(Float.floatToFloat16(s[k]));
                    zf[k] = z[k] * s[k];
                }
                float[] deq = new float[out * in];
                for (int o = 0; o < out; o++) {
                    for (int i = 0; i < in; i++) {
                        int g = (i / width) * out + o;
                        deq[o * in + i] = floatZeros ? q[i * out + o] * s[g] - zf[g] : s[g] * (q[i * out + o] - z[g]);
                    }
                }
                expected.put(p, deq);
                sd.put(p + ".qweight", raw(DType.I32, new long[] {in * bits / 32, out}, i32(packColumns(q, in, out, bits))));
                if (floatZeros) { // the oldest QuantLinear: float32 [out, 1] buffers, one group per row
                    sd.put(p + ".zeros", raw(DType.F32, new long[] {out, 1}, f32(zf)));
                    sd.put(p + ".scales", raw(DType.F32, new long[] {out, 1}, f32(s)));
                    sd.put(p + ".bias", raw(DType.F32, new long[] {out}, new byte[4 * out]));
                } else {
                    int[] zm1 = new int[z.length]; // qzeros: z − 1, packed along the output dim of each group row
                    for (int k = 0; k < z.length; k++) zm1[k] = z[k] - 1;
                    int[] zt = transpose(zm1, groups, out);
                    sd.put(p + ".qzeros", raw(DType.I32, new long[] {groups, out * bits / 32}, i32(transpose(packColumns(zt, out, groups, bits), out * bits / 32, groups))));
                    sd.put(p + ".scales", raw(DType.F16, new long[] {groups, out}, GptqPtImporterTest.f16(s)));
                    int[] gIdx = new int[in];
                    for (int i = 0; i < in; i++) gIdx[i] = i / width;
                    sd.put(p + ".g_idx", raw(DType.I32, new long[] {in}, i32(gIdx)));
                    sd.put(p + ".bias", raw(DType.F16, new long[] {out}, new byte[2 * out]));
                }
            }
        }
        TorchSaveWriter.save(pt, sd, true);
        return expected;
    }

    /** values [n, cols] (row-major) → words [n·bits/32, cols]: column c is a little-endian stream of n bits-wide fields. */
    static int[] packColumns(int[] values, int n, int cols, int bits) {
        int[] words = new int[n * bits / 32 * cols];
        for (int c = 0; c < cols; c++) {
            for (int i = 0; i < n; i++) {
                for (int b = 0; b < bits; b++) {
                    long bit = (long) i * bits + b;
                    if ((values[i * cols + c] >>> b & 1) != 0) words[(int) (bit / 32) * cols + c] |= 1 << (bit % 32);
                }
            }
        }
        return words;
    }

    static int[] transpose(int[] a, int rows, int cols) {
        int[] t = new int[a.length];
        for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c];
        return t;
    }

    private static TorchSaveWriter.RawTensor raw(DType d, long[] shape, byte[] bytes) {
        return new TorchSaveWriter.RawTensor(d, shape, bytes);
    }

    static byte[] i32(int[] v) {
        return GptqPtImporterTest.i32(v);
    }

    static byte[] f32(float[] v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) b.putFloat(x);
        return b.array();
    }

    /** import-gptq-pt, the dequantized weights against {@code expected}, then from-gptq: every linear carried over. */
    private void chain(Path hf, Path pt, int bits, int group, Map<String, float[]> expected, float tolerance) {
        Path gptq = dir.resolve("gptq-" + bits);
        CliRun r = CliRun.of("import-gptq-pt", "-i", pt.toString(), "--bits", String.valueOf(bits), "--group-size", String.valueOf(group),
                "--config", hf.toString(), "-o", gptq.toString());
        assertEquals(0, r.exitCode(), r.err());
        try (GptqCheckpoint ck = GptqCheckpoint.open(gptq)) {
            assertEquals(expected.keySet(), Set.copyOf(ck.quantizedLinears()));
            for (var e : expected.entrySet()) {
                float[] got = ck.dequantize(e.getKey()), want = e.getValue();
                for (int k = 0; k < want.length; k++) assertEquals(want[k], got[k], tolerance, e.getKey() + "[" + k + "]");
            }
        }
        Path gguf = dir.resolve("chain-" + bits + ".gguf");
        CliRun g = CliRun.of("gguf", "from-gptq", "-i", gptq.toString(), "-o", gguf.toString());
        assertEquals(0, g.exitCode(), g.err());
        GptqToGguf.Result res = GptqToGguf.convert(gptq, dir.resolve("again-" + bits + ".gguf"), GptqToGguf.Options.defaults(), null);
        try (GptqCheckpoint ck = GptqCheckpoint.open(gptq); GgufFile f = GgufFile.open(gguf)) {
            int linears = 0;
            for (GptqToGguf.Mapped m : res.tensors()) {
                if (!m.gptq()) continue;
                linears++;
                // every 32-block in one group: a 3-bit grid fits Q4_0 (q − z + 8 in 0..15, d = scale) exactly; an
                // asymmetric 4-bit one needs Q4_1, with m = −scale·zero rounded to fp16
                assertEquals(bits == 3 ? GgmlType.Q4_0 : GgmlType.Q4_1, m.type(), m.source());
                assertTrue(m.direct() && m.maxAbsChange() < 1e-4, m.toString());
                if (m.name().contains(".attn_q.") || m.name().contains(".attn_k.")) continue; // rows permuted for llama.cpp
                float[] want = ck.dequantize(m.source()), got = GgmlCodec.dequantize(f.tensor(m.name()));
                for (int k = 0; k < want.length; k++) assertEquals(want[k], got[k], m.maxAbsChange() + 1e-7, m.name() + "[" + k + "]");
            }
            assertEquals(expected.size(), linears);
        }
    }

    @Test
    void qzerosLayoutFourBitsToGguf() throws Exception {
        Path hf = synth(), pt = dir.resolve("llama-4bit-32g.pt");
        chain(hf, pt, 4, 32, makePt(hf, pt, 4, 32, false), 0f);
    }

    /** 3-bit float zeros: converted to 3-bit qzeros (a bit stream across words), exact up to the fp16 scales. */
    @Test
    void floatZerosLayoutThreeBitsToGguf() throws Exception {
        Path hf = synth(), pt = dir.resolve("llama-3bit-zeros.pt");
        Map<String, float[]> expected = makePt(hf, pt, 3, -1, true);
        // fp16 scales: |s·(q − z) − (q·s − z·s)| ≤ |q − z|·|s − fp16(s)| ≤ 8 · 0.011 · 2⁻¹¹
        chain(hf, pt, 3, -1, expected, 8 * 0.011f / 2048 + 1e-7f);
    }
}
