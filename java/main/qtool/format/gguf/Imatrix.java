package qtool.format.gguf;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import qtool.QtoolException;

/**
 * llama.cpp importance matrices (llama-imatrix's output) as per-tensor importance: for each weight, one value per
 * input column (the mean of the squared activations that column saw), keyed by GGUF tensor name. Read as
 * llama-quantize reads them:
 * <ul>
 * <li>GGUF ({@code general.type} "imatrix"): tensors {@code NAME.in_sum2} [columns, matrices] and {@code NAME.counts}
 *     [1, matrices]; importance = in_sum2 / count per matrix (1 where count is 0).</li>
 * <li>The legacy .dat: i32 entry count; per entry i32 name length, name, i32 ncall, i32 n, n floats (importance =
 *     value / ncall); a trailer (i32 chunk count, i32 length and the dataset's name) that is not needed.</li>
 * </ul>
 * {@link #writeLegacy} writes the .dat form, as llama-imatrix's legacy output: ncall 1 and the means themselves, so
 * that reading it back gives the same floats.
 */
public final class Imatrix {
    private Imatrix() {}

    public static Map<String, float[]> read(Path file) {
        if (GgufFile.looksLikeGguf(file)) return readGguf(file);
        return readLegacy(file);
    }

    /**
     * Writes {@code importance} (keyed by GGUF tensor name) as a legacy .dat file; {@code chunks} and {@code dataset}
     * fill the trailer. Written to a temporary sibling and moved into place.
     */
    public static void writeLegacy(Path file, Map<String, float[]> importance, int chunks, String dataset) {
        byte[] ds = dataset.getBytes(StandardCharsets.UTF_8);
        long size = 4 + 8 + ds.length;
        for (Map.Entry<String, float[]> e : importance.entrySet()) {
            size += 12 + e.getKey().getBytes(StandardCharsets.UTF_8).length + 4L * e.getValue().length;
        }
        ByteBuffer b = ByteBuffer.allocate(Math.toIntExact(size)).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(importance.size());
        importance.forEach((name, values) -> {
            byte[] n = name.getBytes(StandardCharsets.UTF_8);
            b.putInt(n.length).put(n).putInt(1).putInt(values.length);
            for (float v : values) b.putFloat(v);
        });
        b.putInt(chunks).putInt(ds.length).put(ds);
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        try {
            Files.write(tmp, b.array());
            Files.move(tmp, file, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            try {
                Files.deleteIfExists(tmp);
            } catch (IOException ignored) {
                // the error below is the one to report
            }
            throw new QtoolException(file + ": cannot write: " + e.getMessage());
        }
    }

    static Map<String, float[]> readGguf(Path file) {
        Map<String, float[]> out = new LinkedHashMap<>();
        try (GgufFile g = GgufFile.open(file)) {
            for (GgufTensor sums : g.tensors()) {
                if (!sums.name().endsWith(".in_sum2")) continue;
                String name = sums.name().substring(0, sums.name().length() - ".in_sum2".length());
                GgufTensor counts = g.tensor(name + ".counts");
                if (counts == null) throw new QtoolException(file + ": imatrix entry '" + name + "' has in_sum2 but no counts");
                if (sums.type() != GgmlType.F32 || counts.type() != GgmlType.F32) {
                    throw new QtoolException(file + ": imatrix entry '" + name + "' is not F32");
                }
                float[] s = GgmlCodec.dequantize(sums);
                float[] c = GgmlCodec.dequantize(counts);
                int ne0 = Math.toIntExact(sums.rowLength());
                int ne1 = Math.toIntExact(sums.rowCount());
                if (c.length != ne1) throw new QtoolException(file + ": imatrix entry '" + name + "' has " + c.length + " counts for " + ne1 + " matrices");
                float[] e = new float[s.length];
                for (int j = 0; j < ne1; j++) {
                    float count = c[j];
                    for (int i = 0; i < ne0; i++) e[j * ne0 + i] = count > 0f ? s[j * ne0 + i] / count : 1f;
                }
                out.put(name, e);
            }
        }
        if (out.isEmpty()) throw new QtoolException(file + ": no imatrix entries (*.in_sum2 tensors)");
        return out;
    }

    static Map<String, float[]> readLegacy(Path file) {
        ByteBuffer b;
        try {
            b = ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
        } catch (IOException e) {
            throw new QtoolException(file + ": cannot read: " + e.getMessage());
        }
        Map<String, float[]> out = new LinkedHashMap<>();
        try {
            int n = b.getInt();
            if (n <= 0) throw new QtoolException(file + ": not an imatrix file (entry count " + n + ")");
            for (int k = 0; k < n; k++) {
                int len = b.getInt();
                if (len <= 0 || len > b.remaining()) throw new QtoolException(file + ": not an imatrix file (entry " + k + " name length " + len + ")");
                byte[] name = new byte[len];
                b.get(name);
                int ncall = b.getInt();
                int nval = b.getInt();
                if (nval <= 0 || (long) nval * 4 > b.remaining()) {
                    throw new QtoolException(file + ": imatrix entry " + k + " has " + nval + " values, more than the file holds");
                }
                float[] e = new float[nval];
                for (int i = 0; i < nval; i++) {
                    e[i] = b.getFloat();
                    if (ncall > 0) e[i] /= ncall;
                }
                out.put(new String(name, StandardCharsets.UTF_8), e);
            }
        } catch (java.nio.BufferUnderflowException e) {
            throw new QtoolException(file + ": truncated imatrix file");
        }
        return out;
    }
}
