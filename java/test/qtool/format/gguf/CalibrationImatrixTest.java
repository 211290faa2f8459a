package qtool.format.gguf;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Backend;
import qtool.backend.Backends;
import qtool.calibrate.CalibrationSet;
import qtool.cli.CliRun;
import qtool.convert.CalibrationImportance;
import qtool.load.Json;
import qtool.model.LlamaModel;
import qtool.tokenize.Tokenizer;

/** {@code gguf export --imatrix-from-calibration}: importance from qtool's own forward passes. */
class CalibrationImatrixTest {

    @TempDir
    Path dir;

    @Test
    void importanceIsTheMeanSquaredInput() throws Exception {
        Path model = Shared.require("models/stories260K");
        Path text = Shared.require("data/calibration-mix.parquet");
        try (LlamaModel m = LlamaModel.open(model); Backend b = Backends.open("cpu", System.err)) {
            Tokenizer tok = Tokenizer.load(model);
            CalibrationSet cal = CalibrationSet.fromFile(text, tok, 4, 64);
            Map<String, float[]> imp = CalibrationImportance.compute(m, b, cal, 3);
            assertEquals(m.config.numLayers() * 7, imp.size());
            float[] q = imp.get("model.layers.0.self_attn.q_proj.weight");
            assertEquals(m.config.hiddenSize(), q.length);
            // q/k/v see the same normed input; down_proj its own, wider one
            assertTrue(Arrays.equals(q, imp.get("model.layers.0.self_attn.v_proj.weight")));
            assertEquals(m.config.intermediateSize(), imp.get("model.layers.1.mlp.down_proj.weight").length);
            for (float[] v : imp.values()) {
                for (float x : v) assertTrue(Float.isFinite(x) && x >= 0);
                assertTrue(Arrays.stream(toDouble(v)).max().orElse(0) > 0);
            }
        }
    }

    private static double[] toDouble(float[] v) {
        double[] d = new double[v.length];
        for (int i = 0; i < v.length; i++) d[i] = v[i];
        return d;
    }

    @Test
    void exportWithCalibrationChangesTheBytesAndNotForTheWorse() throws Exception {
        Path model = Shared.require("models/stories260K");
        Path plain = dir.resolve("plain.gguf"), weighted = dir.resolve("weighted.gguf");
        CliRun a = CliRun.of("gguf", "export", "-i", model.toString(), "-o", plain.toString(), "-t", "q4_0", "--pure");
        assertEquals(0, a.exitCode(), a.err());
        CliRun b = CliRun.of("gguf", "export", "-i", model.toString(), "-o", weighted.toString(), "-t", "q4_0", "--pure",
                "--imatrix-from-calibration", Shared.require("data/calibration-mix.parquet").toString(), "-r", "8", "-l", "128",
                "--device", "cpu");
        assertEquals(0, b.exitCode(), b.err());
        try (GgufFile p = GgufFile.open(plain); GgufFile w = GgufFile.open(weighted)) {
            GgufTensor tp = p.tensor("blk.0.attn_q.weight"), tw = w.tensor("blk.0.attn_q.weight");
            assertEquals(GgmlType.Q4_0, tw.type());
            byte[] bp = tp.data().asSlice(0, tp.byteSize()).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
            byte[] bw = tw.data().asSlice(0, tw.byteSize()).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
            assertFalse(Arrays.equals(bp, bw), "importance changed nothing");
        }
        // what the importance buys: less importance-weighted squared error in every weighted tensor
        try (LlamaModel m = LlamaModel.open(model); Backend be = Backends.open("cpu", System.err);
             GgufFile p = GgufFile.open(plain); GgufFile w = GgufFile.open(weighted); qtool.load.Weights hf = qtool.load.Weights.open(model)) {
            Map<String, float[]> imp = CalibrationImportance.compute(m, be, CalibrationSet.fromFile(
                    Shared.require("data/calibration-mix.parquet"), Tokenizer.load(model), 8, 128), 4);
            int compared = 0;
            for (GgufTensor t : w.tensors()) {
                if (t.type() != GgmlType.Q4_0 || t.name().contains("attn_q") || t.name().contains("attn_k") || !t.name().startsWith("blk.")) continue;
                String hfName = GgufToHf.hfName(t.name());
                float[] ref = hf.get(hfName).toFloatArray(), importance = imp.get(hfName);
                double ep = weightedError(ref, GgmlCodec.dequantize(p.tensor(t.name())), importance);
                double ew = weightedError(ref, GgmlCodec.dequantize(t), importance);
                assertTrue(ew < ep, t.name() + ": weighted error " + ew + " with importance, " + ep + " without");
                compared++;
            }
            assertTrue(compared >= 6, "compared " + compared);
        }
        // ppl, for the record: on a model this small (260K parameters) the weighted grid does not lower it; on
        // SmolLM2-135M it does (see the report of the change)
        Path data = Files.writeString(dir.resolve("story.txt"), STORY.repeat(6));
        System.out.printf("stories260K Q4_0 --pure, ppl on a story: f32 %.4f, plain %.4f, with calibration importance %.4f%n",
                ppl(model, data), ppl(plain, data), ppl(weighted, data));
    }

