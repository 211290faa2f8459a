package qtool.write;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import qtool.QtoolException;
import qtool.load.DType;
import qtool.load.Json;
import qtool.load.Weights;

/**
 * Streams tensors into safetensors shards: each tensor's bytes go straight to their place in the output file, so
 * the model is never held in memory. A shard's header lists every tensor in it, which is only known once the shard
 * is full, so the writer leaves {@link #HEADER_RESERVE} bytes in front of the data and fills them at the end with the
 * header, padded with spaces (the format allows trailing whitespace in the header). A header that outgrows the
 * reserve (thousands of tensors in one shard) is handled by rewriting that shard once.
 * With {@code shardBytes > 0} a new shard starts when the next tensor would pass that size; files are named
 * {@code model.safetensors} when there is one shard, else {@code model-0000i-of-0000n.safetensors} plus
 * {@code model.safetensors.index.json}, as transformers writes them. Until {@link #close} every file has a
 * temporary name, so an interrupted write never looks finished.
 */
public final class SafetensorsWriter implements AutoCloseable {
    static final int HEADER_RESERVE = 128 * 1024;

    private record Entry(String name, DType dtype, long[] shape, long begin, long end) {}

    private final Path dir;
    private final long shardBytes;
    private final Map<String, String> metadata;
    private final List<Path> finishedShards = new ArrayList<>();
    private final List<List<String>> shardTensorNames = new ArrayList<>();
    private final java.util.Set<String> names = new java.util.HashSet<>();
    private List<Entry> entries = new ArrayList<>();
    private Path shardTmp;
    private FileChannel shard;
    private long dataSize;
    private long totalSize;
    private boolean closed;

    public SafetensorsWriter(Path dir, long shardBytes) {
        this(dir, shardBytes, Map.of());
    }

    public SafetensorsWriter(Path dir, long shardBytes, Map<String, String> extraMetadata) {
        this.dir = dir;
        this.shardBytes = shardBytes;
        this.metadata = new LinkedHashMap<>();
        this.metadata.put("format", "pt");
        this.metadata.putAll(extraMetadata);
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot create directory: " + e.getMessage());
        }
    }

    private static final long WRITE_SLICE = 8L << 20;

    /** Appends one tensor; {@code bytes} must hold exactly shape × dtype bytes. */
    public void add(String name, DType dtype, long[] shape, MemorySegment bytes) {
        long n = dtype.bytes;
        for (long d : shape) n *= d;
        if (n != bytes.byteSize()) {
            throw new IllegalArgumentException(name + ": " + bytes.byteSize() + " bytes for shape " + java.util.Arrays.toString(shape) + " " + dtype);
        }
        if (!names.add(name)) throw new IllegalArgumentException("tensor written twice: " + name);
        try {
            if (shard != null && shardBytes > 0 && dataSize > 0 && dataSize + n > shardBytes) finishShard();
            if (shard == null) openShard();
            long pos = HEADER_RESERVE + 8 + dataSize;
            // In slices: the JDK copies a heap buffer through a temporary direct buffer of its whole size and keeps
            // it cached per thread (native memory that stays), and one ByteBuffer holds at most 2 GiB.
            for (long off = 0; off < n; off += WRITE_SLICE) {
                ByteBuffer buf = bytes.asSlice(off, Math.min(WRITE_SLICE, n - off)).asByteBuffer();
                while (buf.hasRemaining()) pos += shard.write(buf, pos);
            }
            entries.add(new Entry(name, dtype, shape.clone(), dataSize, dataSize + n));
            dataSize += n;
            totalSize += n;
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot write: " + e.getMessage());
        }
    }

    private void openShard() throws IOException {
        shardTmp = dir.resolve(".shard-" + finishedShards.size() + ".safetensors.tmp");
        shard = FileChannel.open(shardTmp, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING,
                StandardOpenOption.READ, StandardOpenOption.WRITE);
    }

    private void finishShard() throws IOException {
        Map<String, Object> header = new LinkedHashMap<>();
        header.put("__metadata__", metadata);
        List<String> shardNames = new ArrayList<>();
        for (Entry e : entries) {
            Map<String, Object> info = new LinkedHashMap<>();
            info.put("dtype", e.dtype.safetensorsName());
            info.put("shape", e.shape);
            info.put("data_offsets", new long[] {e.begin, e.end});
            header.put(e.name, info);
            shardNames.add(e.name);
        }
        byte[] json = Json.write(header).getBytes(StandardCharsets.UTF_8);
        if (json.length <= HEADER_RESERVE) {
            shard.write(headerBlock(json, HEADER_RESERVE), 0);
            shard.force(true);
            shard.close();
        } else { // rare: move the data behind a larger header
            Path bigger = dir.resolve(shardTmp.getFileName() + ".2");
            int len = (json.length + 7) & ~7;
            try (FileChannel out = FileChannel.open(bigger, StandardOpenOption.CREATE, StandardOpenOption.TRUNCATE_EXISTING, StandardOpenOption.WRITE)) {
                ByteBuffer head = headerBlock(json, len);
                while (head.hasRemaining()) out.write(head);
                long pos = 0;
                while (pos < dataSize) pos += shard.transferTo(8 + HEADER_RESERVE + pos, dataSize - pos, out);
                out.force(true);
            }
            shard.close();
            Files.move(bigger, shardTmp, StandardCopyOption.REPLACE_EXISTING);
        }
        shard = null;
        finishedShards.add(shardTmp);
        shardTensorNames.add(shardNames);
        entries = new ArrayList<>();
        dataSize = 0;
    }

    /** u64 length + JSON padded with spaces to {@code len} bytes (a multiple of 8 keeps the data aligned). */
    private static ByteBuffer headerBlock(byte[] json, int len) {
        ByteBuffer head = ByteBuffer.allocate(8 + len).order(ByteOrder.LITTLE_ENDIAN);
        head.putLong(len).put(json);
        while (head.hasRemaining()) head.put((byte) ' ');
        return head.flip();
    }

    /** Writes the last shard, names the shards and writes the index when there is more than one. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        try {
            if (shard == null && finishedShards.isEmpty()) openShard(); // no tensor at all: still a valid file
            if (shard != null) finishShard();
            int n = finishedShards.size();
            if (n == 1) {
                Files.move(finishedShards.get(0), dir.resolve("model.safetensors"), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                return;
            }
            Map<String, Object> weightMap = new LinkedHashMap<>();
            for (int i = 0; i < n; i++) {
                String fileName = String.format("model-%05d-of-%05d.safetensors", i + 1, n);
                Files.move(finishedShards.get(i), dir.resolve(fileName), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                for (String t : shardTensorNames.get(i)) weightMap.put(t, fileName);
            }
            Map<String, Object> index = new LinkedHashMap<>();
            index.put("metadata", Map.of("total_size", totalSize));
            index.put("weight_map", weightMap);
            Json.writeFile(dir.resolve(Weights.INDEX), index);
        } catch (IOException e) {
            throw new QtoolException(dir + ": cannot write: " + e.getMessage());
        }
    }

    /** Deletes what an unfinished writer left behind (on errors). */
    public void abandon() {
        closed = true;
        try {
            if (shard != null) shard.close();
            if (shardTmp != null) Files.deleteIfExists(shardTmp);
            for (Path p : finishedShards) Files.deleteIfExists(p);
        } catch (IOException ignored) {
            // best effort: the caller is already reporting the original error
        }
    }
}
