package qtool.convert.exl2;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import qtool.QtoolException;
import qtool.convert.ConvertFiles;
import qtool.convert.JobDir;
import qtool.load.Json;
import qtool.load.SafetensorsFile;
import qtool.model.LlamaModel;
import qtool.write.SafetensorsWriter;

/**
 * The finished EXL2 model (ExLlamaV2's compile.py): the embedding and norms in fp16, each block's packed linears
 * from WORK/out_tensor, lm_head packed, in module order, in shards of at most {@code -ss} MB (2²⁰ bytes; 0 = one
 * file); config.json with {@code quantization_config = {quant_method: exl2, version, bits, head_bits, calibration:
 * {rows, length, dataset}}}; and every other input file that is not weights (tokenizer, generation config, ...).
 * Written to WORK/.out.tmp and renamed to WORK/out; {@code -cf DIR} gets a copy.
 */
final class Exl2Compiler {
    /** The ExLlamaV2 release whose format and schema this writes (quantization_config.version). */
    static final String EXLLAMAV2_VERSION = "0.3.2";

    private Exl2Compiler() {}

    static Path compile(Exl2Job job, LlamaModel model) {
        Exl2Job.Settings s = job.settings();
        Path out = job.file("out"), tmp = job.file(".out.tmp");
        long shardBytes = s.shardMb() <= 0 ? 0 : (long) (s.shardMb() * 1024 * 1024);
        try {
            ConvertFiles.deleteTree(tmp);
            Files.createDirectories(tmp);
            try (SafetensorsWriter w = new SafetensorsWriter(tmp, shardBytes); Arena arena = Arena.ofConfined()) {
                ConvertFiles.half(w, model, "model.embed_tokens.weight");
                for (int i = 0; i < model.config.numLayers(); i++) {
                    String p = LlamaModel.prefix(i);
                    ConvertFiles.half(w, model, p + "input_layernorm.weight");
                    copy(w, Exl2Quantization.file(job.dir(), Measurement.attentionKey(i)), arena);
                    ConvertFiles.half(w, model, p + "post_attention_layernorm.weight");
                    copy(w, Exl2Quantization.file(job.dir(), Measurement.mlpKey(i)), arena);
                }
                ConvertFiles.half(w, model, "model.norm.weight");
                copy(w, Exl2Quantization.file(job.dir(), "lm_head"), arena);
            }
            Map<String, Object> config = Json.readObject(model.dir.resolve("config.json"));
            config.put("torch_dtype", "float16");
            Map<String, Object> cal = new LinkedHashMap<>();
            cal.put("rows", s.rows());
            cal.put("length", s.length());
            cal.put("dataset", s.calibration() == null ? "(default)" : s.calibration().getFileName().toString());
            Map<String, Object> qc = new LinkedHashMap<>();
            qc.put("quant_method", "exl2");
            qc.put("version", EXLLAMAV2_VERSION);
            qc.put("bits", s.bits());
            qc.put("head_bits", s.headBits());
            qc.put("calibration", cal);
            config.put("quantization_config", qc);
            Json.writeFile(tmp.resolve("config.json"), config);
            ConvertFiles.copyNonWeightFiles(model.dir, tmp);
            ConvertFiles.deleteTree(out);
            JobDir.moveAtomically(tmp, out);
            if (s.compileFull() != null) ConvertFiles.compileFull(out, s.compileFull());
        } catch (IOException e) {
            throw new QtoolException(out + ": " + e.getMessage());
        }
        return s.compileFull() != null ? s.compileFull() : out;
    }

    private static void copy(SafetensorsWriter w, Path file, Arena arena) {
        for (var e : SafetensorsFile.open(file, arena).tensors().entrySet()) {
            w.add(e.getKey(), e.getValue().dtype(), e.getValue().shape(), e.getValue().data());
        }
    }
}
