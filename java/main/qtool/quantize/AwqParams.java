package qtool.quantize;

import qtool.QtoolException;

/**
 * The settings of AWQ, named as AutoAWQ's {@code quant_config} names them.
 *
 * @param bits      code width ({@code w_bit}); the search works for 2–8 bits, the GEMM checkpoint layout packs 4
 * @param groupSize input columns sharing one scale/zero per output row ({@code q_group_size}); -1 = the whole row.
 *                  A group size that does not divide a linear's input makes ragged groups: ceil(in / g) groups, the
 *                  last one shorter (the quantizer handles them; the GEMM layout cannot hold them, see AwqLayout)
 * @param zeroPoint asymmetric grid with a zero point per group (AutoAWQ's default); else symmetric, codes
 *                  −2^(bits−1) … 2^(bits−1)−1 scaled by max|w| / (2^(bits−1) − 1)
 */
public record AwqParams(int bits, int groupSize, boolean zeroPoint) {
    public AwqParams {
        if (bits < 2 || bits > 8) throw new QtoolException("AWQ w_bit must be between 2 and 8, not " + bits);
        if (groupSize == 0 || groupSize < -1) {
            throw new QtoolException("AWQ q_group_size must be -1 (one group per row) or a positive column count such as 64 or 128, not " + groupSize);
        }
    }

    /** The AWQ grid GPTQ's settings describe, for the scale search in front of GPTQ ({@code --awq-scale}). */
    public static AwqParams of(GptqParams p) {
        return new AwqParams(p.bits(), p.groupSize(), !p.sym());
    }

    /** Columns per group for a linear with {@code in} inputs. */
    public int groupWidth(int in) {
        return groupSize == -1 ? in : groupSize;
    }

    /** ceil(in / groupWidth). */
    public int numGroups(int in) {
        int g = groupWidth(in);
        return (in + g - 1) / g;
    }
}
