package qtool.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.backend.CpuBackend;
import qtool.backend.Tensor;
import qtool.cli.CliRun;
import qtool.load.DType;

/**
 * The decoding step that CUDA graphs capture ({@link Forward#decodeStep}: token and position read from a tensor) gives
 * the logits of the op-by-op forward, step after step; {@link Forward#fit} keeps as many layers resident as a memory cap
 * allows; generation with layers streamed (--offload) gives the tokens of the resident run.
 */
class DecodeStepTest {

    private static Path synth(Path dir) {
        Path m = dir.resolve("m");
        CliRun r = CliRun.of("synth", "--out", m.toString(), "--hidden", "64", "--layers", "3", "--heads", "4", "--kv-heads", "2",
                "--intermediate", "96", "--vocab", "300", "--seed", "3");
        assertEquals(0, r.exitCode(), r.err());
        return m;
    }

    @Test
    void decodeStepEqualsTheOpByOpForward(@TempDir Path dir) {
        int[] prompt = {5, 17, 42, 7}, next = {99, 3, 250, 11, 64};
        int maxSeq = prompt.length + next.length;
        try (LlamaModel m = LlamaModel.open(synth(dir)); CpuBackend cpu = new CpuBackend();
             Forward reference = new Forward(m, cpu, DType.F32, 1, maxSeq, false, true, 1, 1);
             Forward stepped = new Forward(m, cpu, DType.F32, 1, maxSeq, false, true, 1, 1)) {
            reference.forward(prompt, 1, prompt.length, 0);
            stepped.forward(prompt, 1, prompt.length, 0);
            Tensor step = cpu.allocate(DType.I32, 2, 1);
            for (int i = 0; i < next.length; i++) {
                int pos = prompt.length + i;
                reference.forward(new int[] {next[i]}, 1, 1, pos);
                float[] want = reference.logits(0);
                cpu.copyFromHost(MemorySegment.ofArray(new int[] {next[i], pos}), step);
                stepped.decodeStep(step);
                float[] got = stepped.stepLogits();
                for (int j = 0; j < want.length; j++) assertEquals(want[j], got[j], 1e-4f * (1 + Math.abs(want[j])), "step " + i + " logit " + j);
            }
            cpu.free(step);
        }
    }

    @Test
    void fitKeepsWhatTheCapAllows(@TempDir Path dir) {
        try (LlamaModel m = LlamaModel.open(synth(dir))) {
            long big = 1L << 40;
            assertEquals(3, Forward.fit(m, DType.F16, false, 1, 64, big).residentLayers());
            // from the least memory that runs at all upwards: every count of resident layers in turn, never fewer
            java.util.Set<Integer> seen = new java.util.TreeSet<>();
            int last = -1;
            for (long cap = 512L << 20; cap < (512L << 20) + (4 << 20); cap += 4096) {
                int n;
                try {
                    n = Forward.fit(m, DType.F16, false, 1, 64, cap).residentLayers();
                } catch (QtoolException tooSmall) {
                    continue;
                }
                assertTrue(n >= last, "more memory, fewer layers at " + cap);
                last = n;
                seen.add(n);
            }
            assertEquals(java.util.List.of(0, 1, 2, 3), java.util.List.copyOf(seen));
            assertThrows(QtoolException.class, () -> Forward.fit(m, DType.F16, false, 1, 64, 1 << 20));
        }
    }

    @Test
    void streamingLaterLayersChangesNothing(@TempDir Path dir) {
        int[] tokens = {5, 17, 42, 7, 99, 3};
        try (LlamaModel m = LlamaModel.open(synth(dir)); CpuBackend cpu = new CpuBackend();
             Forward resident = new Forward(m, cpu, DType.F32, 1, tokens.length, Forward.Placement.RESIDENT, true, 1, 1);
             Forward offloaded = new Forward(m, cpu, DType.F32, 1, tokens.length, new Forward.Placement(1, false), true, 1, 1)) {
            assertTrue(resident.allResident());
            assertTrue(!offloaded.allResident());
            resident.forward(tokens, 1, tokens.length, 0);
            offloaded.forward(tokens, 1, tokens.length, 0);
            assertArrayEquals(resident.logits(tokens.length - 1), offloaded.logits(tokens.length - 1));
        }
    }
}
