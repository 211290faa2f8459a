package qtool.convert.exl2;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.ModelConfig;
import qtool.model.LlamaModel;
import qtool.quantize.Exl2Params;

/**
 * EXL2 options for a random model at a target bits per weight without measuring anything ({@code qtool synth
 * --format exl2}): each block (a layer's attention or MLP) takes one row of ExLlamaV2's option grids, chosen by
 * {@link Exl2Optimizer} within the budget a conversion has (decoder parameters × bpw), with each row's error taken as
 * 2^(−its bits per weight) — how a uniform grid's relative error falls with its width — in place of a measurement.
 * Identical blocks then get the same row or its neighbours, as a real model's plan mixes them. Rows whose options a
 * shape cannot store are left out.
 *
 * @param options       per linear ({@code model.layers.i.self_attn.q_proj}, ...), its option
 * @param bitsPerWeight the blocks' bits over decoder parameters, as {@code qtool convert} reports it
 */
public record SyntheticStrategy(Map<String, Exl2Params> options, double bitsPerWeight) {

    /** @param qkvBias whether q/k/v carry biases (ExLlamaV2 counts 16 bits per bias value) */
    public static SyntheticStrategy choose(ModelConfig cfg, boolean qkvBias, double targetBpw) {
        List<List<Map<String, Exl2Params>>> rows = List.of(
                storableRows(cfg, Exl2Params.ATTENTION_OPTIONS, Measurement.ATTENTION),
                storableRows(cfg, Exl2Params.MLP_OPTIONS, Measurement.MLP));
        List<List<Exl2Optimizer.Option>> costs = new ArrayList<>();
        for (List<Map<String, Exl2Params>> kind : rows) {
            List<Exl2Optimizer.Option> options = new ArrayList<>();
            for (Map<String, Exl2Params> row : kind) {
                long bits = 0, numel = 0;
                for (var e : row.entrySet()) {
                    int[] shape = Measurement.linearShape(cfg, e.getKey());
                    boolean bias = qkvBias && List.of("q_proj", "k_proj", "v_proj").contains(e.getKey());
                    bits += e.getValue().totalBits(shape[1], Exl2Params.paddedColumns(shape[0]), bias);
                    numel += (long) shape[0] * shape[1];
                }
                options.add(new Exl2Optimizer.Option(bits, Math.pow(2, -(double) bits / numel)));
            }
            costs.add(options);
        }
        List<List<Exl2Optimizer.Option>> blocks = new ArrayList<>();
        for (int i = 0; i < cfg.numLayers(); i++) {
            blocks.add(costs.get(0));
            blocks.add(costs.get(1));
        }
        Exl2Optimizer.Solution sol = Exl2Optimizer.optimize(blocks, Exl2Converter.decoderNumel(cfg), targetBpw);
        Map<String, Exl2Params> options = new LinkedHashMap<>();
        for (int b = 0; b < blocks.size(); b++) {
            String layer = LlamaModel.prefix(b / 2);
            rows.get(b % 2).get(sol.choice()[b]).forEach((l, p) -> options.put(layer + Measurement.hfLinear(l), p));
        }
        return new SyntheticStrategy(options, sol.bitsPerWeight());
    }

    /**
     * config.json's {@code quantization_config} of such a model: what {@link Exl2Compiler} writes, without a
     * calibration (none was used).
     */
    public static Map<String, Object> quantizationConfig(double bits, int headBits) {
        Map<String, Object> qc = new LinkedHashMap<>();
        qc.put("quant_method", "exl2");
        qc.put("version", Exl2Compiler.EXLLAMAV2_VERSION);
        qc.put("bits", bits);
        qc.put("head_bits", headBits);
        return qc;
    }

    /** The grid's rows, by short linear name, whose every option stores this model's shapes. */
    private static List<Map<String, Exl2Params>> storableRows(ModelConfig cfg, List<List<Exl2Params>> grid, List<String> names) {
        List<Map<String, Exl2Params>> rows = new ArrayList<>();
        for (List<Exl2Params> row : grid) {
            Map<String, Exl2Params> m = new LinkedHashMap<>();
            try {
                for (int k = 0; k < names.size(); k++) {
                    int[] shape = Measurement.linearShape(cfg, names.get(k));
                    row.get(k).requireStorable(shape[1], shape[0], names.get(k));
                    m.put(names.get(k), row.get(k));
                }
            } catch (QtoolException e) {
                continue;
            }
            rows.add(m);
        }
        if (rows.isEmpty()) throw new QtoolException("no EXL2 option of ExLlamaV2's grid stores " + names + " at this model's shapes");
        return rows;
    }
}
