package qtool.format.gguf;

import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.IntStream;
import qtool.Progress;
import qtool.QtoolException;
import qtool.format.gptq.GptqCheckpoint;
import qtool.format.gptq.GptqLayout;
import qtool.format.gptq.GptqPacker;
import qtool.format.gptq.GptqPacker.PackedLinear;
import qtool.load.ModelConfig;
import qtool.load.Weights;
import qtool.tokenize.HfTokenizerSpec;
import qtool.tokenize.TokenizerSpec;

/**
 * Writes a GPTQ checkpoint of a Llama model as GGUF, carrying the GPTQ grid over without requantizing where a ggml
 * block type can hold it. A GPTQ weight is w[o, i] = s[g, o]·(q[i, o] − z[g, o]), g = g_idx[i]; a ggml 32-block of
 * row o holds one scale, so the mapping is exact when every 32-aligned run of inputs lies in one group (group size a
 * multiple of 32 without act-order, or any g_idx that happens to be constant on those runs). Then, per tensor:
 * <ul>
 * <li>Q4_0 (d = s, stored q − z + 8, decoded (q' − 8)·d) when q − z + 8 fits 0..15 everywhere: symmetric 4-bit
 *     (z = 8 in v1 and v2 alike), and symmetric 2/3-bit (z = 2, 4) too. Bit-exact: the same float product.</li>
 * <li>Q4_1 (d = s, m = −s·z rounded to fp16, q as stored) for other grids of at most 4 bits (asymmetric): exact up
 *     to the fp16 rounding of m.</li>
 * <li>Q8_0 (d = s, q − z as int8) for 8-bit grids whose q − z fits −128..127 (symmetric: z = 128). Bit-exact.</li>
 * </ul>
 * Anything else (act-order groups that cut 32-blocks, 8-bit grids that overflow int8, rows not a multiple of 32) is
 * dequantized and requantized by {@link GgmlCodec} to the fallback type, with a warning; every tensor reports the
 * largest absolute change against the GPTQ dequantized weight. q_proj/k_proj rows are permuted into llama.cpp's RoPE
 * order ({@link HfToGguf#hfRowOf}) after unpacking, codes, scales and zeros alike, since all work is per output row.
 * Unquantized tensors (embeddings, norms, lm_head, modules a {@code dynamic} rule excluded) are written as
 * {@code gguf export --type f16} writes them; metadata and tokenizer are the export's.
 */
public final class GptqToGguf {
    private GptqToGguf() {}

    /**
     * @param fallbackType the type of requantized tensors, or null: Q8_0 for 8-bit grids, else Q4_K (Q5_0 when rows
     *                     are not a multiple of 256, as llama-quantize falls back)
     * @param floatType    the type of unquantized 2-D tensors (embeddings, lm_head): F16 unless given
     * @param name         general.name, or null for the directory's name
     * @param requantize   requantize every GPTQ linear to the fallback type instead of carrying grids over (a 2/3-bit
     *                     grid held exactly takes Q4_0's 4.5 bits per weight; Q2_K/Q3_K are smaller but not exact)
     */
    public record Options(GgmlType fallbackType, GgmlType floatType, String name, boolean requantize) {
        public static Options defaults() {
            return new Options(null, null, null, false);
        }
    }

    /** How one tensor was written: its type, whether GPTQ's grid was carried over exactly, and the largest change. */
    public record Mapped(String name, String source, boolean gptq, GgmlType type, boolean direct, double maxAbsChange, String reason) {}

    public record Result(List<Mapped> tensors, long fileBytes, double seconds) {
        public List<Mapped> requantized() {
            return tensors.stream().filter(m -> m.reason() != null).toList();
        }
    }

    /** The mapping chosen for one quantized linear. */
    private record Choice(GgmlType type, boolean direct, String reason) {}

