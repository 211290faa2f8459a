package qtool.format.exl2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import qtool.backend.Tensor;
import qtool.load.Weights;

/**
 * The reader against ExLlamaV2 itself: {@code resources/exl2/exllamav2-tiny} holds the packed tensors of one decoder
 * layer as ExLlamaV2 0.3.2's converter wrote them (a 4.0 bpw conversion of a random synth model, made on the GPU host
 * by {@code scripts/gpu/refs-smollm2.sh fixture}), beside {@code <linear>.dq}: ExLlamaV2's own fp16 reconstruction of
 * each loaded weight ([in, out], what its kernels multiply by). qtool's unpacking, rounded to fp16, must equal it.
 *
 * <p>ExLlamaV2 loads an MLP with one trick the files do not show: down_proj is loaded without its act-order
 * permutation (its input rows stay in processing order), and gate/up's output columns are remapped by that same
 * permutation instead, so the intermediate activations arrive already permuted. The comparison undoes it.
 */
class ExLlamaV2WrittenTest {
    private static final Path FIXTURE = Path.of("java/test/resources/exl2/exllamav2-tiny");

    @Test
    void unpackingEqualsExLlamaV2sReconstruction() {
        int linears = 0;
        try (Exl2Checkpoint c = Exl2Checkpoint.open(FIXTURE); Weights w = Weights.open(FIXTURE)) {
            int[] downInvperm = w.get("model.layers.0.mlp.down_proj.q_invperm").data().toArray(Tensor.I32);
            for (String name : w.all().keySet()) {
                if (!name.endsWith(".dq")) continue;
                String key = name.substring(0, name.length() - ".dq".length());
                Tensor dq = w.get(name);
                int in = (int) dq.shape()[0], out = (int) dq.shape()[1];
                float[] ours = c.dequantize(key, out), theirs = dq.toFloatArray();
                assertEquals((long) in * out, ours.length, key);
                boolean gateUp = key.endsWith("gate_proj") || key.endsWith("up_proj"), down = key.endsWith("down_proj");
                int differing = 0;
                for (int o = 0; o < out; o++) {
                    for (int i = 0; i < in; i++) {
                        // theirs[row][col] of ours[o][i]: gate/up columns remapped, down rows in processing order
                        int row = down ? downInvperm[i] : i, col = gateUp ? downInvperm[o] : o;
                        float q = Float.float16ToFloat(Float.floatToFloat16(ours[o * in + i]));
                        if (q != theirs[row * out + col]) differing++;
                    }
                }
                assertEquals(0, differing, key + ": weights differing from ExLlamaV2's reconstruction");
                linears++;
            }
        }
        assertEquals(7, linears);
    }
}
