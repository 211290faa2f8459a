package qtool.format.gguf;

import java.io.ByteArrayOutputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Assumptions;

/** Test data for the GGUF tests: the shared folder, byte-level file crafting, a tiny llama-shaped model. */
final class GgufTestFiles {
    private GgufTestFiles() {}

    /** ../shared (or -Dqtool.shared); tests that need it skip when it is absent. */
    static Path shared() {
        return Path.of(System.getProperty("qtool.shared", "../shared"));
    }

    static Path requireShared(String relative) {
        Path p = shared().resolve(relative);
        Assumptions.assumeTrue(Files.isReadable(p), "shared test data absent: " + p);
        return p;
    }

    /** Little-endian byte builder for hand-made (often deliberately broken) GGUF files. */
    static final class Bytes {
        final ByteArrayOutputStream out = new ByteArrayOutputStream();

        Bytes u8(int v) {
            out.write(v);
            return this;
        }

        Bytes u32(long v) {
            for (int i = 0; i < 4; i++) out.write((int) (v >>> (8 * i)));
            return this;
        }

        Bytes u64(long v) {
            for (int i = 0; i < 8; i++) out.write((int) (v >>> (8 * i)));
            return this;
        }

        Bytes str(String s) {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            u64(b.length);
            out.write(b, 0, b.length);
            return this;
        }

        Bytes raw(byte[] b) {
            out.write(b, 0, b.length);
            return this;
        }

        Bytes header(int version, long tensors, long kvs) {
            return u32(GgufFile.MAGIC).u32(version).u64(tensors).u64(kvs);
        }

        Bytes kvU32(String key, long v) {
            return str(key).u32(GgufValueType.UINT32.id).u32(v);
        }

        Bytes kvString(String key, String v) {
            return str(key).u32(GgufValueType.STRING.id).str(v);
        }

        Bytes tensorInfo(String name, GgmlType type, long offset, long... dims) {
            str(name).u32(dims.length);
            for (long d : dims) u64(d);
            return u32(type.id).u64(offset);
        }

        Bytes padTo(int alignment) {
            while (out.size() % alignment != 0) out.write(0);
            return this;
        }

        Bytes zeros(int n) {
            for (int i = 0; i < n; i++) out.write(0);
            return this;
        }

        int size() {
            return out.size();
        }

        byte[] bytes() {
            return out.toByteArray();
        }

        Path write(Path dir, String name) throws java.io.IOException {
            Path p = dir.resolve(name);
            Files.write(p, bytes());
            return p;
        }
    }

    static MemorySegment floatsLE(float[] x) {
        MemorySegment s = MemorySegment.ofArray(new byte[x.length * 4]);
        MemorySegment.copy(x, 0, s, ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, x.length);
        return s;
    }

    /** A weight tensor of the tiny model: name and ggml dims. */
    record TensorSpec(String name, long... dims) {
        long elements() {
            long n = 1;
            for (long d : dims) n *= d;
            return n;
        }
    }

    static final int HIDDEN = 256, FFN = 512, VOCAB = 64;

    /** The tensors of a one-layer llama with rows of 256 (and, for ffn_down, 512) columns. */
    static final TensorSpec[] TINY_LLAMA = {
        new TensorSpec("token_embd.weight", HIDDEN, VOCAB),
        new TensorSpec("blk.0.attn_norm.weight", HIDDEN),
        new TensorSpec("blk.0.attn_q.weight", HIDDEN, HIDDEN),
        new TensorSpec("blk.0.attn_k.weight", HIDDEN, HIDDEN),
        new TensorSpec("blk.0.attn_v.weight", HIDDEN, HIDDEN),
        new TensorSpec("blk.0.attn_output.weight", HIDDEN, HIDDEN),
        new TensorSpec("blk.0.ffn_norm.weight", HIDDEN),
        new TensorSpec("blk.0.ffn_gate.weight", HIDDEN, FFN),
        new TensorSpec("blk.0.ffn_up.weight", HIDDEN, FFN),
        new TensorSpec("blk.0.ffn_down.weight", FFN, HIDDEN),
        new TensorSpec("output_norm.weight", HIDDEN),
        new TensorSpec("output.weight", HIDDEN, VOCAB),
    };

