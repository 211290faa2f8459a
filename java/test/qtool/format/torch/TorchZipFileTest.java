package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.ZipOutputStream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.DType;

class TorchZipFileTest {
    @TempDir
    Path dir;

    static byte[] f32(float... v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) b.putFloat(x);
        return b.array();
    }

    static byte[] f16(float... v) {
        ByteBuffer b = ByteBuffer.allocate(2 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) b.putShort(Float.floatToFloat16(x));
        return b.array();
    }

    static byte[] i64(long... v) {
        ByteBuffer b = ByteBuffer.allocate(8 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (long x : v) b.putLong(x);
        return b.array();
    }

    private Map<String, TorchSaveWriter.RawTensor> sample() {
        Map<String, TorchSaveWriter.RawTensor> m = new LinkedHashMap<>();
        m.put("layers.0.attention.wq.weight", new TorchSaveWriter.RawTensor(DType.F16, new long[] {2, 3}, f16(1, 2, 3, 4, 5, 6)));
        m.put("norm.weight", new TorchSaveWriter.RawTensor(DType.F32, new long[] {3}, f32(0.5f, -1, 7)));
        m.put("count", new TorchSaveWriter.RawTensor(DType.I64, new long[] {}, i64(1L << 40)));
        m.put("big", new TorchSaveWriter.RawTensor(DType.BF16, new long[] {300, 2, 1, 4}, new byte[300 * 8 * 2]));
        return m;
    }

    @Test
    void readsTensorsZeroCopyFromDictAndOrderedDict() throws Exception {
        for (boolean od : new boolean[] {false, true}) {
            Path f = dir.resolve("ck" + od + ".pth");
            TorchSaveWriter.save(f, sample(), od);
            try (Arena arena = Arena.ofConfined()) {
                TorchZipFile z = TorchZipFile.open(f, arena);
                Map<String, Tensor> t = z.tensors();
                assertEquals(List.of("layers.0.attention.wq.weight", "norm.weight", "count", "big"), List.copyOf(t.keySet()));
                Tensor q = t.get("layers.0.attention.wq.weight");
                assertEquals(DType.F16, q.dtype());
                assertArrayEquals(new long[] {2, 3}, q.shape());
                assertArrayEquals(new float[] {1, 2, 3, 4, 5, 6}, q.toFloatArray());
                assertArrayEquals(new float[] {0.5f, -1, 7}, t.get("norm.weight").toFloatArray());
                assertEquals(1L << 40, t.get("count").data().get(ValueLayout.JAVA_LONG_UNALIGNED, 0));
                assertArrayEquals(new long[] {300, 2, 1, 4}, t.get("big").shape());
                // zero-copy: the tensor's bytes are the storage entry inside the mapping
                String prefix = "ck" + od + "/data/0";
                assertEquals(z.entry(prefix).address(), q.address());
            }
        }
    }

    @Test
    void refusesOtherGlobalsWithoutRunningThem() throws Exception {
        Path marker = dir.resolve("pwned");
        // cos\nsystem\n (X 'touch MARKER') tuple1 REDUCE STOP: what a malicious checkpoint contains
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        b.writeBytes(new byte[] {(byte) 0x80, 2});
        b.writeBytes("cos\nsystem\nq\u0000".getBytes(StandardCharsets.ISO_8859_1));
        byte[] cmd = ("touch " + marker).getBytes(StandardCharsets.UTF_8);
        b.write('X');
        b.writeBytes(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(cmd.length).array());
        b.writeBytes(cmd);
        b.write(0x85);
        b.write('R');
        b.write('.');
        QtoolException e = assertThrows(QtoolException.class, () -> new SafeUnpickler(b.toByteArray(), "evil.pkl", p -> p, a -> a).load());
        assertTrue(e.getMessage().contains("refuses global os.system"), e.getMessage());
        assertFalse(Files.exists(marker));

        // the same through STACK_GLOBAL (protocol 4), and inside a zip checkpoint
        byte[] stackGlobal = {(byte) 0x80, 4, (byte) 0x8c, 5, 'p', 'o', 's', 'i', 'x', (byte) 0x8c, 6, 's', 'y', 's', 't', 'e', 'm', (byte) 0x93,
                (byte) 0x8c, 2, 'l', 's', (byte) 0x85, 'R', '.'};
        Path f = dir.resolve("evil.pt");
        try (ZipOutputStream zip = new ZipOutputStream(Files.newOutputStream(f))) {
            TorchSaveWriter.stored(zip, "archive/data.pkl", stackGlobal);
        }
        try (Arena arena = Arena.ofConfined()) {
            TorchZipFile z = TorchZipFile.open(f, arena);
            QtoolException e2 = assertThrows(QtoolException.class, z::load);
            assertTrue(e2.getMessage().contains("refuses global posix.system"), e2.getMessage());
        }
        byte[] builtins = "\u0080\u0002cbuiltins\neval\n.".getBytes(StandardCharsets.ISO_8859_1);
        QtoolException e3 = assertThrows(QtoolException.class, () -> new SafeUnpickler(builtins, "x", p -> p, a -> a).load());
        assertTrue(e3.getMessage().contains("refuses global builtins.eval"), e3.getMessage());
    }

    @Test
    void unpicklesBasicValues() {
        // {'a': [1, -2, 3.5, None, True], 'b': (2**70,)} in protocol 2, as pickle.dumps writes it
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        b.writeBytes(new byte[] {(byte) 0x80, 2, '}', 'q', 0, '(', 'X', 1, 0, 0, 0, 'a', ']', 'q', 1, '(', 'K', 1, 'J', (byte) 0xfe, (byte) 0xff, (byte) 0xff, (byte) 0xff, 'G'});
        b.writeBytes(ByteBuffer.allocate(8).putDouble(3.5).array());
        b.writeBytes(new byte[] {'N', (byte) 0x88, 'e', 'X', 1, 0, 0, 0, 'b', (byte) 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, (byte) 0x85, 'u', '.'});
        Object v = new SafeUnpickler(b.toByteArray(), "x", p -> p, a -> a).load();
        Map<?, ?> m = (Map<?, ?>) v;
        assertEquals(java.util.Arrays.asList(1L, -2L, 3.5, null, true), m.get("a"));
        assertEquals(List.of(java.math.BigInteger.ONE.shiftLeft(70)), m.get("b"));
    }

    @Test
    void truncatedOrDamagedFilesGiveClearErrors() throws Exception {
        Path f = dir.resolve("ok.pth");
        TorchSaveWriter.save(f, sample(), true);
        byte[] all = Files.readAllBytes(f);

        Path cut = dir.resolve("cut.pth");
        Files.write(cut, java.util.Arrays.copyOf(all, all.length / 2));
        try (Arena arena = Arena.ofConfined()) {
            QtoolException e = assertThrows(QtoolException.class, () -> TorchZipFile.open(cut, arena));
            assertTrue(e.getMessage().contains("truncated"), e.getMessage());
        }

        // an entry whose recorded size runs past the data: enlarge the size of data/3 in the central directory
        byte[] bad = all.clone();
        byte[] name = "ok/data/3".getBytes(StandardCharsets.UTF_8);
        int cd = indexOfCentral(bad, name);
        ByteBuffer bb = ByteBuffer.wrap(bad).order(ByteOrder.LITTLE_ENDIAN);
        bb.putInt(cd + 20, 1 << 30);
        bb.putInt(cd + 24, 1 << 30);
        Path big = dir.resolve("big.pth");
        Files.write(big, bad);
        try (Arena arena = Arena.ofConfined()) {
            QtoolException e = assertThrows(QtoolException.class, () -> TorchZipFile.open(big, arena));
            assertTrue(e.getMessage().contains("ok/data/3 is truncated"), e.getMessage());
        }

        // a truncated pickle
        Path shortPkl = dir.resolve("short.pt");
        byte[] pkl = new TorchSaveWriter().pickle(sample(), false);
        try (ZipOutputStream zip = new ZipOutputStream(Files.newOutputStream(shortPkl))) {
            TorchSaveWriter.stored(zip, "short/data.pkl", java.util.Arrays.copyOf(pkl, pkl.length - 10));
        }
        try (Arena arena = Arena.ofConfined()) {
            QtoolException e = assertThrows(QtoolException.class, () -> TorchZipFile.open(shortPkl, arena).load());
            assertTrue(e.getMessage().contains("truncated pickle") || e.getMessage().contains("storage"), e.getMessage());
        }

        Path legacy = dir.resolve("legacy.pt");
        Files.write(legacy, new byte[] {(byte) 0x80, 2, (byte) 0x8a, 10});
        try (Arena arena = Arena.ofConfined()) {
            QtoolException e = assertThrows(QtoolException.class, () -> TorchZipFile.open(legacy, arena));
            assertTrue(e.getMessage().contains("legacy"), e.getMessage());
        }
    }

    private static int indexOfCentral(byte[] all, byte[] name) {
        outer:
        for (int i = 0; i + 46 + name.length <= all.length; i++) {
            if (all[i] != 0x50 || all[i + 1] != 0x4b || all[i + 2] != 1 || all[i + 3] != 2) continue;
            for (int j = 0; j < name.length; j++) if (all[i + 46 + j] != name[j]) continue outer;
            return i;
        }
        throw new AssertionError("no central entry");
    }
}
