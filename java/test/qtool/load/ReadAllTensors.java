package qtool.load;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryPoolMXBean;
import java.lang.management.MemoryType;
import java.nio.file.Path;
import qtool.backend.Tensor;

/**
 * Reads every byte of every tensor of a model directory and prints "tensors N bytes B checksum C peak-heap H".
 * {@link LargeModelHeapTest} runs it in a child JVM with a small heap.
 */
public final class ReadAllTensors {
    private ReadAllTensors() {}

    public static void main(String[] args) {
        try (Weights w = Weights.open(Path.of(args[0]))) {
            long bytes = 0;
            for (Tensor t : w.all().values()) bytes += t.data().byteSize();
            long checksum = checksum(w);
            long peakHeap = 0;
            for (MemoryPoolMXBean pool : ManagementFactory.getMemoryPoolMXBeans()) {
                if (pool.getType() == MemoryType.HEAP) peakHeap += pool.getPeakUsage().getUsed();
            }
            System.out.println("tensors " + w.all().size() + " bytes " + bytes + " checksum " + checksum + " peak-heap " + peakHeap);
        }
    }

    /** A position-dependent sum over all tensor bytes, 8 at a time, so every byte counts and order matters. */
    public static long checksum(Weights w) {
        long sum = 0;
        for (Tensor t : w.all().values()) {
            MemorySegment s = t.data();
            long n = s.byteSize(), i = 0;
            for (; i + 8 <= n; i += 8) sum = sum * 31 + s.get(ValueLayout.JAVA_LONG_UNALIGNED, i);
            for (; i < n; i++) sum = sum * 31 + s.get(ValueLayout.JAVA_BYTE, i);
        }
        return sum;
    }
}
