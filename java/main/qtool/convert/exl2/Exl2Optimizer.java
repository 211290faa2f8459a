package qtool.convert.exl2;

import java.util.List;
import qtool.QtoolException;

/**
 * Picks one measured option per block (a decoder layer's attention or MLP) so that the blocks' bits fit the budget
 * {@code floor(numel × target bpw)} and the predicted error is least.
 *
 * <p><b>Objective.</b> Each option carries its block's measured error e (1 − accuracy: the mean relative Frobenius
 * error of the block output). Quantization noise of different blocks is close to independent, so its energy adds:
 * the predicted relative error of the model output is √(Σ e²), and Σ e² is minimised. (ExLlamaV2 anneals Σ eᵖ for
 * p in [1.5, 3.5]; p = 2 lies in that range and is the one the noise model gives.)
 *
 * <p><b>Method: a multiple-choice knapsack solved by dynamic programming over discretised bits.</b> Every block
 * needs at least its cheapest option's bits; what is left, R = budget − Σ min, is shared out. Costs above each
 * block's minimum are counted in units of u bits, rounded <i>up</i>; f_i[c] is the least Σ e² of blocks 0..i with
 * at most c units, f_i[c] = min_j f_{i−1}[c − ⌈x_ij / u⌉] + e_ij², and the answer is f_{n−1}[⌊R/u⌋].
 *
 * <p><b>Proof sketch.</b> (1) Feasible: a rounded-up cost is at least the true cost, so a solution whose rounded
 * cost fits ⌊R/u⌋ units has true extra cost ≤ R. (2) Near-optimal: rounding adds less than u per block, so every
 * solution of true extra cost ≤ R − n·u has rounded cost ≤ R/u and is among those the DP ranges over; the DP's
 * answer is therefore at least as good as the exact optimum of a budget n·u bits smaller, and with u = 1 it is
 * the exact optimum. u is chosen so that n·u is at most {@link #ROUNDING_BPW} bits per weight (or the table has
 * at most {@link #MAX_UNITS} columns). (3) The remaining slack (under n·u bits) is then spent greedily: while
 * some single block's change of option lowers Σ e² and fits the exact remaining budget, the best such change is
 * made; this never breaks feasibility nor raises the objective.
 *
 * <p>Cost: n × options × ⌊R/u⌋ additions, about 160 × 18 × 2¹⁶ = 2·10⁸ in the worst case (80 layers), well
 * under a second; small models get u = 1 and the exact optimum.
 */
public final class Exl2Optimizer {
    /** The most bits per weight that rounding may leave unallocated before the greedy fill. */
    static final double ROUNDING_BPW = 0.002;
    /** Columns of the DP table at most (memory: blocks × columns bytes of choices). */
    static final int MAX_UNITS = 1 << 16;

    /** One measured option of a block: its bits (weights, scales, group tables, permutation) and error. */
    public record Option(long bits, double error) {}

    /**
     * The choice per block and what it achieves. {@code predictedError} is √(Σ e²); {@code maxError} the largest
     * block error.
     */
    public record Solution(int[] choice, long bits, long budget, double bitsPerWeight, double sumSquaredError,
                           double predictedError, double maxError) {}

    private Exl2Optimizer() {}

    /** The least and most bits per weight the blocks' options can give. */
    public static double[] reachableBpw(List<List<Option>> blocks, long numel) {
        long lo = 0, hi = 0;
        for (List<Option> b : blocks) {
            lo += b.stream().mapToLong(Option::bits).min().orElseThrow();
            hi += b.stream().mapToLong(Option::bits).max().orElseThrow();
        }
        return new double[] {(double) lo / numel, (double) hi / numel};
    }