    /**
     * Random weights (N(0, 0.02)) for one tensor, with the first rows of 2-D tensors replaced by hard cases: all
     * zeros, constant, tiny (1e-20), one outlier, all positive, all negative, sparse, large (N(0, 3)), values on a
     * 1/8 grid (rounding ties), one non-zero element.
     */
    static float[] weights(TensorSpec t, long seed) {
        Random rnd = new Random(seed ^ t.name().hashCode());
        float[] d = new float[(int) t.elements()];
        for (int i = 0; i < d.length; i++) d[i] = (float) (rnd.nextGaussian() * 0.02);
        if (t.dims().length < 2) return d;
        int rl = (int) t.dims()[0];
        Arrays.fill(d, 0, rl, 0f);
        Arrays.fill(d, rl, 2 * rl, 0.013f);
        for (int i = 2 * rl; i < 3 * rl; i++) d[i] = (float) (rnd.nextGaussian() * 1e-20);
        d[3 * rl + 5] = 1.5f;
        for (int i = 4 * rl; i < 5 * rl; i++) d[i] = Math.abs(d[i]);
        for (int i = 5 * rl; i < 6 * rl; i++) d[i] = -Math.abs(d[i]);
        for (int i = 6 * rl; i < 7 * rl; i++) d[i] = i % 7 == 0 ? 0.05f : 0f;
        for (int i = 7 * rl; i < 8 * rl; i++) d[i] = (float) (rnd.nextGaussian() * 3);
        for (int i = 8 * rl; i < 9 * rl; i++) d[i] = ((i % 16) - 8) * 0.125f;
        Arrays.fill(d, 9 * rl, 10 * rl, 0f);
        d[9 * rl + 100] = -0.7f;
        return d;
    }

    /** llama metadata that llama.cpp's loader (and llama-quantize) accepts for {@link #TINY_LLAMA}. */
    static Map<String, GgufValue> tinyLlamaMetadata() {
        Map<String, GgufValue> m = new LinkedHashMap<>();
        m.put("general.architecture", GgufValue.of("llama"));
        m.put("general.name", GgufValue.of("qtool-test"));
        m.put("llama.block_count", GgufValue.uint32(1));
        m.put("llama.context_length", GgufValue.uint32(256));
        m.put("llama.embedding_length", GgufValue.uint32(HIDDEN));
        m.put("llama.feed_forward_length", GgufValue.uint32(FFN));
        m.put("llama.attention.head_count", GgufValue.uint32(4));
        m.put("llama.attention.head_count_kv", GgufValue.uint32(4));
        m.put("llama.rope.dimension_count", GgufValue.uint32(64));
        m.put("llama.attention.layer_norm_rms_epsilon", GgufValue.float32(1e-5f));
        m.put("general.file_type", GgufValue.uint32(0));
        return m;
    }

    /** Writes the tiny llama with its 2-D weights stored as {@code type} (F32, F16 or BF16); norms stay F32. */
    static void writeTinyLlama(Path path, GgmlType type, long seed) {
        try (GgufWriter w = new GgufWriter(path)) {
            w.putAll(tinyLlamaMetadata());
            for (TensorSpec t : TINY_LLAMA) w.addTensor(t.name(), t.dims().length == 1 ? GgmlType.F32 : type, t.dims());
            for (TensorSpec t : TINY_LLAMA) {
                float[] x = weights(t, seed);
                GgmlType tt = t.dims().length == 1 ? GgmlType.F32 : type;
                byte[] b = new byte[(int) tt.byteSize(x.length)];
                GgmlCodec.quantizeRow(tt, x, 0, x.length, null, MemorySegment.ofArray(b), 0);
                w.writeTensor(t.name(), MemorySegment.ofArray(b));
            }
        }
    }
}
