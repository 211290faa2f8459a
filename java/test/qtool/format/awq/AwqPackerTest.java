package qtool.format.awq;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.quantize.Awq;
import qtool.quantize.AwqParams;
import qtool.quantize.AwqResult;

class AwqPackerTest {

    @Test
    void wordsHoldOutputsInAutoAwqOrder() {
        // codes q[o, 0] = o for outputs 0..7 of input 0: AutoAWQ packs output ORDER[k] = 0,2,4,6,1,3,5,7 at field k
        int out = 8, in = 1;
        byte[] codes = {0, 1, 2, 3, 4, 5, 6, 7};
        AwqResult r = new AwqResult(out, in, new AwqParams(4, -1, true), codes, new float[8], new int[] {7, 6, 5, 4, 3, 2, 1, 0}, new float[8]);
        AwqPacker.PackedLinear p = AwqPacker.pack("x", r);
        assertEquals(0 | 2 << 4 | 4 << 8 | 6 << 12 | 1 << 16 | 3 << 20 | 5 << 24 | 7 << 28, p.qweight()[0]);
        assertEquals(7 | 5 << 4 | 3 << 8 | 1 << 12 | 6 << 16 | 4 << 20 | 2 << 24 | 0 << 28, p.qzeros()[0]);
    }

    @Test
    void packedLinearDequantizesToTheQuantizedWeight() {
        int out = 24, in = 64;
        Random rnd = new Random(7);
        float[] w = new float[out * in];
        for (int i = 0; i < w.length; i++) w[i] = (float) rnd.nextGaussian();
        for (boolean zp : new boolean[] {true, false}) {
            AwqResult r = Awq.quantize(w, out, in, new AwqParams(4, 32, zp));
            AwqPacker.PackedLinear p = AwqPacker.pack("m", r);
            assertEquals(in * out / 8, p.qweight().length);
            assertArrayEquals(r.dequantized(), AwqPacker.dequantize(p));
            for (int o = 0; o < out; o++) for (int i = 0; i < in; i++) assertEquals(r.code(o, i), p.code(o, i));
        }
    }

    @Test
    void shapesTheLayoutCannotHoldAreRefusedWithTheReason() {
        assertNull(AwqLayout.unpackableReason(16, 128, 4, 128));
        assertTrue(AwqLayout.unpackableReason(172, 64, 4, 32).contains("multiple of 8"));
        assertTrue(AwqLayout.unpackableReason(64, 172, 4, 32).contains("ragged"));
        assertTrue(AwqLayout.unpackableReason(64, 64, 4, 128).contains("ragged"));
        assertTrue(AwqLayout.unpackableReason(64, 64, 3, 32).contains("4-bit"));
        AwqResult r = Awq.quantize(new float[12 * 32], 12, 32, new AwqParams(4, 32, true));
        QtoolException e = assertThrows(QtoolException.class, () -> AwqPacker.pack("model.layers.0.mlp.up_proj", r));
        assertTrue(e.getMessage().startsWith("model.layers.0.mlp.up_proj: 12 outputs"), e.getMessage());
    }
}
