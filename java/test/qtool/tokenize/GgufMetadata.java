package qtool.tokenize;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The key/value metadata of a GGUF file (v2/v3), for tests only: the project's GGUF reader lives elsewhere. Arrays
 * of strings come back as String[], of float32 as float[], of integers as int[]/long[], scalars boxed.
 */
final class GgufMetadata {
    private GgufMetadata() {}

    static Map<String, Object> read(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            ByteBuffer b = ch.map(FileChannel.MapMode.READ_ONLY, 0, ch.size()).order(ByteOrder.LITTLE_ENDIAN);
            if (b.getInt() != 0x46554747) throw new IOException(file + ": not GGUF");
            int version = b.getInt();
            if (version < 2) throw new IOException(file + ": GGUF v" + version);
            b.getLong(); // tensor count
            long kvCount = b.getLong();
            Map<String, Object> kv = new LinkedHashMap<>();
            for (long i = 0; i < kvCount; i++) {
                String key = string(b);
                kv.put(key, value(b, b.getInt()));
            }
            return kv;
        }
    }

    private static String string(ByteBuffer b) {
        byte[] s = new byte[(int) b.getLong()];
        b.get(s);
        return new String(s, StandardCharsets.UTF_8);
    }

    private static Object value(ByteBuffer b, int type) {
        return switch (type) {
            case 0 -> (long) (b.get() & 0xFF);
            case 1 -> (long) b.get();
            case 2 -> (long) (b.getShort() & 0xFFFF);
            case 3 -> (long) b.getShort();
            case 4 -> b.getInt() & 0xFFFFFFFFL;
            case 5 -> (long) b.getInt();
            case 6 -> b.getFloat();
            case 7 -> b.get() != 0;
            case 8 -> string(b);
            case 9 -> array(b);
            case 10, 11 -> b.getLong();
            case 12 -> b.getDouble();
            default -> throw new IllegalStateException("GGUF value type " + type);
        };
    }

    private static Object array(ByteBuffer b) {
        int type = b.getInt();
        int n = (int) b.getLong();
        switch (type) {
            case 8 -> {
                String[] a = new String[n];
                for (int i = 0; i < n; i++) a[i] = string(b);
                return a;
            }
            case 6 -> {
                float[] a = new float[n];
                for (int i = 0; i < n; i++) a[i] = b.getFloat();
                return a;
            }
            case 5 -> {
                int[] a = new int[n];
                for (int i = 0; i < n; i++) a[i] = b.getInt();
                return a;
            }
            default -> {
                List<Object> l = new ArrayList<>(n);
                for (int i = 0; i < n; i++) l.add(value(b, type));
                return l;
            }
        }
    }
}
