package qtool.format.gguf;

import java.util.ArrayList;
import java.util.List;

/**
 * llama.cpp's {@code llama_ftype}: what {@code general.file_type} records and what {@code llama-quantize} takes as its
 * type argument. Each names a default tensor type; the K-quant "mixes" (_S, _M, _L, and Q2_K) put more bits into some
 * tensors ({@link LlamaQuantTypes}). Q3_K, Q4_K and Q5_K are llama-quantize's aliases of Q3_K_M, Q4_K_M and Q5_K_M.
 */
public enum LlamaFileType {
    F32(0, GgmlType.F32),
    F16(1, GgmlType.F16),
    Q4_0(2, GgmlType.Q4_0),
    Q4_1(3, GgmlType.Q4_1),
    Q8_0(7, GgmlType.Q8_0),
    Q5_0(8, GgmlType.Q5_0),
    Q5_1(9, GgmlType.Q5_1),
    Q2_K(10, GgmlType.Q2_K),
    Q3_K_S(11, GgmlType.Q3_K),
    Q3_K_M(12, GgmlType.Q3_K),
    Q3_K_L(13, GgmlType.Q3_K),
    Q4_K_S(14, GgmlType.Q4_K),
    Q4_K_M(15, GgmlType.Q4_K),
    Q5_K_S(16, GgmlType.Q5_K),
    Q5_K_M(17, GgmlType.Q5_K),
    Q6_K(18, GgmlType.Q6_K),
    Q2_K_S(21, GgmlType.Q2_K),
    BF16(32, GgmlType.BF16);

    /** The llama_ftype number ({@code general.file_type}). */
    public final int id;
    /** The type of every quantizable tensor unless the mix says otherwise. */
    public final GgmlType defaultType;

    LlamaFileType(int id, GgmlType defaultType) {
        this.id = id;
        this.defaultType = defaultType;
    }

    /** By llama-quantize's name (case-insensitive, aliases Q3_K/Q4_K/Q5_K included), or null. */
    public static LlamaFileType byName(String name) {
        String n = name.toUpperCase();
        switch (n) {
            case "Q3_K" -> { return Q3_K_M; }
            case "Q4_K" -> { return Q4_K_M; }
            case "Q5_K" -> { return Q5_K_M; }
            default -> {
                for (LlamaFileType t : values()) if (t.name().equals(n)) return t;
                return null;
            }
        }
    }

    /** Every accepted name, lower case, for help and error messages. */
    public static List<String> names() {
        List<String> out = new ArrayList<>();
        for (LlamaFileType t : values()) out.add(t.name().toLowerCase());
        out.addAll(List.of("q3_k", "q4_k", "q5_k"));
        return out;
    }
}
