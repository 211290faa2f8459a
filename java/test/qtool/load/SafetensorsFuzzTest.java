package qtool.load;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.SplittableRandom;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.backend.Tensor;

/**
 * Thousands of corrupted variants of one small file: each is either refused with a QtoolException or opened, and
 * when opened every tensor byte can be read. Anything else (another exception, a fault) is a reader bug.
 */
class SafetensorsFuzzTest {
    private static final String HEADER = SafetensorsBytes.header("\"__metadata__\":{\"format\":\"pt\"}",
            SafetensorsBytes.tensor("a", "F32", "[2,3]", 0, 24), SafetensorsBytes.tensor("b", "BF16", "[4]", 24, 32),
            SafetensorsBytes.tensor("c", "I8", "[]", 32, 33), SafetensorsBytes.tensor("d", "F16", "[0,5]", 33, 33));
    private static final int DATA = 40;
    private static final String[] NASTY_NUMBERS = {"-1", "0", "1", "7", "33", "40", "41", "2147483648", "4294967296", "9223372036854775807",
            "-9223372036854775808", "9223372036854775808", "18446744073709551616", "1e400", "3.5", "-0", "1e2", "null", "\"1\"", "[]"};
    private static final String[] NASTY_DTYPES = {"f32", "", "F8_E4M3", "U64", "BOOL", "F64", "I64", "\\u0000", "F32 "};

    @Test
    void corruptedFilesAreRefusedOrReadable(@TempDir Path dir) throws Exception {
        assertEquals(4, openAndReadAll(write(dir, SafetensorsBytes.of(HEADER, DATA))), "the unmutated file opens");
        SplittableRandom rnd = new SplittableRandom(42);
        int refused = 0, opened = 0;
        for (int i = 0; i < 3000; i++) {
            byte[] bytes = mutate(rnd);
            try {
                openAndReadAll(write(dir, bytes));
                opened++;
            } catch (QtoolException expected) {
                refused++;
            } catch (Throwable t) {
                fail("mutation " + i + " (" + HexFormat.of().formatHex(bytes) + ") threw " + t, t);
            }
        }
        assertTrue(refused > 1000 && opened > 100, "both outcomes exercised: " + refused + " refused, " + opened + " opened");
    }

    private static Path write(Path dir, byte[] bytes) throws Exception {
        return Files.write(dir.resolve("fuzz.safetensors"), bytes);
    }

    /** Opens the file, checks every tensor is inside the mapping, touches every byte; returns the tensor count. */
    private static int openAndReadAll(Path file) {
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsFile f = SafetensorsFile.open(file, arena);
            MemorySegment map = f.mapping();
            for (Tensor t : f.tensors().values()) {
                MemorySegment s = t.data();
                assertTrue(s.address() >= map.address() && s.address() + s.byteSize() <= map.address() + map.byteSize());
                assertEquals(t.byteSize(), s.byteSize());
                assertEquals(s.byteSize(), s.toArray(ValueLayout.JAVA_BYTE).length); // reads every byte
            }
            return f.tensors().size();
        }
    }

    private static byte[] mutate(SplittableRandom rnd) {
        byte[] good = SafetensorsBytes.of(HEADER, DATA);
        switch (rnd.nextInt(6)) {
            case 0 -> { // random bytes anywhere, header length field included
                byte[] b = good.clone();
                for (int k = 1 + rnd.nextInt(3); k > 0; k--) b[rnd.nextInt(b.length)] = (byte) rnd.nextInt(256);
                return b;
            }
            case 1 -> { // cut short
                return Arrays.copyOf(good, rnd.nextInt(good.length));
            }
            case 2 -> { // a header length near the true one, or anything
                long len = rnd.nextBoolean() ? HEADER.length() + rnd.nextInt(-20, 60) : rnd.nextLong();
                byte[] b = good.clone();
                ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putLong(0, len);
                return b;
            }
            case 3 -> { // one number of the header replaced by an awkward value
                return SafetensorsBytes.of(replaceNth(HEADER, Pattern.compile("-?\\d+"), rnd, NASTY_NUMBERS), DATA);
            }
            case 4 -> { // one dtype replaced
                return SafetensorsBytes.of(replaceNth(HEADER, Pattern.compile("(?<=\"dtype\":\")[A-Z0-9]+"), rnd, NASTY_DTYPES), DATA);
            }
            default -> { // one character of the header deleted or duplicated, length field kept true
                StringBuilder h = new StringBuilder(HEADER);
                int at = rnd.nextInt(h.length());
                if (rnd.nextBoolean()) h.deleteCharAt(at);
                else h.insert(at, h.charAt(at));
                return SafetensorsBytes.of(h.toString(), DATA + rnd.nextInt(-8, 8));
            }
        }
    }

    private static String replaceNth(String s, Pattern p, SplittableRandom rnd, String[] choices) {
        Matcher m = p.matcher(s);
        int count = 0;
        while (m.find()) count++;
        int target = rnd.nextInt(count);
        m.reset();
        for (int i = 0; i <= target; i++) m.find();
        String replacement = choices[rnd.nextInt(choices.length)];
        return s.substring(0, m.start()) + replacement + s.substring(m.end());
    }
}
