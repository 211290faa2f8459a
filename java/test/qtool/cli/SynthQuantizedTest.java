package qtool.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Tensor;
import qtool.convert.exl2.SyntheticStrategy;
import qtool.format.exl2.Exl2Layout;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout;
import qtool.load.ModelConfig;
import qtool.model.LlamaModel;

/**
 * {@code qtool synth --format exl2 / gptq}: random quantized checkpoints open in LlamaModel with the requested size,
 * finite dequantized weights of the intended spread, and a finite perplexity.
 */
class SynthQuantizedTest {
    private static final String[] SHAPE = {"--hidden", "256", "--layers", "4", "--heads", "4", "--kv-heads", "2",
            "--intermediate", "512", "--vocab", "512"};

    @Test
    void exl2HasTheRequestedBitsPerWeight(@TempDir Path root) throws Exception {
        for (double bpw : new double[] {3.0, 4.0, 5.5}) {
            Path dir = root.resolve("exl2-" + bpw);
            CliRun r = synth(dir, "--format", "exl2", "--bpw", Double.toString(bpw));
            assertEquals(0, r.exitCode(), r.err());
            try (LlamaModel m = LlamaModel.open(dir)) {
                assertNotNull(m.exl2);
                long bits = 0;
                for (Map.Entry<String, Tensor> e : m.weights.all().entrySet()) {
                    if (e.getKey().startsWith("model.layers.") && !e.getKey().endsWith("norm.weight")) bits += 8 * e.getValue().byteSize();
                }
                double achieved = (double) bits / decoderNumel(m.config);
                assertEquals(bpw, achieved, 0.05, "bits per weight of the decoder layers' EXL2 tensors");
                assertEquals(SyntheticStrategy.choose(m.config, false, bpw).bitsPerWeight(), achieved, 1e-12, "the files hold what the plan counts");
                // lm_head at 6 bits: ExLlamaV2's head option 0.15:8b_128g/0.85:6b_128g
                short[] groups = m.weights.get("lm_head." + Exl2Layout.Q_GROUPS).data().toArray(Tensor.F16);
                assertEquals(8, groups[0]);
                assertEquals(6, groups[groups.length - 2]);
                assertWeightsSane(m);
            }
        }
    }

    @Test
    void gptqHasTheRequestedLayout(@TempDir Path root) throws Exception {
        for (String[] flags : new String[][] {{"--bits", "4", "--group-size", "128", "--act-order"}, {"--bits", "3", "--group-size", "64"},
                {"--bits", "8", "--group-size", "-1"}, {"--bits", "2", "--group-size", "32"}}) {
            Path dir = root.resolve("gptq" + String.join("", flags));
            List<String> args = new ArrayList<>(List.of("--format", "gptq"));
            args.addAll(List.of(flags));
            CliRun r = synth(dir, args.toArray(String[]::new));
            assertEquals(0, r.exitCode(), r.err());
            int bits = Integer.parseInt(flags[1]), groupSize = Integer.parseInt(flags[3]);
            boolean actOrder = flags.length > 4;
            try (LlamaModel m = LlamaModel.open(dir)) {
                assertNotNull(m.gptq);
                GptqCheckpoint.Config c = m.gptq.config();
                assertEquals(bits, c.bits());
                assertEquals(groupSize, c.groupSize());
                assertEquals(actOrder, c.descAct());
                assertEquals(7 * m.config.numLayers(), m.gptq.quantizedLinears().size());
                String down = LlamaModel.prefix(0) + "mlp.down_proj";
                assertEquals(512L * bits / 32, m.weights.get(down + "." + GptqLayout.QWEIGHT).shape()[0]);
                int[] gIdx = m.gptq.read(down).gIdx();
                boolean sorted = true;
                for (int i = 1; i < gIdx.length; i++) sorted &= gIdx[i] >= gIdx[i - 1];
                assertEquals(!actOrder || groupSize == -1, sorted, "g_idx follows a random order with act-order only");
                assertWeightsSane(m);
            }
        }
    }

