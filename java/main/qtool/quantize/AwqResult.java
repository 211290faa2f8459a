package qtool.quantize;

/**
 * What AWQ's final round-to-nearest made of one (scaled, clipped) linear. Matrices are row-major.
 *
 * @param out         output features (rows of W)
 * @param in          input features (columns of W)
 * @param params      the settings used
 * @param codes       [out, in] unsigned codes in [0, 2^bits − 1], one byte each ({@link #code} reads one)
 * @param scales      [groups, out] scale of each group and output row, each exactly representable in fp16
 * @param zeros       [groups, out] integer zero point (2^(bits−1) for every group without {@code zero_point})
 * @param dequantized [out, in] scales[g][o] · (codes[o][i] − zeros[g][o]) with g = i / groupWidth, exactly
 */
public record AwqResult(int out, int in, AwqParams params, byte[] codes, float[] scales, int[] zeros, float[] dequantized) {

    public int numGroups() {
        return scales.length / out;
    }

    public int code(int o, int i) {
        return codes[o * in + i] & 0xFF;
    }
}
