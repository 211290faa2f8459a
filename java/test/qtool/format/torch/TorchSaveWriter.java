package qtool.format.torch;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipOutputStream;
import qtool.load.DType;

/**
 * Test-only stand-in for {@code torch.save(state_dict, f)}: writes the same zip layout (ARCHIVE/data.pkl,
 * ARCHIVE/byteorder, ARCHIVE/data/N stored uncompressed, ARCHIVE/version) and the same protocol-2 pickle that
 * torch.serialization._save produces: a dict (or OrderedDict with a BUILD of {@code _metadata}) whose values are
 * {@code _rebuild_tensor_v2((persistent id 'storage', type, key, 'cpu', numel), offset, size, stride, False,
 * OrderedDict())}. One storage per tensor, as state dicts of separate parameters have.
 */
public final class TorchSaveWriter {
    /** One tensor: its dtype, shape and raw little-endian bytes. */
    public record RawTensor(DType dtype, long[] shape, byte[] bytes) {}

    private final ByteArrayOutputStream pkl = new ByteArrayOutputStream();
    private int memo;

    public static void save(Path file, Map<String, RawTensor> tensors, boolean orderedDict) throws IOException {
        TorchSaveWriter w = new TorchSaveWriter();
        byte[] pickle = w.pickle(tensors, orderedDict);
        String archive = file.getFileName().toString().replaceFirst("\\.[^.]*$", "");
        try (OutputStream os = Files.newOutputStream(file); ZipOutputStream zip = new ZipOutputStream(os)) {
            stored(zip, archive + "/data.pkl", pickle);
            stored(zip, archive + "/byteorder", "little".getBytes(StandardCharsets.US_ASCII));
            int key = 0;
            for (RawTensor t : tensors.values()) stored(zip, archive + "/data/" + key++, t.bytes());
            stored(zip, archive + "/version", "3\n".getBytes(StandardCharsets.US_ASCII));
        }
    }

    static void stored(ZipOutputStream zip, String name, byte[] data) throws IOException {
        ZipEntry e = new ZipEntry(name);
        e.setMethod(ZipEntry.STORED);
        e.setSize(data.length);
        e.setCompressedSize(data.length);
        CRC32 crc = new CRC32();
        crc.update(data);
        e.setCrc(crc.getValue());
        zip.putNextEntry(e);
        zip.write(data);
        zip.closeEntry();
    }

    byte[] pickle(Map<String, RawTensor> tensors, boolean orderedDict) {
        op(0x80, 2);
        int odMemo = -1;
        if (orderedDict) {
            global("collections", "OrderedDict");
            odMemo = memo - 1;
            op(')');
            op('R');
        } else {
            op('}');
        }
        put();
        op('(');
        Map<DType, Integer> typeMemo = new LinkedHashMap<>();
        int rebuildMemo = -1, storageStrMemo = -1, cpuMemo = -1;
        int key = 0;
        for (Map.Entry<String, RawTensor> e : tensors.entrySet()) {
            RawTensor t = e.getValue();
            unicode(e.getKey());
            if (rebuildMemo < 0) {
                global("torch._utils", "_rebuild_tensor_v2");
                rebuildMemo = memo - 1;
            } else get(rebuildMemo);
            op('(');
            op('(');
            if (storageStrMemo < 0) { unicode("storage"); storageStrMemo = memo - 1; } else get(storageStrMemo);
            Integer tm = typeMemo.get(t.dtype());
            if (tm == null) {
                global("torch", storageName(t.dtype()));
                typeMemo.put(t.dtype(), memo - 1);
            } else get(tm);
            unicode(Integer.toString(key++));
            if (cpuMemo < 0) { unicode("cpu"); cpuMemo = memo - 1; } else get(cpuMemo);
            integer(t.bytes().length / t.dtype().bytes);
            op('t');
            put();
            op('Q');
            integer(0);
            long[] stride = new long[t.shape().length];
            long s = 1;
            for (int i = stride.length - 1; i >= 0; i--) { stride[i] = s; s *= t.shape()[i]; }
            tuple(t.shape());
            tuple(stride);
            op(0x89);
            if (odMemo < 0) { global("collections", "OrderedDict"); odMemo = memo - 1; } else get(odMemo);
            op(')');
            op('R');
            put();
            op('t');
            put();
            op('R');
            put();
        }
        op('u');
        if (orderedDict) { // state_dict()._metadata, set by BUILD as torch's OrderedDict.__reduce__ does
            op('}');
            put();
            unicode("_metadata");
            get(odMemo);
            op(')');
            op('R');
            put();
            op('s');
            op('b');
        }
        op('.');
        return pkl.toByteArray();
    }

    static String storageName(DType d) {
        return switch (d) {
            case F16 -> "HalfStorage";
            case BF16 -> "BFloat16Storage";
            case F32 -> "FloatStorage";
            case I32 -> "IntStorage";
            case I64 -> "LongStorage";
            default -> throw new IllegalArgumentException(d.toString());
        };
    }

    private void tuple(long[] v) {
        if (v.length == 0) { op(')'); return; }
        if (v.length > 3) op('(');
        for (long x : v) integer(x);
        op(switch (v.length) { case 1 -> 0x85; case 2 -> 0x86; case 3 -> 0x87; default -> 't'; });
        put();
    }

    private void integer(long v) {
        if (v >= 0 && v < 256) op('K', (int) v);
        else if (v >= 0 && v < 65536) { op('M'); pkl.write((int) v & 0xff); pkl.write((int) (v >> 8)); }
        else { op('J'); for (int i = 0; i < 4; i++) pkl.write((int) (v >> (8 * i)) & 0xff); }
    }

    private void unicode(String s) {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        op('X');
        for (int i = 0; i < 4; i++) pkl.write((b.length >> (8 * i)) & 0xff);
        pkl.writeBytes(b);
        put();
    }

    private void global(String module, String name) {
        op('c');
        pkl.writeBytes((module + "\n" + name + "\n").getBytes(StandardCharsets.UTF_8));
        put();
    }

    private void put() {
        if (memo < 256) op('q', memo++);
        else { op('r'); int m = memo++; for (int i = 0; i < 4; i++) pkl.write((m >> (8 * i)) & 0xff); }
    }

    private void get(int m) {
        if (m < 256) op('h', m);
        else { op('j'); for (int i = 0; i < 4; i++) pkl.write((m >> (8 * i)) & 0xff); }
    }

    private void op(int code, int... args) {
        pkl.write(code);
        for (int a : args) pkl.write(a);
    }
}
