package qtool.convert.exl2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.convert.exl2.Exl2Optimizer.Option;
import qtool.convert.exl2.Exl2Optimizer.Solution;

class Exl2OptimizerTest {

    /** Random blocks whose error falls as bits rise, with noise (so options are not all on a convex curve). */
    private static List<List<Option>> blocks(SplittableRandom rnd, int n, int opts, long numelPerBlock) {
        List<List<Option>> blocks = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            List<Option> b = new ArrayList<>();
            double sens = 0.5 + rnd.nextDouble() * 2;
            for (int j = 0; j < opts; j++) {
                double bpw = 2 + 6 * rnd.nextDouble();
                b.add(new Option(Math.round(bpw * numelPerBlock), sens * Math.pow(2, -bpw) * (0.8 + 0.4 * rnd.nextDouble())));
            }
            blocks.add(b);
        }
        return blocks;
    }

    private static double bruteForce(List<List<Option>> blocks, long budget) {
        int n = blocks.size();
        int[] idx = new int[n];
        double best = Double.POSITIVE_INFINITY;
        while (true) {
            long bits = 0;
            double s = 0;
            for (int i = 0; i < n; i++) {
                Option o = blocks.get(i).get(idx[i]);
                bits += o.bits();
                s += o.error() * o.error();
            }
            if (bits <= budget) best = Math.min(best, s);
            int k = 0;
            while (k < n && ++idx[k] == blocks.get(k).size()) idx[k++] = 0;
            if (k == n) return best;
        }
    }

    @Test
    void exactOnSmallCasesAgainstBruteForce() {
        SplittableRandom rnd = new SplittableRandom(7);
        for (int trial = 0; trial < 200; trial++) {
            int n = 1 + rnd.nextInt(5), opts = 1 + rnd.nextInt(5);
            long numelPerBlock = 10 + rnd.nextInt(40);
            List<List<Option>> blocks = blocks(rnd, n, opts, numelPerBlock);
            long numel = numelPerBlock * n;
            double[] range = Exl2Optimizer.reachableBpw(blocks, numel);
            double target = range[0] + (range[1] - range[0]) * rnd.nextDouble();
            Solution s = Exl2Optimizer.optimize(blocks, numel, target);
            assertTrue(Math.abs(s.budget() - numel * target) <= 1, "budget " + s.budget() + " for " + numel * target);
            assertTrue(s.bits() <= s.budget(), "over budget: " + s.bits() + " > " + s.budget());
            assertEquals(bruteForce(blocks, s.budget()), s.sumSquaredError(), 1e-15, "trial " + trial);
        }
    }

    @Test
    void eightyLayersUnderASecondWithinTheTarget() {
        SplittableRandom rnd = new SplittableRandom(11);
        // 80 layers of a 70B-like model: attention 19 options, MLP 17, with ExLlamaV2-like sizes
        List<List<Option>> blocks = new ArrayList<>();
        long numel = 0;
        for (int l = 0; l < 80; l++) {
            long attn = 8192L * 8192 * 2 + 8192L * 1024 * 2, mlp = 3L * 8192 * 28672;
            blocks.addAll(blocks(rnd, 1, 19, attn));
            blocks.addAll(blocks(rnd, 1, 17, mlp));
            numel += attn + mlp;
        }
        for (double target : new double[] {3.0, 4.0, 5.0}) {
            // CPU time of this thread: the machine running the tests may be busy with other work
            var threads = java.lang.management.ManagementFactory.getThreadMXBean();
            long t0 = threads.getCurrentThreadCpuTime();
            Solution s = Exl2Optimizer.optimize(blocks, numel, target);
            double secs = (threads.getCurrentThreadCpuTime() - t0) / 1e9;
            assertTrue(secs < 1.0, "took " + secs + " s of CPU");
            assertTrue(s.bitsPerWeight() <= target && s.bitsPerWeight() > target - 0.01, "bpw " + s.bitsPerWeight() + " for " + target);
        }
    }

    @Test
    void targetOutsideTheReachableRangeStatesTheRange() {
        List<List<Option>> blocks = List.of(List.of(new Option(200, 0.1), new Option(400, 0.01)), List.of(new Option(300, 0.2), new Option(500, 0.02)));
        QtoolException low = assertThrows(QtoolException.class, () -> Exl2Optimizer.optimize(blocks, 100, 4.0));
        assertEquals("target 4.0000 bits per weight is outside the reachable range 5.0000 to 9.0000 of this measurement", low.getMessage());
        assertThrows(QtoolException.class, () -> Exl2Optimizer.optimize(blocks, 100, 9.5));
        Solution top = Exl2Optimizer.optimize(blocks, 100, 9.0);
        assertEquals(900, top.bits());
    }
}
