package qtool.format.exl2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.quantize.Exl2Gptq;
import qtool.quantize.Exl2Params;
import qtool.quantize.Exl2Tensor;

class Exl2PackerTest {

    static Exl2Tensor quantize(int out, int in, String option, long seed) {
        Random r = new Random(seed);
        float[] w = new float[out * in];
        for (int k = 0; k < w.length; k++) w[k] = (float) (r.nextGaussian() * 0.02);
        float[] h = new float[in * in];
        for (int i = 0; i < in; i++) {
            h[i * in + i] = 1 + r.nextFloat();
            if (i > 0) h[i * in + i - 1] = h[(i - 1) * in + i] = 0.3f;
        }
        return Exl2Gptq.quantize(Exl2Gptq.prepare(h, in), w, out, Exl2Params.parse(option));
    }

    @Test
    void everyBitWidthRoundTrips() {
        for (int bits : new int[] {2, 3, 4, 5, 6, 8}) {
            // 160 rows in groups of 64: the last group ragged (32 rows); 40 columns padded to 64
            Exl2Tensor t = quantize(40, 160, "1:" + bits + "b_64g", bits);
            Exl2Packer.PackedLinear p = Exl2Packer.pack("m.x", t, null);
            assertEquals(64, p.columns());
            assertEquals(160 * bits / 32, p.packedRows());
            assertArrayEquals(t.dequantized(), Exl2Packer.dequantize(p, 40), bits + "-bit");
            // padded columns: code 2^(bits-1) (weight 0), sub-scale 1 (stored 0)
            for (int c = 40; c < 64; c++) {
                assertEquals(1 << (bits - 1), Exl2Layout.get(p.qWeight(), 64, 0, 5, c, bits));
                assertEquals(0, (p.qScale()[c / 8] >>> (4 * (c & 7))) & 15);
            }
        }
    }

    @Test
    void mixedWidthsAndTheirGroupTable() {
        Exl2Tensor t = quantize(96, 576, "0.05:8b_32g/0.1:4b_128g/0.85:3b_128g", 7);
        Exl2Packer.PackedLinear p = Exl2Packer.pack("m.down_proj", t, null);
        // 8-bit: ceil(28.8/32) = 1 group of 32 rows (8 packed), 4-bit: ceil(57.6/128) = 1 of 128 (16), 3-bit:
        // ceil(min(489.6, 416)/128) = 4 groups for the 416 rows left: 3 of 128 (12 packed each) and a ragged 32 (3)
        assertArrayEquals(new short[] {8, 0, 4, 8, 3, 24, 3, 36, 3, 48, 3, 60}, p.qGroups());
        assertEquals(63, p.packedRows());
        assertArrayEquals(new int[] {32, 128, 128, 128, 128, 32}, Exl2Packer.groupRows(p));
        assertArrayEquals(t.dequantized(), Exl2Packer.dequantize(p, 96));
        assertArrayEquals(t.invperm(), p.qInvperm());
    }

    @Test
    void bitsAreWhereExLlamaV2PutsThem() {
        Exl2Tensor t = quantize(32, 64, "1:3b_32g", 3);
        Exl2Packer.PackedLinear p = Exl2Packer.pack("m.x", t, new float[32]);
        // 3-bit: rows 0..31 of column 5 as one 96-bit little-endian stream in packed rows 0, 1, 2 (pack_columns)
        long lo = Integer.toUnsignedLong(p.qWeight()[5]) | Integer.toUnsignedLong(p.qWeight()[32 + 5]) << 32;
        long hi = Integer.toUnsignedLong(p.qWeight()[64 + 5]);
        for (int j = 0; j < 32; j++) {
            int bit = 3 * j;
            long v = bit + 3 <= 64 ? lo >>> bit : (lo >>> bit) | (hi << (64 - bit));
            if (bit >= 64) v = hi >>> (bit - 64);
            assertEquals(t.code(j, 5), (int) (v & 7), "row " + j);
        }
        // q_scale: column c of group 0 at bits 4·(c mod 8) of word c / 8, minus one (pack_rows_4)
        for (int c = 0; c < 32; c++) assertEquals(t.qscale()[c] - 1, (p.qScale()[c / 8] >>> (4 * (c % 8))) & 15);
        assertEquals(32, p.bias().length);
    }

    @Test
    void refusesLayoutsTheKernelsCannotRead() {
        Exl2Tensor t = quantize(32, 80, "1:4b_64g", 1); // last group 16 rows: not a 32-row step
        QtoolException e = assertThrows(QtoolException.class, () -> Exl2Packer.pack("m.layers.0.mlp.down_proj", t, null));
        assertTrue(e.getMessage().contains("m.layers.0.mlp.down_proj"), e.getMessage());

        Exl2Packer.PackedLinear p = Exl2Packer.pack("m.x", quantize(32, 64, "1:4b_32g", 1), null);
        int[] badPerm = p.qInvperm().clone();
        badPerm[0] = badPerm[1];
        assertThrows(QtoolException.class, () -> Exl2Packer.dequantize(new Exl2Packer.PackedLinear("m.x", 64, 32, p.qWeight(), p.qScale(),
                p.qScaleMax(), p.qGroups(), badPerm, null), 32));
        short[] badGroups = p.qGroups().clone();
        badGroups[2] = 8; // 4-bit then 8-bit: not decreasing
        assertThrows(QtoolException.class, () -> Exl2Packer.dequantize(new Exl2Packer.PackedLinear("m.x", 64, 32, p.qWeight(), p.qScale(),
                p.qScaleMax(), badGroups, p.qInvperm(), null), 32));
        assertThrows(QtoolException.class, () -> Exl2Packer.dequantize(p, 33)); // 33 outputs would be stored as 64 columns
        assertThrows(QtoolException.class, () -> Exl2Packer.dequantize(p, 64));
    }
}