    @Test
    void savedImportanceIsReadBackExactlyByQtoolAndLlamaQuantize() throws Exception {
        Path model = Shared.require("models/stories260K");
        String cal = Files.writeString(dir.resolve("cal.txt"), STORY.repeat(4)).toString(); // small: quick to tokenize
        Path direct = dir.resolve("direct.gguf"), saved = dir.resolve("imp.dat");
        CliRun a = CliRun.of("gguf", "export", "-i", model.toString(), "-o", direct.toString(), "-t", "q4_k_m",
                "--imatrix-from-calibration", cal, "-r", "4", "-l", "64", "--device", "cpu", "--save-imatrix", saved.toString());
        assertEquals(0, a.exitCode(), a.err());
        Map<String, float[]> read = Imatrix.read(saved);
        assertEquals(5 * 7, read.size());
        assertTrue(read.containsKey("blk.4.ffn_down.weight"), read.keySet().toString());
        // the saved file gives the same tensors as the importance it was saved from
        Path viaFile = dir.resolve("via-file.gguf");
        CliRun b = CliRun.of("gguf", "export", "-i", model.toString(), "-o", viaFile.toString(), "-t", "q4_k_m", "--imatrix", saved.toString());
        assertEquals(0, b.exitCode(), b.err());
        HfToGgufTest.assertSameTensors(direct, viaFile);
        // and llama-quantize, given qtool's F32 file and the saved importance, writes them too
        Path f32 = dir.resolve("f32.gguf"), theirs = dir.resolve("llama-quantize.gguf");
        assertEquals(0, CliRun.of("gguf", "export", "-i", model.toString(), "-o", f32.toString(), "-t", "f32").exitCode());
        LlamaCppTools.run("llama-quantize", "--imatrix", saved.toString(), f32.toString(), theirs.toString(), "Q4_K_M");
        HfToGgufTest.assertSameTensors(theirs, direct);

        CliRun c = CliRun.of("gguf", "export", "-i", model.toString(), "-o", dir.resolve("x.gguf").toString(), "-t", "q4_0",
                "--save-imatrix", dir.resolve("x.dat").toString());
        assertEquals(2, c.exitCode());
        assertTrue(c.err().contains("--save-imatrix needs --imatrix-from-calibration"), c.err());
    }

    private static double weightedError(float[] ref, float[] got, float[] importance) {
        double e = 0;
        int n = importance.length;
        for (int i = 0; i < ref.length; i++) {
            double d = ref[i] - got[i];
            e += importance[i % n] * d * d;
        }
        return e;
    }

    private static double ppl(Path model, Path data) {
        CliRun r = CliRun.of("ppl", "-m", model.toString(), "-d", data.toString(), "--ctx", "128", "--json", "--device", "cpu");
        assertEquals(0, r.exitCode(), r.err());
        return ((Number) Json.object(Json.parse(r.out(), "ppl"), "ppl").get("ppl")).doubleValue();
    }

    private static final String STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
            + "friends. One day, she saw a big red ball under a tree. She ran to the ball and picked it up. \"Look what I found!\" she said "
            + "to her mom. Her mom smiled and said, \"That is a very nice ball, Lily. Let's share it with your friends.\" Lily nodded and "
            + "ran back to her friends. They played with the ball all day long and had lots of fun. When the sun went down, Lily went "
            + "home and told her dad about the red ball. He gave her a big hug and said he was proud of her for sharing.\n\n";
}
