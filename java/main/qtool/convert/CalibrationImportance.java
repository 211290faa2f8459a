package qtool.convert;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.Map;
import qtool.Progress;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.calibrate.CalibrationSet;
import qtool.load.DType;
import qtool.model.Forward;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;

/**
 * llama.cpp's importance matrix computed by qtool: for each linear of each decoder layer, the mean over calibration
 * tokens of the squared input of every input column, i.e. diag(XᵀX)/n, which is what llama-imatrix accumulates
 * ({@code in_sum2 / count}). The unquantized model runs layer by layer on the backend over the calibration rows (the
 * residual stream stays on the device, as in {@link GptqConverter}); at each linear site the full Gram matrix is
 * summed with {@link Backend#accumulateGram} and its diagonal taken on the host (the backend has no diagonal-only
 * op; a Gram of n² floats per site is small for the models this is meant for). Keys are transformers tensor names
 * ("model.layers.0.self_attn.q_proj.weight"), as {@code HfToGguf.Options#importance} takes them. The output head is
 * left out, as llama-imatrix leaves it out by default.
 */
public final class CalibrationImportance {
    private CalibrationImportance() {}


    /** Importance per linear weight of {@code model} over {@code cal}, {@code batch} rows per forward pass. */
    public static Map<String, float[]> compute(LlamaModel model, Backend backend, CalibrationSet cal, int batch) {
        var cfg = model.config;
        int len = cal.length();
        batch = Math.max(1, Math.min(batch, cal.rows()));
        DType linearType = ResidualStream.linearType(backend, model);
        Map<String, float[]> out = new LinkedHashMap<>();
        long tokens = (long) cal.rows() * len;
        try (Forward f = new Forward(model, backend, linearType, batch, len, true, false, 1.0, 1.0)) {
            Tensor states = backend.allocate(DType.F32, tokens, cfg.hiddenSize());
            Tensor work = backend.allocate(DType.F32, (long) batch * len, cfg.hiddenSize());
            try (Progress bar = new Progress("imatrix", cfg.numLayers(), "layers")) {
                for (int r0 = 0; r0 < cal.rows(); r0 += batch) {
                    int nr = Math.min(batch, cal.rows() - r0);
                    f.embed(Arrays.copyOfRange(cal.tokens(), r0 * len, (r0 + nr) * len), states.rowSlice((long) r0 * len, (long) nr * len));
                }
                for (int i = 0; i < cfg.numLayers(); i++) {
                    LlamaModel.Layer host = model.layer(i);
                    LlamaModel.Layer dev = f.upload(host);
                    EnumMap<Site, Tensor> grams = new EnumMap<>(Site.class);
                    try {
                        for (String l : LlamaModel.Layer.LINEARS) {
                            int in = host.linear(l).cols();
                            if (!grams.containsKey(Site.of(l))) {
                                Tensor h = backend.allocate(DType.F32, in, in);
                                backend.copyFromHost(MemorySegment.ofArray(new float[in * in]), h);
                                grams.put(Site.of(l), h);
                            }
                        }
                        // observe on a copy of the stream, then advance it: the observer sees each site's input
                        for (int r0 = 0; r0 < cal.rows(); r0 += batch) {
                            int nr = Math.min(batch, cal.rows() - r0);
                            Tensor rows = states.rowSlice((long) r0 * len, (long) nr * len);
                            Tensor x = work.rowSlice(0, (long) nr * len);
                            backend.copy(x, rows);
                            f.layer(dev, x, f.cacheK(0), f.cacheV(0), nr, len, 0, (s, in) -> backend.accumulateGram(grams.get(s), in));
                            f.layer(dev, rows, f.cacheK(0), f.cacheV(0), nr, len, 0, null);
                        }
                        backend.synchronize();
                        EnumMap<Site, float[]> diagonals = new EnumMap<>(Site.class);
                        grams.forEach((s, h) -> {
                            int n = h.cols();
                            float[] full = new float[n * n];
                            backend.copyToHost(h, MemorySegment.ofArray(full));
                            float[] d = new float[n];
                            for (int k = 0; k < n; k++) d[k] = (float) (full[k * n + k] / (double) tokens);
                            diagonals.put(s, d);
                        });
                        for (String l : LlamaModel.Layer.LINEARS) {
                            out.put(LlamaModel.prefix(i) + l + ".weight", diagonals.get(Site.of(l)).clone());
                        }
                    } finally {
                        grams.values().forEach(backend::free);
                        f.free(dev);
                    }
                    bar.step(1);
                }
            } finally {
                backend.free(states);
                backend.free(work);
            }
        }
        return out;
    }
}
