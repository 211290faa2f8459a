package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import java.io.ByteArrayOutputStream;
import java.lang.foreign.Arena;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import qtool.load.DType;

/**
 * Zip64 as PyTorch writes it for checkpoints past 4 GiB (every Llama 7B shard): sizes and offsets saturated to
 * 0xFFFFFFFF in the headers, the real values in zip64 extra fields, and a zip64 end record. Written by hand here,
 * small, with every field in zip64 form.
 */
class Zip64Test {
    @TempDir
    Path dir;

    @Test
    void readsZip64Directory() throws Exception {
        Map<String, TorchSaveWriter.RawTensor> sd = new LinkedHashMap<>();
        sd.put("w", new TorchSaveWriter.RawTensor(DType.F32, new long[] {2, 2}, TorchZipFileTest.f32(1, 2, 3, 4)));
        byte[] pkl = new TorchSaveWriter().pickle(sd, false);
        List<String> names = List.of("z/data.pkl", "z/data/0");
        List<byte[]> datas = List.of(pkl, sd.get("w").bytes());
        ByteArrayOutputStream zip = new ByteArrayOutputStream();
        long[] offsets = new long[2];
        for (int i = 0; i < 2; i++) {
            offsets[i] = zip.size();
            byte[] name = names.get(i).getBytes(StandardCharsets.UTF_8);
            ByteBuffer h = le(30 + name.length + 20);
            h.putInt(0x04034b50).putShort((short) 45).putShort((short) 0).putShort((short) 0).putInt(0).putInt(0)
                    .putInt(-1).putInt(-1).putShort((short) name.length).putShort((short) 20).put(name)
                    .putShort((short) 1).putShort((short) 16).putLong(datas.get(i).length).putLong(datas.get(i).length);
            zip.writeBytes(h.array());
            zip.writeBytes(datas.get(i));
        }
        long cdOffset = zip.size();
        for (int i = 0; i < 2; i++) {
            byte[] name = names.get(i).getBytes(StandardCharsets.UTF_8);
            ByteBuffer c = le(46 + name.length + 28);
            c.putInt(0x02014b50).putShort((short) 45).putShort((short) 45).putShort((short) 0).putShort((short) 0).putInt(0).putInt(0)
                    .putInt(-1).putInt(-1).putShort((short) name.length).putShort((short) 28).putShort((short) 0)
                    .putShort((short) 0).putShort((short) 0).putInt(0).putInt(-1).put(name)
                    .putShort((short) 1).putShort((short) 24).putLong(datas.get(i).length).putLong(datas.get(i).length).putLong(offsets[i]);
            zip.writeBytes(c.array());
        }
        long cdSize = zip.size() - cdOffset;
        long z64 = zip.size();
        ByteBuffer e = le(56 + 20 + 22);
        e.putInt(0x06064b50).putLong(44).putShort((short) 45).putShort((short) 45).putInt(0).putInt(0).putLong(2).putLong(2).putLong(cdSize).putLong(cdOffset);
        e.putInt(0x07064b50).putInt(0).putLong(z64).putInt(1);
        e.putInt(0x06054b50).putShort((short) 0).putShort((short) 0).putShort((short) -1).putShort((short) -1).putInt(-1).putInt(-1).putShort((short) 0);
        zip.writeBytes(e.array());
        Path f = dir.resolve("z.pt");
        Files.write(f, zip.toByteArray());
        try (Arena arena = Arena.ofConfined()) {
            assertArrayEquals(new float[] {1, 2, 3, 4}, TorchZipFile.open(f, arena).tensors().get("w").toFloatArray());
        }
    }

    private static ByteBuffer le(int n) {
        return ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
    }
}
