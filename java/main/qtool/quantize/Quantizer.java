package qtool.quantize;

/**
 * The uniform grid of IST-DASLab/gptq's {@code quant.py}: per output row (gptq.py's {@code perchannel=True,
 * weight=True}), a scale and an integer-valued zero from the row's min and max, and
 * {@code quantize(x) = scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)}.
 *
 * <p>Arithmetic is float32 like the PyTorch original, so the same inputs give the same grid: {@link Math#rint} is
 * torch.round (half to even), divisions and products round to float as torch's fp32 kernels do. The one difference
 * is the mse search's error sum, accumulated here in double (torch sums float32 pairwise), which can only matter
 * when two shrink factors tie to the last bit.
 */
public final class Quantizer {
    /** gptq.py's {@code Quantizer.configure} defaults for the mse search. */
    public static final double MSE_NORM = 2.4;
    public static final int MSE_GRID = 100;
    public static final double MSE_MAX_SHRINK = 0.8;

    /** Scale and zero of one row (or one row's group). The zero is integer-valued, stored as float as gptq.py does. */
    public record Grid(float scale, float zero) {}

    private final int maxq;
    private final boolean sym;
    private final boolean mse;
    /** The least asymmetric zero point: 1 for a v1 checkpoint ({@link GptqParams#v1Zeros}), else 0. */
    private final float minZero;

    public Quantizer(int bits, boolean sym, boolean mse) {
        this(bits, sym, mse, false);
    }

    public Quantizer(int bits, boolean sym, boolean mse, boolean v1Zeros) {
        this.maxq = (1 << bits) - 1;
        this.sym = sym;
        this.mse = mse;
        this.minZero = v1Zeros ? 1 : 0;
    }

    public static Quantizer of(GptqParams p) {
        return new Quantizer(p.bits(), p.sym(), p.mse(), p.v1Zeros());
    }

    public int maxq() {
        return maxq;
    }

    /** gptq.py's {@code find_params} for one row: the values {@code x[from, to)}. */
    public Grid findParams(float[] x, int from, int to) {
        // The range always contains 0, so a row of positive weights still represents 0 exactly.
        float xmin = 0, xmax = 0;
        for (int i = from; i < to; i++) {
            xmin = Math.min(xmin, x[i]);
            xmax = Math.max(xmax, x[i]);
        }
        if (sym) {
            xmax = Math.max(Math.abs(xmin), xmax);
            if (xmin < 0) xmin = -xmax; // as gptq.py: a row with no negative value keeps xmin = 0
        }
        if (xmin == 0 && xmax == 0) { // an all-zero row: any grid is exact, this one avoids scale 0
            xmin = -1;
            xmax = 1;
        }
        float scale = (xmax - xmin) / maxq;
        float zero = sym ? (maxq + 1) / 2 : Math.max(minZero, (float) Math.rint(-xmin / scale));
        if (!mse) return new Grid(scale, zero);

        double best = Double.POSITIVE_INFINITY;
        int steps = (int) (MSE_MAX_SHRINK * MSE_GRID);
        for (int i = 0; i < steps; i++) {
            float p = (float) (1 - (double) i / MSE_GRID);
            float xmin1 = p * xmin;
            float xmax1 = p * xmax;
            float scale1 = (xmax1 - xmin1) / maxq;
            float zero1 = sym ? zero : Math.max(minZero, (float) Math.rint(-xmin1 / scale1));
            double err = 0;
            for (int j = from; j < to; j++) {
                float d = Math.abs(quantize(x[j], scale1, zero1, maxq) - x[j]);
                err += Math.pow(d, MSE_NORM);
            }
            if (err < best) {
                best = err;
                scale = scale1;
                zero = zero1;
            }
        }
        return new Grid(scale, zero);
    }

    /**
     * {@code find_params(W[:, colFrom:colTo], weight=True)} for a row-major [rows, cols] matrix: one grid per row
     * over that column range.
     */
    public Grid[] findParams(float[] w, int rows, int cols, int colFrom, int colTo) {
        Grid[] grids = new Grid[rows];
        for (int r = 0; r < rows; r++) grids[r] = findParams(w, r * cols + colFrom, r * cols + colTo);
        return grids;
    }

    /** The integer code of x: clamp(round(x / scale) + zero, 0, maxq). */
    public static int code(float x, float scale, float zero, int maxq) {
        float q = (float) Math.rint(x / scale) + zero;
        return (int) Math.min(Math.max(q, 0f), (float) maxq);
    }

    /** The value a code stands for: scale * (code - zero). */
    public static float dequantize(int code, float scale, float zero) {
        return scale * (code - zero);
    }

    /** gptq.py's {@code quantize(x, scale, zero, maxq)}: x rounded onto the grid. */
    public static float quantize(float x, float scale, float zero, int maxq) {
        return dequantize(code(x, scale, zero, maxq), scale, zero);
    }
}
