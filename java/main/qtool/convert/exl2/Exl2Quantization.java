package qtool.convert.exl2;

import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.backend.Tensor;
import qtool.convert.JobDir;
import qtool.format.exl2.Exl2Packer;
import qtool.load.DType;
import qtool.model.Forward.Site;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;
import qtool.write.SafetensorsWriter;

/**
 * The quantization pass (ExLlamaV2's quantize.py) for one block: the block's input Gram matrices are summed on the
 * stream as it is now (the outputs of the already-quantized blocks before it), each linear is quantized with the
 * option the optimizer chose, and the block then runs with its quantized weights to move the stream on.
 *
 * <p>Each block's linears are packed, checked and written to {@code WORK/out_tensor/<block>.safetensors} (its own
 * job step, as ExLlamaV2's out_tensor files); {@link Exl2Compiler} gathers them into the model.
 */
final class Exl2Quantization {
    private final BlockStream s;
    private final Backend backend;
    private final DType linearType;

    Exl2Quantization(BlockStream stream, DType linearType) {
        this.s = stream;
        this.backend = stream.backend;
        this.linearType = linearType;
    }

    /** Quantizes one block with {@code options} (short linear name → option), returns the layer with its new weights. */
    LlamaModel.Layer quantize(int layer, boolean attention, Map<String, Exl2Params> options, LlamaModel.Layer host, LlamaModel.Layer dev,
                              JobDir job, Map<String, Double> seconds) {
        List<String> linears = attention ? Measurement.ATTENTION : Measurement.MLP;
        long t0 = System.nanoTime();
        EnumMap<Site, Tensor> grams = MeasurementPass.grams(s, dev, attention, host, linears, (r0, nr, y) -> {});
        seconds.merge("quantize: hessians", (System.nanoTime() - t0) / 1e9, Double::sum);
        t0 = System.nanoTime();
        Map<String, Exl2Tensor> results = new LinkedHashMap<>();
        EnumMap<Site, Exl2Gptq.Factor> factors = new EnumMap<>(Site.class);
        try {
            for (String l : linears) {
                Exl2Gptq.Factor f = factors.computeIfAbsent(Site.of(l), k -> backend.exl2Prepare(grams.get(k)));
                Tensor w = backend.upload(host.linear(Measurement.hfLinear(l)), DType.F32);
                try {
                    results.put(l, backend.exl2Quantize(f, w, options.get(l)));
                } finally {
                    backend.free(w);
                }
            }
        } finally {
            factors.values().forEach(Exl2Gptq.Factor::close);
            grams.values().forEach(backend::free);
        }
        seconds.merge("quantize: gptq", (System.nanoTime() - t0) / 1e9, Double::sum);
        String prefix = LlamaModel.prefix(layer);
        for (var e : results.entrySet()) {
            Exl2Tensor t = e.getValue();
            for (float v : t.dequantized()) {
                if (!Float.isFinite(v)) throw new QtoolException(prefix + Measurement.hfLinear(e.getKey()) + ": NaN or Inf after quantization");
            }
            Tensor q = backend.upload(new Tensor(MemorySegment.ofArray(t.dequantized()), DType.F32, new long[] {t.out(), t.in()}), linearType);
            String hf = Measurement.hfLinear(e.getKey());
            backend.free(dev.linear(hf));
            dev = dev.withLinear(hf, q);
        }
        t0 = System.nanoTime();
        s.advance(dev, attention);
        backend.synchronize();
        seconds.merge("quantize: forward", (System.nanoTime() - t0) / 1e9, Double::sum);
        Map<String, Exl2Tensor> byPrefix = new LinkedHashMap<>();
        Map<String, Tensor> biases = new LinkedHashMap<>();
        results.forEach((l, t) -> {
            byPrefix.put(prefix + Measurement.hfLinear(l), t);
            Tensor b = host.bias(Measurement.hfLinear(l));
            if (b != null) biases.put(prefix + Measurement.hfLinear(l), b);
        });
        save(job, Measurement.blockKey(2 * layer + (attention ? 0 : 1)), byPrefix, biases);
        return dev;
    }

    // ---- the packed results in WORK/out_tensor -----------------------------------------------------------------

    static Path file(JobDir job, String block) {
        return job.file("out_tensor").resolve(block + ".safetensors");
    }

    /**
     * Packs each linear ({@link Exl2Packer}), rebuilds its weight from the packed tensors alone as ExLlamaV2's
     * kernels read them, and aborts unless that equals the quantizer's weight exactly (ExLlamaV2's "sanity test",
     * made exact); then writes the block's tensors atomically.
     */
    static void save(JobDir job, String block, Map<String, Exl2Tensor> linears, Map<String, Tensor> biases) {
        Path dir = job.file("out_tensor"), tmp = dir.resolve("." + block + ".tmp");
        try {
            Files.createDirectories(dir);
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, 0)) {
                for (var e : linears.entrySet()) {
                    Exl2Tensor t = e.getValue();
                    Tensor bias = biases.get(e.getKey());
                    Exl2Packer.PackedLinear packed = Exl2Packer.pack(e.getKey(), t, bias == null ? null : bias.toFloatArray());
                    float[] rebuilt = Exl2Packer.dequantize(packed, t.out()), expected = t.dequantized();
                    for (int i = 0; i < expected.length; i++) {
                        if (Float.floatToIntBits(rebuilt[i]) != Float.floatToIntBits(expected[i])) {
                            throw new QtoolException(e.getKey() + ": the packed EXL2 tensors rebuild " + rebuilt[i] + " at [" + i / t.in() + ", "
                                    + i % t.in() + "] where the quantizer made " + expected[i] + "; aborting (packing error)");
                        }
                    }
                    packed.write(w);
                }
            }
            JobDir.moveAtomically(tmp.resolve("model.safetensors"), file(job, block));
            Files.delete(tmp);
        } catch (java.io.IOException e) {
            throw new QtoolException(tmp + ": " + e.getMessage());
        }
    }
}
