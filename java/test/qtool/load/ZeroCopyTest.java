package qtool.load;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.Shared;
import qtool.backend.Tensor;
import qtool.write.SafetensorsWriter;

/** Tensors are slices of the file's mapping, at the offsets the header gives: nothing is copied onto the heap. */
class ZeroCopyTest {

    @Test
    void stories260kTensorsAreSlicesOfTheMapping() throws Exception {
        assertSlicesOfMapping(Shared.require("models/stories260K/model.safetensors"), 47);
    }

    @Test
    void writtenFileTensorsAreSlicesOfTheMapping(@TempDir Path dir) throws Exception {
        writeSample(dir, 0);
        assertSlicesOfMapping(dir.resolve("model.safetensors"), 3);
    }

    /** Each tensor of a sharded model lies in the mapping of the shard that the index names for it. */
    @Test
    void shardedTensorsLieInTheirShardsMapping(@TempDir Path dir) throws Exception {
        writeSample(dir, 100);
        Map<String, Object> weightMap = Json.object(Json.readObject(dir.resolve(Weights.INDEX)).get("weight_map"), "weight_map");
        try (Weights w = Weights.open(dir)) {
            assertEquals(3, w.files().size());
            for (var e : w.all().entrySet()) {
                MemorySegment data = e.getValue().data();
                List<SafetensorsFile> holders = w.files().stream().filter(f -> inside(data, f.mapping())).toList();
                assertEquals(1, holders.size(), e.getKey());
                assertEquals(weightMap.get(e.getKey()), holders.get(0).path().getFileName().toString(), e.getKey());
            }
        }
        for (Path shard : Weights.shardFiles(dir)) assertSlicesOfMapping(shard, 1);
    }

    /** A write to the file after opening shows through the tensor: the tensor is the file's pages, not a copy. */
    @Test
    void tensorSeesLaterWritesToTheFile(@TempDir Path dir) throws Exception {
        writeSample(dir, 0);
        Path file = dir.resolve("model.safetensors");
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsFile f = SafetensorsFile.open(file, arena);
            Tensor t = f.tensors().get("b");
            long offset = t.data().address() - f.mapping().address();
            assertEquals(1.5f, t.getFloat(2));
            try (FileChannel ch = FileChannel.open(file, StandardOpenOption.WRITE)) {
                ByteBuffer v = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putFloat(0, -7.25f);
                ch.write(v, offset + 8);
            }
            assertEquals(-7.25f, t.getFloat(2));
        }
    }

    /** Three F32 tensors "a" [10], "b" [4, 8] (b[i] = i * 0.75), "c" [100]; shards of {@code shardBytes} (0: one file). */
    private static void writeSample(Path dir, long shardBytes) {
        try (Arena arena = Arena.ofConfined(); SafetensorsWriter w = new SafetensorsWriter(dir, shardBytes)) {
            w.add("a", DType.F32, new long[] {10}, floats(arena, 10, 1f));
            w.add("b", DType.F32, new long[] {4, 8}, floats(arena, 32, 0.75f));
            w.add("c", DType.F32, new long[] {100}, floats(arena, 100, -1f));
        }
    }

    private static MemorySegment floats(Arena arena, int n, float step) {
        MemorySegment s = arena.allocate(4L * n);
        for (int i = 0; i < n; i++) s.setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i, i * step);
        return s;
    }

    private static boolean inside(MemorySegment part, MemorySegment whole) {
        return part.address() >= whole.address() && part.address() + part.byteSize() <= whole.address() + whole.byteSize();
    }

    /**
     * Parses the header here, independently of the reader, and checks each tensor: a native mapped slice inside the
     * mapping, starting at 8 + header length + begin, with the file's bytes.
     */
    private static void assertSlicesOfMapping(Path file, int expectedTensors) throws Exception {
        byte[] raw = Files.readAllBytes(file);
        long headerLen = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        String headerText = new String(raw, 8, Math.toIntExact(headerLen), java.nio.charset.StandardCharsets.UTF_8);
        Map<String, Object> header = Json.object(Json.parse(headerText, "header"), "header");
        header.remove("__metadata__");
        assertEquals(expectedTensors, header.size());
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsFile f = SafetensorsFile.open(file, arena);
            MemorySegment map = f.mapping();
            assertTrue(map.isMapped() && map.isNative());
            assertEquals(raw.length, map.byteSize());
            assertEquals(header.keySet(), f.tensors().keySet());
            for (var e : header.entrySet()) {
                List<Object> offsets = Json.array(Json.object(e.getValue(), e.getKey()).get("data_offsets"), e.getKey());
                long begin = 8 + headerLen + (Long) offsets.get(0), end = 8 + headerLen + (Long) offsets.get(1);
                MemorySegment data = f.tensors().get(e.getKey()).data();
                assertTrue(data.isMapped() && data.heapBase().isEmpty(), e.getKey());
                assertTrue(inside(data, map), e.getKey());
                assertEquals(map.address() + begin, data.address(), e.getKey());
                assertEquals(end - begin, data.byteSize(), e.getKey());
                assertArrayEquals(Arrays.copyOfRange(raw, (int) begin, (int) end), data.toArray(ValueLayout.JAVA_BYTE), e.getKey());
            }
        }
    }
}
