package qtool.format.exl2;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import qtool.load.DType;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;
import qtool.quantize.Exl2GptqTest;
import qtool.write.SafetensorsWriter;

/**
 * Writes EXL2 tensors packed by qtool for scripts/gpu/exl2_tensor_check.py, which reads them with ExLlamaV2's own
 * kernels: per case {@code key}, the packed tensors of {@link Exl2Layout} plus {@code key.weight} (W [out, in]),
 * {@code key.hessian} (H [in, in]) and {@code key.dequantized} (qtool's result [out, in]), all F32 but the packed.
 * Usage: {@code java -cp qtool.jar:checks qtool.format.exl2.Exl2TensorDump OUT_DIR}.
 */
public final class Exl2TensorDump {
    private Exl2TensorDump() {}

    public static void main(String[] args) throws Exception {
        Path dir = Path.of(args[0]);
        Files.createDirectories(dir);
        // {out, in, option}: SmolLM2-135M shapes (576: a ragged last group), a padded output (200 → 224), every width
        Object[][] cases = {
                {576, 576, "1:4b_128g"}, {1536, 576, "0.1:4b_128g/0.9:3b_128g"}, {576, 1536, "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g"},
                {200, 576, "0.15:8b_128g/0.85:6b_128g"}, {256, 576, "0.1:3b_64g/0.9:2b_64g"}, {256, 576, "0.05:5b_32g/0.95:4b_32g"},
                {256, 576, "1:6b_32g"}, {256, 576, "1:8b_128g"}};
        try (SafetensorsWriter out = new SafetensorsWriter(dir, 0)) {
            for (int c = 0; c < cases.length; c++) {
                int o = (Integer) cases[c][0], in = (Integer) cases[c][1];
                Exl2Params p = Exl2Params.parse((String) cases[c][2]);
                float[][] wh = Exl2GptqTest.problem(o, in, c);
                for (int k = 0; k < wh[0].length; k++) wh[0][k] = Exl2Tensor.fp16(wh[0][k]); // ExLlamaV2 quantizes fp16 weights
                Exl2Tensor t = Exl2Gptq.quantize(Exl2Gptq.prepare(wh[1], in), wh[0], o, p);
                String key = "case" + c;
                Exl2Packer.pack(key, t, null).write(out);
                out.add(key + ".weight", DType.F32, new long[] {o, in}, bytes(wh[0]));
                out.add(key + ".hessian", DType.F32, new long[] {in, in}, bytes(wh[1]));
                out.add(key + ".dequantized", DType.F32, new long[] {o, in}, bytes(t.dequantized()));
                System.out.printf("%s: %dx%d %s%n", key, o, in, p.desc());
            }
        }
        Files.writeString(dir.resolve("options.txt"), java.util.Arrays.stream(cases).map(k -> (String) k[2])
                .reduce((a, b) -> a + "\n" + b).orElse("") + "\n");
    }

    private static MemorySegment bytes(float[] v) {
        MemorySegment m = MemorySegment.ofArray(new byte[v.length * 4]);
        MemorySegment.copy(v, 0, m, ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, v.length);
        return m;
    }
}
