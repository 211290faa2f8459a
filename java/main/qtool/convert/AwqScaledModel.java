package qtool.convert;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import qtool.Progress;
import qtool.QtoolException;
import qtool.backend.Backend;
import qtool.calibrate.CalibrationSet;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;
import qtool.model.Forward;
import qtool.model.LlamaModel;
import qtool.quantize.AwqParams;
import qtool.quantize.GptqParams;
import qtool.write.SafetensorsWriter;

/**
 * AWQ's scaling as a stage of its own, in front of a quantizer that runs several passes over the model (EXL2's
 * measurement and quantization): every layer's scales searched ({@link AwqScaling}, on the calibration rows, the
 * stream moving on through the original layers) and folded, the result written as an fp16 model in
 * WORK/awq_model that the passes then read like any input. It computes the same function as the input model (up to
 * fp16 rounding of the scaled tensors), with norms divided and linear columns multiplied by the scales.
 *
 * <p>Job state: each scaled layer goes to WORK/awq_layers/NNNN.safetensors; the stream is saved as
 * {@link ResidualStream} saves it ({@code states.f32}, {@code states_after_layer}); {@code awq_model} is committed
 * once the model is assembled (and awq_layers removed).
 */
public final class AwqScaledModel {
    private AwqScaledModel() {}

    /**
     * The scaled model of this job, made now unless a finished one is there.
     *
     * @param judge the quantizer each search judges its candidates with (GPTQ at these settings)
     */
    public static Path make(JobDir job, LlamaModel model, Backend backend, DType linearType, CalibrationSet cal, int batch, double ntkAlpha,
                            double ropeScale, AwqParams p, GptqParams judge, Map<String, Double> seconds, List<String> warnings) {
        Path out = job.file("awq_model");
        if (Boolean.TRUE.equals(job.progress().get("awq_model")) && Files.isDirectory(out)) return out;
        var cfg = model.config;
        int rowsPerPass = Math.max(1, Math.min(batch, cal.rows()));
        try (Forward f = new Forward(model, backend, linearType, rowsPerPass, cal.length(), true, false, ntkAlpha, ropeScale);
             ResidualStream stream = new ResidualStream(backend, cal.rows(), cal.length(), cfg.hiddenSize(), rowsPerPass);
             Progress bar = new Progress("awq scale", cfg.numLayers(), "layers")) {
            int start = stream.restore(job, f, cal);
            bar.step(start);
            for (int i = start; i < cfg.numLayers(); i++) {
                LlamaModel.Layer host = model.layer(i);
                AwqScaling.Result r = AwqScaling.apply(f, host, stream, true, p, judge);
                for (String n : r.notes()) if (!warnings.contains(n)) warnings.add(n);
                r.seconds().forEach((k, v) -> seconds.merge(k, v, Double::sum));
                writeLayer(job, i, r.layer(), model.dir);
                LlamaModel.release(host);
                stream.checkFinite(model.dir, i);
                stream.saveIfDue(job, i, i == cfg.numLayers() - 1);
                bar.step(1);
            }
        }
        long t0 = System.nanoTime();
        assemble(job, model, out);
        seconds.merge("scale search: write model", (System.nanoTime() - t0) / 1e9, Double::sum);
        job.commit("awq_model", true);
        try { // the layers live on in awq_model
            ConvertFiles.deleteTree(job.file("awq_layers"));
        } catch (IOException e) {
            System.err.println("convert: could not remove " + job.file("awq_layers") + ": " + e.getMessage());
        }
        return out;
    }

    private static void writeLayer(JobDir job, int i, LlamaModel.Layer scaled, Path where) {
        String p = LlamaModel.prefix(i);
        ConvertFiles.writeLayerFile(job.file("awq_layers"), i, w -> {
            ConvertFiles.half(w, p + "input_layernorm.weight", scaled.inputNorm(), where);
            ConvertFiles.half(w, p + "post_attention_layernorm.weight", scaled.postNorm(), where);
            for (String l : LlamaModel.Layer.LINEARS) {
                ConvertFiles.half(w, p + l + ".weight", scaled.linear(l), where);
                if (scaled.bias(l) != null) ConvertFiles.half(w, p + l + ".bias", scaled.bias(l), where);
            }
        });
    }

    /** WORK/awq_model: embedding, the scaled layers, final norm and head in fp16; config and tokenizer files. */
    private static void assemble(JobDir job, LlamaModel model, Path out) {
        Path tmp = job.file(".awq_model.tmp");
        try {
            ConvertFiles.deleteTree(tmp);
            Files.createDirectories(tmp);
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, 0); Weights layers = Weights.open(job.file("awq_layers"))) {
                ConvertFiles.half(w, model, "model.embed_tokens.weight");
                for (var e : layers.all().entrySet()) w.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
                ConvertFiles.half(w, model, "model.norm.weight");
                if (!model.headTied()) ConvertFiles.half(w, model, "lm_head.weight");
            }
            Map<String, Object> config = Json.readObject(model.dir.resolve("config.json"));
            config.put("torch_dtype", "float16");
            config.remove("quantization_config");
            Files.writeString(tmp.resolve("config.json"), Json.write(config));
            ConvertFiles.copyNonWeightFiles(model.dir, tmp);
            ConvertFiles.deleteTree(out);
            JobDir.moveAtomically(tmp, out);
        } catch (IOException e) {
            throw new QtoolException(out + ": " + e.getMessage());
        }
    }
}
