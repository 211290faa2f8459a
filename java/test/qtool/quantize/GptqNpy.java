package qtool.quantize;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import qtool.load.Json;

/**
 * Exchange with scripts/gpu/gptq_reference.py (IST-DASLab/gptq on the GPU host) through .npy files:
 * <pre>
 *   GptqNpy make DIR OUT IN ROWS SEED        writes DIR/w.npy [OUT, IN] and DIR/h.npy [IN, IN] (correlated inputs)
 *   GptqNpy quantize W.npy H.npy OUT_DIR [--bits 4] [--group-size 128] [--asym] [--act-order] [--static-groups]
 *                    [--damp 0.01] [--block-size 128] [--mse]
 *                                            writes OUT_DIR/q_qtool.npy [OUT, IN] and OUT_DIR/qtool.json
 * </pre>
 * Run with {@code java -cp target/classes:target/test-classes qtool.quantize.GptqNpy ...}.
 */
public final class GptqNpy {
    public record Matrix(int rows, int cols, float[] data) {}

    public static void main(String[] args) throws IOException {
        switch (args[0]) {
            case "make" -> {
                Path dir = Path.of(args[1]);
                int out = Integer.parseInt(args[2]), in = Integer.parseInt(args[3]), rows = Integer.parseInt(args[4]);
                long seed = Long.parseLong(args[5]);
                Files.createDirectories(dir);
                write(dir.resolve("w.npy"), new Matrix(out, in, GptqTestData.weights(out, in, seed)));
                float[] x = GptqTestData.correlatedInputs(rows, in, seed + 1);
                write(dir.resolve("h.npy"), new Matrix(in, in, GptqTestData.hessian(x, rows, in)));
            }
            case "quantize" -> {
                Matrix w = read(Path.of(args[1])), h = read(Path.of(args[2]));
                Path dir = Path.of(args[3]);
                int bits = 4, group = 128, block = 128;
                boolean sym = true, act = false, stat = false, mse = false;
                double damp = 0.01;
                for (int k = 4; k < args.length; k++) {
                    switch (args[k]) {
                        case "--bits" -> bits = Integer.parseInt(args[++k]);
                        case "--group-size" -> group = Integer.parseInt(args[++k]);
                        case "--asym" -> sym = false;
                        case "--act-order" -> act = true;
                        case "--static-groups" -> stat = true;
                        case "--damp" -> damp = Double.parseDouble(args[++k]);
                        case "--block-size" -> block = Integer.parseInt(args[++k]);
                        case "--mse" -> mse = true;
                        default -> throw new IllegalArgumentException("unknown option " + args[k]);
                    }
                }
                GptqParams p = new GptqParams(bits, group, sym, act, damp, block, stat, mse, false);
                long t0 = System.nanoTime();
                GptqResult r = Gptq.quantize(w.data(), w.rows(), w.cols(), h.data(), p);
                double seconds = (System.nanoTime() - t0) / 1e9;
                Files.createDirectories(dir);
                write(dir.resolve("q_qtool.npy"), new Matrix(w.rows(), w.cols(), r.dequantized()));
                Map<String, Object> info = new LinkedHashMap<>();
                info.put("loss", r.loss());
                info.put("damp", r.damp());
                info.put("damp_retries", r.dampRetries());
                info.put("seconds", seconds);
                info.put("threads", Runtime.getRuntime().availableProcessors());
                Json.writeFile(dir.resolve("qtool.json"), info);
                System.out.println(Json.write(info));
            }
            default -> throw new IllegalArgumentException("GptqNpy make|quantize ...");
        }
    }

    /** A 2-D little-endian float32 C-order .npy file. */
    public static Matrix read(Path file) throws IOException {
        byte[] all = Files.readAllBytes(file);
        ByteBuffer b = ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN);
        int major = all[6];
        int headerLen = major == 1 ? b.getShort(8) & 0xFFFF : b.getInt(8);
        int start = major == 1 ? 10 : 12;
        String header = new String(all, start, headerLen, StandardCharsets.ISO_8859_1);
        if (!header.contains("'<f4'") || header.contains("'fortran_order': True")) {
            throw new IOException(file + ": expected little-endian float32 in C order, header " + header.trim());
        }
        Matcher m = Pattern.compile("'shape': \\((\\d+), (\\d+)\\)").matcher(header);
        if (!m.find()) throw new IOException(file + ": expected a 2-D array, header " + header.trim());
        int rows = Integer.parseInt(m.group(1)), cols = Integer.parseInt(m.group(2));
        float[] data = new float[rows * cols];
        b.position(start + headerLen);
        b.asFloatBuffer().get(data);
        return new Matrix(rows, cols, data);
    }

    public static void write(Path file, Matrix m) throws IOException {
        String dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + m.rows() + ", " + m.cols() + "), }";
        int total = 10 + dict.length() + 1;
        int pad = (64 - total % 64) % 64;
        String header = dict + " ".repeat(pad) + "\n";
        ByteBuffer b = ByteBuffer.allocate(10 + header.length() + m.data().length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.put((byte) 0x93).put("NUMPY".getBytes(StandardCharsets.US_ASCII)).put((byte) 1).put((byte) 0);
        b.putShort((short) header.length()).put(header.getBytes(StandardCharsets.US_ASCII));
        b.asFloatBuffer().put(m.data());
        Files.write(file, b.array());
    }
}
