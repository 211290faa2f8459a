package qtool.load;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/** Safetensors files made byte by byte, so tests can make them wrong in exactly one way. */
public final class SafetensorsBytes {
    private SafetensorsBytes() {}

    /** u64 little-endian {@code headerLength}, the header text, then {@code dataBytes} bytes 0, 1, 2, ... */
    public static byte[] of(long headerLength, String header, int dataBytes) {
        byte[] json = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + json.length + dataBytes).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(headerLength).put(json);
        for (int i = 0; i < dataBytes; i++) b.put((byte) i);
        return b.array();
    }

    /** A well-formed file: the header's true length, then the data. */
    public static byte[] of(String header, int dataBytes) {
        return of(header.getBytes(StandardCharsets.UTF_8).length, header, dataBytes);
    }

    public static Path write(Path file, byte[] bytes) {
        try {
            Files.createDirectories(file.getParent());
            return Files.write(file, bytes);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** One header entry, e.g. {@code tensor("w", "F32", "[2,2]", 0, 16)}. */
    public static String tensor(String name, String dtype, String shape, long begin, long end) {
        return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + begin + "," + end + "]}";
    }

    /** A header object of these entries. */
    public static String header(String... entries) {
        return "{" + String.join(",", entries) + "}";
    }
}
