package qtool.quantize;

import qtool.QtoolException;

/**
 * The settings of one GPTQ run over a linear layer, named as IST-DASLab/gptq's {@code fasterquant} and AutoGPTQ's
 * quantize config name them.
 *
 * @param bits         code width: 2, 3, 4 or 8 (the widths the GPTQ checkpoint layout packs)
 * @param groupSize    input columns sharing one scale/zero per output row; -1 = one group per row
 * @param sym          symmetric grid: zero fixed at 2^(bits-1), range ±max|w|; else min/max with a rounded zero
 * @param actOrder     quantize columns by decreasing Hessian diagonal ({@code desc_act})
 * @param damp         fraction of the mean Hessian diagonal added to the diagonal ({@code percdamp}, 0.01 in gptq.py)
 * @param blockSize    columns per lazy batch update (128 in gptq.py); changes speed, not the result in exact arithmetic
 * @param staticGroups all group scales/zeros from the original weights before any update (AutoGPTQ's
 *                     {@code static_groups}); with act-order this keeps g_idx monotonic
 * @param mse          search the range shrink that minimises |w - q|^2.4 per row and group (gptq.py's {@code mse})
 * @param v1Zeros      asymmetric zero points are kept at 1 or more: a v1 checkpoint stores z − 1 and cannot hold 0
 *                     (see GptqLayout). gptq.py's range always contains 0, so a group whose values are all positive,
 *                     or whose negative side is under half a step (common after AWQ scaling), gets z = 0 otherwise.
 */
public record GptqParams(int bits, int groupSize, boolean sym, boolean actOrder, double damp, int blockSize,
                         boolean staticGroups, boolean mse, boolean v1Zeros) {

    public static final double DEFAULT_DAMP = 0.01;
    public static final int DEFAULT_BLOCK_SIZE = 128;

    public GptqParams {
        if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
            throw new QtoolException("GPTQ bits must be 2, 3, 4 or 8 (the widths the GPTQ checkpoint layout packs), not " + bits);
        }
        if (groupSize == 0 || groupSize < -1) {
            throw new QtoolException("GPTQ group size must be -1 (one group per row) or a positive column count such as 32, 64, 128, not " + groupSize);
        }
        if (!(damp >= 0 && damp <= 1)) { // also rejects NaN
            throw new QtoolException("GPTQ damp must be a fraction of the mean Hessian diagonal in [0, 1] (default 0.01), not " + damp);
        }
        if (blockSize <= 0) {
            throw new QtoolException("GPTQ block size must be positive (default 128), not " + blockSize);
        }
        if (staticGroups && groupSize == -1) {
            throw new QtoolException("GPTQ static groups need a group size: with group size -1 there is one group per row, computed up front anyway");
        }
    }

    /** gptq.py's defaults for a bit width: group size 128, symmetric, no act-order, damp 0.01, block 128. */
    public static GptqParams of(int bits) {
        return new GptqParams(bits, 128, true, false, DEFAULT_DAMP, DEFAULT_BLOCK_SIZE, false, false, false);
    }

    public GptqParams withBits(int newBits) {
        return new GptqParams(newBits, groupSize, sym, actOrder, damp, blockSize, staticGroups, mse, v1Zeros);
    }

    public GptqParams withGroupSize(int newGroupSize) {
        return new GptqParams(bits, newGroupSize, sym, actOrder, damp, blockSize, staticGroups && newGroupSize != -1, mse, v1Zeros);
    }

    public GptqParams withSym(boolean newSym) {
        return new GptqParams(bits, groupSize, newSym, actOrder, damp, blockSize, staticGroups, mse, v1Zeros);
    }

    public GptqParams withActOrder(boolean newActOrder) {
        return new GptqParams(bits, groupSize, sym, newActOrder, damp, blockSize, staticGroups, mse, v1Zeros);
    }

    public GptqParams withDamp(double newDamp) {
        return new GptqParams(bits, groupSize, sym, actOrder, newDamp, blockSize, staticGroups, mse, v1Zeros);
    }

    public GptqParams withBlockSize(int newBlockSize) {
        return new GptqParams(bits, groupSize, sym, actOrder, damp, newBlockSize, staticGroups, mse, v1Zeros);
    }

    public GptqParams withStaticGroups(boolean newStaticGroups) {
        return new GptqParams(bits, groupSize, sym, actOrder, damp, blockSize, newStaticGroups, mse, v1Zeros);
    }

    public GptqParams withMse(boolean newMse) {
        return new GptqParams(bits, groupSize, sym, actOrder, damp, blockSize, staticGroups, newMse, v1Zeros);
    }

    public GptqParams withV1Zeros(boolean newV1Zeros) {
        return new GptqParams(bits, groupSize, sym, actOrder, damp, blockSize, staticGroups, mse, newV1Zeros);
    }

    /** The largest code, 2^bits - 1. */
    public int maxq() {
        return (1 << bits) - 1;
    }

    /** Columns per group for a layer with {@code columns} inputs (the whole row when groupSize is -1). */
    public int groupWidth(int columns) {
        return groupSize == -1 ? columns : groupSize;
    }

    /** Groups per row: ceil(columns / groupSize), the last one ragged when columns is not a multiple; 1 for -1. */
    public int numGroups(int columns) {
        return groupSize == -1 ? 1 : (columns + groupSize - 1) / groupSize;
    }
}