    /**
     * @param blocks    per block, its options (at least one each, at most 127)
     * @param numel     the weights the budget is counted over (ExLlamaV2: the decoder blocks' linears and norms)
     * @param targetBpw target bits per weight
     */
    public static Solution optimize(List<List<Option>> blocks, long numel, double targetBpw) {
        int n = blocks.size();
        if (n == 0) throw new QtoolException("no blocks to optimize");
        for (List<Option> b : blocks) {
            if (b.isEmpty() || b.size() > 127) throw new QtoolException("a block has " + b.size() + " options (1 to 127 allowed)");
        }
        long budget = (long) Math.floor(numel * targetBpw + 1e-6);  // as ExLlamaV2's int(numel * bits), robust to rounding
        double[] range = reachableBpw(blocks, numel);
        long minTotal = 0;
        long[] min = new long[n];
        for (int i = 0; i < n; i++) {
            min[i] = blocks.get(i).stream().mapToLong(Option::bits).min().orElseThrow();
            minTotal += min[i];
        }
        if (minTotal > budget || targetBpw > range[1] + 1e-9) {
            throw new QtoolException(String.format("target %.4f bits per weight is outside the reachable range %.4f to %.4f of this measurement",
                    targetBpw, range[0], range[1]));
        }
        long rest = budget - minTotal;
        long unit = Math.max(1, (long) Math.floor(ROUNDING_BPW * numel / n));
        unit = Math.max(unit, -Math.floorDiv(-rest, MAX_UNITS));  // ceil(rest / MAX_UNITS)
        int cap = (int) (rest / unit);

        // f[c]: least Σ e² so far within c units; choice[i][c]: option of block i on that optimum
        double[] f = new double[cap + 1], g = new double[cap + 1];  // f: zero before the first block
        byte[][] choice = new byte[n][cap + 1];
        for (int i = 0; i < n; i++) {
            List<Option> opts = blocks.get(i);
            int[] units = new int[opts.size()];
            double[] cost2 = new double[opts.size()];
            for (int j = 0; j < units.length; j++) {
                units[j] = (int) Math.min(cap + 1L, -Math.floorDiv(-(opts.get(j).bits() - min[i]), unit));
                cost2[j] = opts.get(j).error() * opts.get(j).error();
            }
            java.util.Arrays.fill(g, Double.POSITIVE_INFINITY);
            byte[] ch = choice[i];
            for (int j = 0; j < units.length; j++) {
                int w = units[j];
                double e = cost2[j];
                for (int c = w; c <= cap; c++) {
                    double v = f[c - w] + e;
                    if (v < g[c]) {
                        g[c] = v;
                        ch[c] = (byte) j;
                    }
                }
            }
            double[] t = f;
            f = g;
            g = t;
        }
        int[] pick = new int[n];
        int c = cap;
        for (int i = n - 1; i >= 0; i--) {
            pick[i] = choice[i][c];
            long x = blocks.get(i).get(pick[i]).bits() - min[i];
            c -= (int) Math.min(cap + 1L, -Math.floorDiv(-x, unit));
        }
        fill(blocks, pick, budget);
        return solution(blocks, pick, budget, numel);
    }

    /** Spends what is left of the budget: the best single-block change that fits and lowers Σ e², until none. */
    private static void fill(List<List<Option>> blocks, int[] pick, long budget) {
        long used = 0;
        for (int i = 0; i < pick.length; i++) used += blocks.get(i).get(pick[i]).bits();
        while (true) {
            int bi = -1, bj = -1;
            double best = 0;
            for (int i = 0; i < pick.length; i++) {
                Option now = blocks.get(i).get(pick[i]);
                for (int j = 0; j < blocks.get(i).size(); j++) {
                    Option o = blocks.get(i).get(j);
                    double gain = now.error() * now.error() - o.error() * o.error();
                    if (gain > best && used - now.bits() + o.bits() <= budget) {
                        best = gain;
                        bi = i;
                        bj = j;
                    }
                }
            }
            if (bi < 0) return;
            used += blocks.get(bi).get(bj).bits() - blocks.get(bi).get(pick[bi]).bits();
            pick[bi] = bj;
        }
    }

    static Solution solution(List<List<Option>> blocks, int[] pick, long budget, long numel) {
        long bits = 0;
        double sum2 = 0, max = 0;
        for (int i = 0; i < pick.length; i++) {
            Option o = blocks.get(i).get(pick[i]);
            bits += o.bits();
            sum2 += o.error() * o.error();
            max = Math.max(max, o.error());
        }
        return new Solution(pick, bits, budget, (double) bits / numel, sum2, Math.sqrt(sum2), max);
    }
}