    @Test
    void perplexityIsFinite(@TempDir Path root) throws Exception {
        Path tokenizer = Shared.require("models/stories260K");
        StringBuilder text = new StringBuilder();
        for (int i = 0; i < 40; i++) text.append("the little cat sat on a warm mat and looked at the bird in the tree. ");
        Path data = root.resolve("text.txt");
        Files.writeString(data, text);
        for (String[] format : new String[][] {{"--format", "exl2", "--bpw", "4.0"}, {"--format", "gptq", "--bits", "4", "--act-order"}}) {
            Path dir = root.resolve(format[1]);
            List<String> args = new ArrayList<>(List.of(format));
            args.addAll(List.of("--tokenizer", tokenizer.toString()));
            assertEquals(0, synth(dir, args.toArray(String[]::new)).exitCode());
            CliRun ppl = CliRun.of("ppl", "-m", dir.toString(), "-d", data.toString(), "--ctx", "64", "--windows", "2", "--device", "cpu");
            assertEquals(0, ppl.exitCode(), ppl.err());
            Matcher v = Pattern.compile("ppl ([0-9.]+)").matcher(ppl.out() + ppl.err());
            assertTrue(v.find(), ppl.out() + ppl.err());
            double value = Double.parseDouble(v.group(1));
            assertTrue(Double.isFinite(value) && value > 1, format[1] + ": ppl " + value);
        }
    }

    @Test
    void refusesMismatchedOptions(@TempDir Path root) {
        String[][] cases = {
                {"--format", "exl2", "needs --bpw"}, {"--format", "exl2", "--bpw", "4", "--bits", "4", "--bits, --group-size and --act-order need --format gptq"}, {"--act-order", "need --format gptq"},
                {"--bpw", "4", "--bpw needs --format exl2"}, {"--format", "gptq", "--format gptq needs --bits"},
                {"--format", "gptq", "--bits", "5", "GPTQ bits must be 2, 3, 4 or 8"},
                {"--format", "exl2", "--bpw", "9", "outside the reachable range"},
                {"--format", "awq", "--format must be hf, exl2 or gptq"},
                {"--format", "gptq", "--bits", "4", "--dtype", "bf16", "--dtype must be f16"}};
        for (String[] c : cases) {
            CliRun r = synth(root.resolve("x"), List.of(c).subList(0, c.length - 1).toArray(String[]::new));
            assertEquals(2, r.exitCode(), r.err());
            assertTrue(r.err().contains(c[c.length - 1]), r.err());
        }
    }

    private static CliRun synth(Path dir, String... extra) {
        List<String> args = new ArrayList<>(List.of("synth", "--out", dir.toString()));
        args.addAll(List.of(SHAPE));
        args.addAll(List.of(extra));
        return CliRun.of(args.toArray(String[]::new));
    }

    /** Weights ExLlamaV2 counts the budget over: each layer's linears and its two norms. */
    private static long decoderNumel(ModelConfig c) {
        long h = c.hiddenSize(), i = c.intermediateSize();
        return (h * c.qDim() + 2 * h * c.kvDim() + c.qDim() * h + 3 * h * i + 2 * h) * c.numLayers();
    }

    /** Every dequantized linear is finite, with standard deviation within a factor of 2 of 0.5/√in. */
    private static void assertWeightsSane(LlamaModel m) {
        for (int l = 0; l < m.config.numLayers(); l++) {
            LlamaModel.Layer layer = m.layer(l);
            for (Tensor t : new Tensor[] {layer.q(), layer.k(), layer.v(), layer.o(), layer.gate(), layer.up(), layer.down()}) {
                float[] w = t.toFloatArray();
                double sum2 = 0;
                for (float v : w) {
                    assertTrue(Float.isFinite(v));
                    sum2 += (double) v * v;
                }
                double std = Math.sqrt(sum2 / w.length), expected = 0.5 / Math.sqrt(t.cols());
                assertTrue(std > expected / 2 && std < expected * 2, "layer " + l + " " + t + ": std " + std + ", expected about " + expected);
            }
        }
        float[] head = m.lmHead().toFloatArray();
        for (float v : head) assertTrue(Float.isFinite(v));
    }
}