    public static Result convert(Path dir, Path out, Options o, PrintStream log) {
        PrintStream err = log != null ? log : new PrintStream(OutputStream.nullOutputStream());
        long t0 = System.nanoTime();
        Map<String, Object> raw = HfToGguf.configJson(dir);
        ModelConfig c = ModelConfig.parse(raw, dir.resolve("config.json").toString());
        TokenizerSpec tok = HfTokenizerSpec.read(dir, c.vocabSize(), null);
        String chatTemplate = HfTokenizerSpec.chatTemplate(dir);
        GgmlType floatType = o.floatType() != null ? o.floatType() : GgmlType.F16;
        try (GptqCheckpoint ck = GptqCheckpoint.open(dir)) {
            Weights w = ck.weights();
            // GGUF name → transformers source: a linear's prefix (quantized) or a tensor name (float)
            Map<String, String> source = new HashMap<>();
            Map<String, Boolean> quantized = new HashMap<>();
            for (String hf : w.all().keySet()) {
                if (hf.endsWith("rotary_emb.inv_freq")) continue;
                if (hf.equals("lm_head.weight") && c.tieWordEmbeddings()) continue;
                String suffix = hf.substring(hf.lastIndexOf('.') + 1);
                String prefix = hf.substring(0, Math.max(0, hf.lastIndexOf('.')));
                if (suffix.equals(GptqLayout.QWEIGHT)) {
                    String g = HfToGguf.ggufName(prefix + ".weight");
                    if (g == null) throw new QtoolException(dir + ": quantized linear '" + prefix + "' has no llama.cpp counterpart");
                    source.put(g, prefix);
                    quantized.put(g, true);
                    continue;
                }
                if (suffix.equals(GptqLayout.QZEROS) || suffix.equals(GptqLayout.SCALES) || suffix.equals(GptqLayout.G_IDX)) continue;
                String g = HfToGguf.ggufName(hf);
                if (g == null) throw new QtoolException(dir + ": tensor '" + hf + "' has no llama.cpp counterpart in a llama model");
                if (!w.get(hf).dtype().isFloat()) throw new QtoolException(dir + ": tensor '" + hf + "' is " + w.get(hf).dtype() + ", not a float type");
                source.put(g, hf);
                quantized.put(g, false);
            }
            for (String r : List.of("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight")) {
                if (!source.containsKey(r)) throw new QtoolException(dir + ": no tensor for " + r + " (" + GgufToHf.hfName(r) + ")");
            }
            List<String> names = new ArrayList<>(source.keySet());
            names.sort(LlamaQuantTypes.llamaQuantizeOrder());

            // plan: types decided before any data is written (the header comes first)
            Map<String, Choice> choices = new HashMap<>();
            List<HfToGguf.Planned> plan = new ArrayList<>();
            Map<GgmlType, Long> paramsByType = new TreeMap<>();
            for (String g : names) {
                String src = source.get(g);
                long[] dims;
                GgmlType type;
                if (quantized.get(g)) {
                    PackedLinear p = ck.read(src);
                    Choice ch = o.requantize() ? requantized(p, o.fallbackType(), "--requantize") : choose(p, o.fallbackType());
                    choices.put(g, ch);
                    dims = new long[] {p.in(), p.out()};
                    type = ch.type();
                    paramsByType.merge(type, (long) p.in() * p.out(), Long::sum);
                } else {
                    long[] shape = w.get(src).shape();
                    dims = new long[shape.length];
                    for (int i = 0; i < shape.length; i++) dims[i] = shape[shape.length - 1 - i];
                    HfToGguf.checkShape(dir, c, g, src, shape);
                    type = dims.length >= 2 && LlamaQuantTypes.allowsQuantization(g, dims.length) ? floatType : GgmlType.F32;
                    if (type.blockSize > 1 && dims[0] % type.blockSize != 0) type = GgmlType.F16;
                }
                plan.add(new HfToGguf.Planned(g, src, type, dims, null));
            }
            LlamaFileType fileType = fileType(paramsByType);
            HfToGguf.Options meta = new HfToGguf.Options(fileType, false, null, null, null, o.name(), null);

            List<Mapped> mapped = new ArrayList<>();
            long total = 0;
            for (HfToGguf.Planned p : plan) total += HfToGguf.elements(p.dims());
            GgufWriter writer = new GgufWriter(out);
            try (Progress progress = new Progress("from-gptq", total, "weights", err)) {
                HfToGguf.putMetadata(writer, c, dir, meta, tok, chatTemplate);
                for (HfToGguf.Planned p : plan) writer.addTensor(p.name(), p.type(), p.dims());
                for (HfToGguf.Planned p : plan) {
                    Choice ch = choices.get(p.name());
                    if (ch == null) {
                        HfToGguf.writeTensor(writer, c, w, p);
                        mapped.add(new Mapped(p.name(), p.hfName(), false, p.type(), true, 0, null));
                    } else {
                        double change = writeLinear(writer, c, ck.read(p.hfName()), p, ch);
                        mapped.add(new Mapped(p.name(), p.hfName(), true, p.type(), ch.direct(), change, ch.reason()));
                        if (ch.reason() != null) {
                            err.printf("gguf from-gptq: warning: %s requantized to %s (%s); largest weight change %.4g%n",
                                    p.hfName(), p.type(), ch.reason(), change);
                        }
                    }
                    progress.step(HfToGguf.elements(p.dims()));
                }
                writer.close();
            } catch (RuntimeException | Error e) {
                writer.abort();
                throw e;
            }
            long bytes = HfToGguf.sizeOrUnknown(out);
            return new Result(mapped, bytes, (System.nanoTime() - t0) / 1e9);
        }
    }

