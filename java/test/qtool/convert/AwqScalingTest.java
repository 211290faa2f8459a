package qtool.convert;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Backend;
import qtool.backend.CpuBackend;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.load.DType;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.quantize.Awq;
import qtool.quantize.AwqParams;

/** AWQ's scale search and folding on a decoder layer, on the CPU backend. */
class AwqScalingTest {
    private static final int ROWS = 2, LEN = 32;

    private static Path synth(Path dir, int kvHeads) {
        Path m = dir.resolve("synth" + kvHeads);
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "1", "--heads", "4", "--kv-heads", String.valueOf(kvHeads),
                "--intermediate", "128", "--vocab", "512", "--dtype", "f16", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    @Test
    void foldedScalesLeaveTheLayerOutputUnchanged(@TempDir Path dir) {
        try (LlamaModel model = LlamaModel.open(synth(dir, 4)); Backend b = new CpuBackend();
             Forward f = new Forward(model, b, DType.F32, ROWS, LEN, true, false, 1.0, 1.0);
             ResidualStream stream = new ResidualStream(b, ROWS, LEN, 64, ROWS)) {
            int[] tokens = new Random(1).ints(ROWS * LEN, 0, 512).toArray();
            f.embed(tokens, stream.states());
            LlamaModel.Layer host = model.layer(0);
            AwqScaling.Result r = AwqScaling.apply(f, host, stream, false, new AwqParams(4, 32, true), Awq.SCALE_GRID);

            assertEquals(4, r.groups().size(), "q/k/v, v→o, gate/up, up→down (no grouped-query attention here)");
            assertTrue(r.notes().isEmpty(), r.notes().toString());
            float[] s = r.groups().get(0).search().scales();
            float min = Float.MAX_VALUE, max = 0;
            for (float v : s) {
                min = Math.min(min, v);
                max = Math.max(max, v);
            }
            assertTrue(max > 1.05f * min, "the search chose non-trivial scales: " + min + " … " + max);

            float[] x = hostStates(b, stream.states());
            float[] orig = run(f, b, host, x), scaled = run(f, b, r.layer(), x);
            double diff = 0, change = 0;
            for (int i = 0; i < x.length; i++) {
                diff += Math.pow(scaled[i] - orig[i], 2);
                change += Math.pow(orig[i] - x[i], 2);  // what the layer adds to the residual stream
            }
            double rel = Math.sqrt(diff / change);
            assertTrue(rel < 1e-4, "relative change of the layer's output " + rel);
        }
    }

    @Test
    void groupedQueryAttentionSkipsVToOAndSaysSo(@TempDir Path dir) {
        try (LlamaModel model = LlamaModel.open(synth(dir, 2)); Backend b = new CpuBackend();
             Forward f = new Forward(model, b, DType.F32, ROWS, LEN, true, false, 1.0, 1.0);
             ResidualStream stream = new ResidualStream(b, ROWS, LEN, 64, ROWS)) {
            f.embed(new Random(2).ints(ROWS * LEN, 0, 512).toArray(), stream.states());
            AwqScaling.Result r = AwqScaling.apply(f, model.layer(0), stream, false, new AwqParams(4, 32, true), Awq.SCALE_GRID);
            assertEquals(3, r.groups().size());
            assertTrue(r.notes().getFirst().startsWith("v_proj→o_proj not scaled"), r.notes().toString());
            assertTrue(r.groups().stream().allMatch(g -> g.search().loss() <= g.search().unscaledLoss() * 1.5), "losses are sane");
        }
    }

    private static float[] hostStates(Backend b, Tensor t) {
        float[] h = new float[(int) t.numel()];
        b.copyToHost(t, MemorySegment.ofArray(h));
        return h;
    }

    /** The layer (all F32) over a copy of the residual rows x. */
    private static float[] run(Forward f, Backend b, LlamaModel.Layer host, float[] x) {
        Tensor t = b.allocate(DType.F32, ROWS * LEN, 64);
        b.copyFromHost(MemorySegment.ofArray(x.clone()), t);
        LlamaModel.Layer dev = f.upload(host);
        f.layer(dev, t, f.cacheK(0), f.cacheV(0), ROWS, LEN, 0, null);
        float[] out = hostStates(b, t);
        b.free(t);
        return out;
    }
}
