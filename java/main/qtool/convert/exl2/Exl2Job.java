package qtool.convert.exl2;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import qtool.QtoolException;
import qtool.convert.JobDir;
import qtool.load.Json;

/**
 * An EXL2 conversion job in its work directory ({@code -o}), resumed as ExLlamaV2's convert.py resumes: when WORK
 * holds a job.json (and {@code -nr} is not given), the job's own settings are used and the command line's are
 * ignored (with a note if they differ), so {@code qtool convert -o WORK} alone continues a job. State is kept by
 * {@link JobDir}: every file is written atomically before job.json names it.
 *
 * <p>job.json: {@code {"settings": {ExLlamaV2's job keys: in_dir, cal_dataset, bits, dataset_rows,
 * measurement_rows, length, measurement_length, head_bits, shard_size, compile_full, rope_scale, rope_alpha,
 * output_measurement, reuse_measurement; and qtool's seed, batch, measurement_error, awq_scale}, "progress": {"stage": measure | optimize |
 * quantize | compile | finished, ...}}}. The stages' own keys are documented where they are written
 * ({@link Exl2Converter}).
 */
public record Exl2Job(Settings settings, JobDir dir) {

    /**
     * @param shardMb            output shard size in MB (2²⁰ bytes, as ExLlamaV2), 0 = one file
     * @param outputMeasurement  {@code -om}: write the measurement here and stop
     * @param reuseMeasurement   {@code -m}: measurement.json to use instead of measuring
     * @param seed               seed of the calibration set generated when there is no {@code -c}
     * @param batch              calibration rows per forward pass
     * @param measurementError   how a block's error is measured: "token" (each token RMS-normalised, as the next block
     *                           reads it) or "output" (ExLlamaV2's rule); jobs from before the setting existed read "output"
     * @param awqScale           AWQ's scale search and folding first ({@code --awq-scale}; the passes then read WORK/awq_model)
     */
    public record Settings(Path input, Path calibration, double bits, int rows, int measurementRows, int length, int measurementLength,
                           int headBits, double shardMb, Path compileFull, Double ropeScale, Double ropeAlpha, Path outputMeasurement,
                           Path reuseMeasurement, long seed, int batch, String measurementError,
                           boolean awqScale) {

        Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("format", "exl2");
            m.put("in_dir", str(input));
            m.put("cal_dataset", str(calibration));
            m.put("bits", bits);
            m.put("dataset_rows", rows);
            m.put("measurement_rows", measurementRows);
            m.put("length", length);
            m.put("measurement_length", measurementLength);
            m.put("head_bits", headBits);
            m.put("shard_size", shardMb);
            m.put("compile_full", str(compileFull));
            m.put("rope_scale", ropeScale);
            m.put("rope_alpha", ropeAlpha);
            m.put("output_measurement", str(outputMeasurement));
            m.put("reuse_measurement", str(reuseMeasurement));
            m.put("seed", seed);
            m.put("batch", batch);
            m.put("measurement_error", measurementError);
            m.put("awq_scale", awqScale);
            return m;
        }

        static Settings fromJson(Map<String, Object> m, String where) {
            try {
                if (!"exl2".equals(m.get("format"))) throw new QtoolException(where + ": not an EXL2 job (format " + m.get("format") + ")");
                return new Settings(path(m.get("in_dir")), path(m.get("cal_dataset")), num(m, "bits").doubleValue(),
                        num(m, "dataset_rows").intValue(), num(m, "measurement_rows").intValue(), num(m, "length").intValue(),
                        num(m, "measurement_length").intValue(), num(m, "head_bits").intValue(), num(m, "shard_size").doubleValue(),
                        path(m.get("compile_full")), optional(m, "rope_scale"), optional(m, "rope_alpha"), path(m.get("output_measurement")),
                        path(m.get("reuse_measurement")), num(m, "seed").longValue(), num(m, "batch").intValue(),
                        m.get("measurement_error") == null ? "output" : (String) m.get("measurement_error"),
                        Boolean.TRUE.equals(m.get("awq_scale")));
            } catch (ClassCastException e) {
                throw new QtoolException(where + ": corrupted job state (a setting has the wrong type); use -nr to start over");
            }
        }

        private static Number num(Map<String, Object> m, String key) {
            if (m.get(key) instanceof Number n) return n;
            throw new QtoolException("\"" + key + "\" missing or not a number");
        }

        private static Double optional(Map<String, Object> m, String key) {
            return m.get(key) == null ? null : num(m, key).doubleValue();
        }

        private static String str(Path p) {
            return p == null ? null : p.toAbsolutePath().normalize().toString();
        }

        private static Path path(Object o) {
            return o == null ? null : Path.of((String) o);
        }
    }

    /**
     * Opens WORK: a new job with {@code given} (which must name an input), or, when WORK holds a job and
     * {@code noResume} is false, that job with its stored settings.
     */
    public static Exl2Job open(Path work, Settings given, boolean noResume) {
        Path jobFile = work.resolve(JobDir.JOB);
        if (!noResume && Files.isRegularFile(jobFile)) {
            Map<String, Object> stored;
            try {
                stored = Json.object(Json.readObject(jobFile).get("settings"), jobFile + ": settings");
            } catch (QtoolException e) {
                throw new QtoolException(jobFile + ": corrupted job state (" + e.getMessage() + "); use -nr to start over");
            }
            Settings s;
            try {
                s = Settings.fromJson(stored, jobFile.toString());
            } catch (QtoolException e) {
                throw e.getMessage().startsWith(jobFile.toString()) ? e
                        : new QtoolException(jobFile + ": corrupted job state (" + e.getMessage() + "); use -nr to start over");
            }
            List<String> overridden = differences(given, s);
            if (!overridden.isEmpty()) {
                System.err.println("convert: resuming the job in " + work + " with its own settings (ignoring " + String.join(", ", overridden) + ")");
            }
            return new Exl2Job(s, JobDir.open(work, s.toJson(), false));
        }
        if (given.input() == null) throw new QtoolException("-i is required (no job to resume in " + work + ")");
        return new Exl2Job(given, JobDir.open(work, given.toJson(), noResume));
    }

    /** Settings the command line gave that differ from the stored job's (the input only when given). */
    private static List<String> differences(Settings given, Settings stored) {
        List<String> out = new ArrayList<>();
        if (given == null) return out;
        Map<String, Object> a = given.toJson(), b = stored.toJson();
        for (String k : a.keySet()) {
            if (k.equals("in_dir") && given.input() == null) continue;
            if (!Objects.equals(Json.write(a.get(k)), Json.write(b.get(k)))) out.add(k);
        }
        return out;
    }

    public Map<String, Object> progress() {
        return dir.progress();
    }

    public String stage() {
        return progress().get("stage") instanceof String s ? s : "measure";
    }

    public void stage(String stage) {
        dir.commit("stage", stage);
    }

    public Path file(String name) {
        return dir.file(name);
    }
}