    /** general.file_type: the llama_ftype of the type holding most quantized parameters. */
    static LlamaFileType fileType(Map<GgmlType, Long> paramsByType) {
        GgmlType most = paramsByType.entrySet().stream().max(Map.Entry.comparingByValue()).map(Map.Entry::getKey).orElse(GgmlType.F16);
        return switch (most) {
            case Q4_0 -> LlamaFileType.Q4_0;
            case Q4_1 -> LlamaFileType.Q4_1;
            case Q5_0 -> LlamaFileType.Q5_0;
            case Q5_1 -> LlamaFileType.Q5_1;
            case Q8_0 -> LlamaFileType.Q8_0;
            case Q2_K -> LlamaFileType.Q2_K;
            case Q3_K -> LlamaFileType.Q3_K_M;
            case Q4_K -> LlamaFileType.Q4_K_M;
            case Q5_K -> LlamaFileType.Q5_K_M;
            case Q6_K -> LlamaFileType.Q6_K;
            case BF16 -> LlamaFileType.BF16;
            case F32 -> LlamaFileType.F32;
            default -> LlamaFileType.F16;
        };
    }

    /** Decides how a quantized linear is written: a direct ggml block type when its grid fits one, else requantized. */
    static Choice choose(PackedLinear p, GgmlType fallback) {
        int in = p.in(), out = p.out(), bits = p.bits();
        String reason = null;
        if (in % 32 != 0) reason = in + " inputs, not a multiple of 32";
        else {
            int[] gIdx = p.gIdx();
            for (int i = 0; i < in && reason == null; i++) {
                if (gIdx[i] != gIdx[i & ~31]) {
                    reason = monotone(gIdx) ? "group size " + groupSizeOf(p) + " cuts 32-blocks of inputs"
                            : "act-order: g_idx changes group inside a 32-block of inputs";
                }
            }
        }
        if (reason == null) {
            int[] zeros = GptqPacker.unpackZeros(p);
            int[] codes = GptqPacker.unpackCodes(p);
            if (bits <= 4) {
                if (fitsOffset(p, codes, zeros, 0, 15, 8)) return new Choice(GgmlType.Q4_0, true, null);
                return new Choice(GgmlType.Q4_1, true, null);
            }
            if (bits == 8) {
                if (fitsOffset(p, codes, zeros, -128, 127, 0)) return new Choice(GgmlType.Q8_0, true, null);
                reason = "8-bit codes minus zero points do not fit int8";
            } else {
                reason = bits + "-bit grid";
            }
        }
        return requantized(p, fallback, reason);
    }

    private static Choice requantized(PackedLinear p, GgmlType fallback, String reason) {
        int in = p.in();
        GgmlType t = fallback != null ? fallback : p.bits() == 8 ? GgmlType.Q8_0 : GgmlType.Q4_K;
        if (in % t.blockSize != 0) { // llama-quantize's fallbacks for rows no K block fits
            t = switch (t) {
                case Q2_K, Q3_K -> GgmlType.Q4_0;
                case Q4_K -> GgmlType.Q5_0;
                case Q5_K -> GgmlType.Q5_1;
                case Q6_K -> GgmlType.Q8_0;
                default -> GgmlType.F16;
            };
        }
        if (in % t.blockSize != 0) t = GgmlType.F16;
        return new Choice(t, false, reason);
    }

    private static boolean monotone(int[] gIdx) {
        for (int i = 1; i < gIdx.length; i++) if (gIdx[i] < gIdx[i - 1]) return false;
        return true;
    }

    private static String groupSizeOf(PackedLinear p) {
        return p.groups() == 1 ? "-1" : String.valueOf((p.in() + p.groups() - 1) / p.groups());
    }

