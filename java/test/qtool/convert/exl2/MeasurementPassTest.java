package qtool.convert.exl2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
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

/**
 * A block's measured error under each {@link MeasurementPass.ErrorRule}, checked against the rule recomputed here
 * from the block's outputs, on a stream whose first token of every row is made 1000× larger (an attention sink).
 */
class MeasurementPassTest {
    private static final int ROWS = 2, LEN = 16, HIDDEN = 64;

    @Test
    void errorRulesMatchTheirDefinitions(@TempDir Path dir) {
        Path m = dir.resolve("synth");
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "128", "--vocab", "512", "--tokenizer", Shared.require("models/stories260K").toString());
        assertEquals(0, r.exitCode(), r.err());
        try (LlamaModel model = LlamaModel.open(m); Backend b = new CpuBackend();
             Forward f = new Forward(model, b, DType.F32, ROWS, LEN, true, false, 1.0, 1.0)) {
            LlamaModel.Layer host = model.layer(0), dev = f.upload(host);
            // option 0: the weights as they are; option 1: each weight off by up to 5 %
            MeasurementPass.LinearOptions options = (l, w, site, gram) -> {
                float[] exact = hostArray(b, w), off = exact.clone();
                for (int i = 0; i < off.length; i++) off[i] *= 1 + 0.05f * (float) Math.sin(i);
                return List.of(exact, off);
            };
            List<int[]> rows = List.of(new int[] {0, 0, 0}, new int[] {1, 1, 1});
            LlamaModel.Layer perturbed = dev;
            for (String l : Measurement.MLP) {
                Tensor w = dev.linear(Measurement.hfLinear(l));
                perturbed = perturbed.withLinear(Measurement.hfLinear(l), upload(b, options.quantize(l, w, null, null).get(1), w.shape()));
            }

            float[] x = null, y = null, yq = null;
            double[] errors = new double[3];
            for (MeasurementPass.ErrorRule rule : MeasurementPass.ErrorRule.values()) {
                try (BlockStream s = new BlockStream(f, ROWS, LEN)) {
                    s.embed(new Random(3).ints(ROWS * LEN, 0, 512).toArray());
                    float[] states = hostArray(b, s.states);
                    for (int row = 0; row < ROWS; row++) {
                        for (int c = 0; c < HIDDEN; c++) states[row * LEN * HIDDEN + c] *= 1000;
                    }
                    b.copyFromHost(MemorySegment.ofArray(states), s.states);
                    if (x == null) {
                        x = states;
                        y = mlp(f, b, dev, x);
                        yq = mlp(f, b, perturbed, x);
                    }
                    double[] acc = new MeasurementPass(s, DType.F32, rule).accuracies(0, false, host, dev, rows, options, new HashMap<>());
                    assertEquals(1.0, acc[0], 1e-9, "the exact weights have no error");
                    errors[rule.ordinal()] = 1 - acc[1];
                    float[] moved = hostArray(b, s.states);
                    for (int i = 0; i < y.length; i++) assertEquals(y[i], moved[i], 1e-3 * Math.abs(y[i]) + 1e-5, "the stream moves on unquantized");
                }
            }
            double eps = model.config.rmsNormEps();
            assertEquals(expected(y, yq, null), errors[MeasurementPass.ErrorRule.OUTPUT.ordinal()], 1e-4 * errors[0] + 1e-9);
            assertEquals(expected(normalized(y, eps), normalized(yq, eps), null), errors[MeasurementPass.ErrorRule.TOKEN.ordinal()],
                    1e-4 * errors[1]);
            assertEquals(expected(y, yq, x), errors[MeasurementPass.ErrorRule.CONTRIBUTION.ordinal()], 1e-4 * errors[2]);
            assertTrue(errors[1] > 10 * errors[0], "the sink token hides the error from the output rule, not from the token rule: "
                    + errors[0] + " vs " + errors[1]);
        }
    }

    /** Mean over calibration rows of ‖a_q − a‖_F / ‖a − base‖_F (base null: 0). */
    private static double expected(float[] a, float[] aq, float[] base) {
        double sum = 0;
        int per = LEN * HIDDEN;
        for (int row = 0; row < ROWS; row++) {
            double d = 0, n = 0;
            for (int i = row * per; i < (row + 1) * per; i++) {
                d += Math.pow(aq[i] - a[i], 2);
                n += Math.pow(a[i] - (base == null ? 0 : base[i]), 2);
            }
            sum += Math.sqrt(d / n);
        }
        return sum / ROWS;
    }

    /** Each token divided by its RMS (with the model's ε), as an RMSNorm of unit weight. */
    private static float[] normalized(float[] a, double eps) {
        float[] out = new float[a.length];
        for (int t = 0; t < a.length / HIDDEN; t++) {
            double ss = 0;
            for (int c = 0; c < HIDDEN; c++) ss += (double) a[t * HIDDEN + c] * a[t * HIDDEN + c];
            double inv = 1 / Math.sqrt(ss / HIDDEN + eps);
            for (int c = 0; c < HIDDEN; c++) out[t * HIDDEN + c] = (float) (a[t * HIDDEN + c] * inv);
        }
        return out;
    }

    /** The MLP half (residual included) of layer {@code w} on a copy of x. */
    private static float[] mlp(Forward f, Backend b, LlamaModel.Layer w, float[] x) {
        Tensor t = upload(b, x, new long[] {(long) ROWS * LEN, HIDDEN});
        f.mlpHalf(w, t, null);
        return hostArray(b, t);
    }

    private static Tensor upload(Backend b, float[] v, long[] shape) {
        return b.upload(new Tensor(MemorySegment.ofArray(v), DType.F32, shape), DType.F32);
    }

    private static float[] hostArray(Backend b, Tensor t) {
        float[] h = new float[(int) t.numel()];
        b.copyToHost(t, MemorySegment.ofArray(h));
        return h;
    }
}
