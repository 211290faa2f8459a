package qtool.quantize;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.load.Json;

class Exl2ParamsTest {

    @Test
    void totalBitsCountsEveryTensorAsQparamsPy() {
        // 576 rows, 1:4b_128g: ceil(576/128) = 5 groups (4.5 filled). Codes 576·576·4 = 1327104, q_scale_max 5·16 = 80,
        // q_groups 5·32 = 160, q_scale 5·576·4 = 11520, q_invperm 576·32 = 18432.
        Exl2Params p = Exl2Params.parse("1:4b_128g s4");
        assertEquals(1327104 + 80 + 160 + 11520 + 18432, p.totalBits(576, 576, false));
        // + 16 bits per bias value, and the bias counted as weights in bpw
        assertEquals(1357296 + 576 * 16, p.totalBits(576, 576, true));
        assertEquals((1357296 + 576 * 16) / (576.0 * 576 + 576), p.bpw(576, 576, true), 1e-12);

        // 1536 rows, 0.05:8b_32g/0.1:4b_128g/0.85:3b_128g on 576 columns: 8-bit ceil(76.8/32) = 3 groups (96 rows),
        // 4-bit ceil(153.6/128) = 2 (256 rows), 3-bit ceil(min(1305.6, 1184)/128) = 10 groups holding the 1184 left.
        Exl2Params down = Exl2Params.parse("0.05:8b_32g/0.1:4b_128g/0.85:3b_128g");
        assertArrayEquals(new int[] {3, 2, 10}, down.groupsPerSegment(1536));
        long codes = 96L * 576 * 8 + 256L * 576 * 4 + 1184L * 576 * 3;
        assertEquals(codes + 15 * 16 + 15 * 32 + 15 * 576 * 4 + 1536 * 32, down.totalBits(1536, 576, false));

        // A segment after the rows are used up gets no groups (64 rows: 8-bit 1 group of 32, 4-bit 1 group of 128
        // that takes the 32 left, 3-bit ceil(-96/128) = 0).
        assertArrayEquals(new int[] {1, 1, 0}, down.groupsPerSegment(64));
        assertEquals(32L * 96 * 8 + 32L * 96 * 4 + 2 * 16 + 2 * 32 + 2 * 96 * 4 + 64 * 32, down.totalBits(64, 96, false));
    }

    @Test
    void layoutHasTheRaggedLastGroup() {
        Exl2Params.GroupLayout l = Exl2Params.parse("0.1:4b_128g/0.9:3b_128g").layout(576);
        // 4-bit: ceil(57.6/128) = 1 group; 3-bit: ceil(min(518.4, 448)/128) = 4 groups, the last of 64 rows
        assertArrayEquals(new int[] {4, 3, 3, 3, 3}, l.bits());
        assertArrayEquals(new int[] {0, 128, 256, 384, 512}, l.firstRow());
        assertArrayEquals(new int[] {128, 128, 128, 128, 64}, l.rows());
        assertEquals(16, l.packedRows(0));
        assertEquals(16 + 3 * 12, l.firstPackedRow(4));
        assertEquals(16 + 3 * 12 + 6, l.totalPackedRows());
    }

    @Test
    void descAndJsonAreExLlamaV2s() {
        Exl2Params p = Exl2Params.of(new int[] {32, 128, 128}, new int[] {8, 4, 3}, "0.05", "0.1", "0.85");
        assertEquals("0.05:8b_32g/0.1:4b_128g/0.85:3b_128g s4", p.desc());
        assertEquals("{\"group_size\":{\"8\":32,\"4\":128,\"3\":128},\"bits\":[8,4,3],\"bits_prop\":[0.05,0.1,0.85],\"scale_bits\":4}",
                Json.write(p.toJson()));
        assertEquals(p, Exl2Params.fromJson(Json.object(Json.parse(Json.write(p.toJson()), "t"), "t"), "t"));
        // 1 and 1.0 stay as written (QParams(128, [4], [1], 4) and the head option QParams(128, [8], [1.0], 4))
        assertEquals("1:4b_128g s4", Exl2Params.ATTENTION_OPTIONS.get(6).get(0).desc());
        assertEquals("1.0:8b_128g s4", Exl2Params.HEAD_OPTIONS.get(8).desc());
        Exl2Params one = Exl2Params.fromJson(Json.object(Json.parse(
                "{\"group_size\": {\"8\": 128}, \"bits\": [8], \"bits_prop\": [1.0], \"scale_bits\": 4}", "t"), "t"), "t");
        assertEquals("1.0:8b_128g s4", one.desc());
        assertEquals("[1.0]", Json.write(one.toJson().get("bits_prop")));
        // group_size as a single number, as QParams also accepts
        assertEquals("1:4b_64g s4", Exl2Params.fromJson(Map.of("group_size", 64L, "bits", List.of(4L), "bits_prop", List.of(1L),
                "scale_bits", 4L), "t").desc());
    }

    @Test
    void optionGrids() {
        assertEquals(19, Exl2Params.ATTENTION_OPTIONS.size());
        assertEquals(17, Exl2Params.MLP_OPTIONS.size());
        Exl2Params.ATTENTION_OPTIONS.forEach(r -> assertEquals(4, r.size()));
        Exl2Params.MLP_OPTIONS.forEach(r -> assertEquals(3, r.size()));
        assertEquals(List.of(2, 3, 4, 5, 6, 8), List.copyOf(Exl2Params.HEAD_OPTIONS.keySet()));
        // -hb 6 ≈ 6.35 bpw on a large head (REFERENCE.md)
        assertEquals(6.35, Exl2Params.HEAD_OPTIONS.get(6).bpw(4096, 32000, false), 0.01);
        Exl2Params.Reduced r = Exl2Params.reduced(Exl2Params.MLP_OPTIONS, false);
        assertEquals(17, r.rows().size());
        // gate_proj: rows 0..3 share one option, so the first four rows map gate to 0 or 1 only
        assertEquals(r.perProjection().get(0).get(r.rows().get(6)[0]), Exl2Params.MLP_OPTIONS.get(6).get(0));
        for (int i = 0; i < 17; i++) {
            for (int j = 0; j < 3; j++) assertEquals(Exl2Params.MLP_OPTIONS.get(i).get(j), r.perProjection().get(j).get(r.rows().get(i)[j]));
        }
        Exl2Params.Reduced noGate = Exl2Params.reduced(Exl2Params.MLP_OPTIONS, true);
        assertTrue(noGate.perProjection().get(0).isEmpty());
        assertEquals(2, noGate.rows().get(0).length);
    }

    @Test
    void refusesWhatExLlamaV2CannotStore() {
        assertThrows(QtoolException.class, () -> Exl2Params.parse("1:7b_128g"));
        assertThrows(QtoolException.class, () -> Exl2Params.parse("1:4b_48g"));
        assertThrows(QtoolException.class, () -> Exl2Params.parse("0.5:3b_64g/0.5:4b_64g"));
        assertThrows(QtoolException.class, () -> Exl2Params.parse("0.5:4b_64g/0.4:3b_64g"));
        assertThrows(QtoolException.class, () -> Exl2Params.parse("1:4b_128g s8"));
        Exl2Params.parse("1:2b_16g").requireStorable(48, 32, "t");
        QtoolException e = assertThrows(QtoolException.class, () -> Exl2Params.parse("1:4b_128g").requireStorable(176, 32, "x.down_proj"));
        assertTrue(e.getMessage().contains("x.down_proj") && e.getMessage().contains("48 rows"), e.getMessage());
    }
}