    /** Whether q − z + offset lies in [lo, hi] for every weight. */
    private static boolean fitsOffset(PackedLinear p, int[] codes, int[] zeros, int lo, int hi, int offset) {
        int in = p.in(), out = p.out();
        int[] gIdx = p.gIdx();
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                int v = codes[o * in + i] - zeros[gIdx[i] * out + o] + offset;
                if (v < lo || v > hi) return false;
            }
        }
        return true;
    }

    private static final int ROWS_PER_TASK = 16;

    /** Writes one quantized linear; returns the largest |GGUF decoded − GPTQ dequantized| over its weights. */
    private static double writeLinear(GgufWriter writer, ModelConfig c, PackedLinear p, HfToGguf.Planned plan, Choice ch) {
        String g = plan.name();
        boolean permuteQ = g.contains(".attn_q."), permuteK = g.contains(".attn_k.");
        int heads = permuteQ ? c.numHeads() : permuteK ? c.numKvHeads() : 0;
        int in = p.in(), out = p.out();
        if (heads > 0 && (long) heads * c.headDim() != out) {
            throw new QtoolException(p.prefix() + ": " + out + " outputs, config.json implies " + heads + " heads of " + c.headDim());
        }
        int[] codes = GptqPacker.unpackCodes(p);
        int[] zeros = GptqPacker.unpackZeros(p);
        float[] scales = p.scales();
        int[] gIdx = p.gIdx();
        GgmlType type = ch.type();
        int rowBytes = Math.toIntExact(type.byteSize(in));
        byte[] data = new byte[Math.multiplyExact(rowBytes, out)];
        MemorySegment seg = MemorySegment.ofArray(data);
        double[] taskMax = new double[(out + ROWS_PER_TASK - 1) / ROWS_PER_TASK];
        IntStream.range(0, taskMax.length).parallel().forEach(task -> {
            float[] ref = new float[in], back = new float[in];
            double max = 0;
            for (int row = task * ROWS_PER_TASK; row < Math.min(out, (task + 1) * ROWS_PER_TASK); row++) {
                int o = heads > 0 ? (int) HfToGguf.hfRowOf(row, c.headDim()) : row;
                for (int i = 0; i < in; i++) {
                    int k = gIdx[i] * out + o;
                    ref[i] = scales[k] * (codes[o * in + i] - zeros[k]);
                }
                long at = (long) row * rowBytes;
                if (ch.direct()) encodeDirect(type, codes, zeros, scales, gIdx, in, out, o, data, (int) at);
                else GgmlCodec.quantizeRow(type, ref, 0, in, null, seg, at);
                GgmlCodec.dequantizeRow(type, seg, at, back, 0, in);
                for (int i = 0; i < in; i++) max = Math.max(max, Math.abs(back[i] - ref[i]));
            }
            taskMax[task] = max;
        });
        writer.writeTensor(g, seg);
        double max = 0;
        for (double m : taskMax) max = Math.max(max, m);
        return max;
    }

    /** Row o of the GPTQ grid as ggml blocks of {@code type} (Q4_0, Q4_1 or Q8_0) at byte {@code at} of {@code dst}. */
    private static void encodeDirect(GgmlType type, int[] codes, int[] zeros, float[] scales, int[] gIdx, int in, int out, int o,
                                     byte[] dst, int at) {
        for (int b = 0; b < in / 32; b++) {
            int k = gIdx[b * 32] * out + o;
            short d = Float.floatToFloat16(scales[k]); // scales are fp16 values already: exact
            int z = zeros[k];
            int base = at + b * type.typeSize;
            int row = o * in + b * 32;
            putShort(dst, base, d);
            switch (type) {
                case Q4_0 -> {
                    for (int j = 0; j < 16; j++) {
                        int lo = codes[row + j] - z + 8, hi = codes[row + j + 16] - z + 8;
                        dst[base + 2 + j] = (byte) (lo | (hi << 4));
                    }
                }
                case Q4_1 -> {
                    putShort(dst, base + 2, Float.floatToFloat16(-scales[k] * z));
                    for (int j = 0; j < 16; j++) dst[base + 4 + j] = (byte) (codes[row + j] | (codes[row + j + 16] << 4));
                }
                case Q8_0 -> {
                    for (int j = 0; j < 32; j++) dst[base + 2 + j] = (byte) (codes[row + j] - z);
                }
                default -> throw new AssertionError(type);
            }
        }
    }

    private static void putShort(byte[] b, int off, short v) {
        b[off] = (byte) v;
        b[off + 1] = (byte) (v >> 8);
    }
}
