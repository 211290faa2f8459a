package qtool.backend;

/**
 * The inner loops of {@link CpuBackend}, over heap {@code float[]} at element offsets. Two implementations:
 * {@link VectorKernels} (SIMD through the incubating Vector API) when the JVM was started with
 * {@code --add-modules jdk.incubator.vector}, else {@link ScalarKernels} (plain Java, several times slower).
 * CpuBackend holds the chosen one in a static final field, so the JIT binds every call to that one class.
 */
interface CpuKernels {

    /** True when the JVM resolved the Vector API module (it is never resolved unless asked for). */
    static boolean vectorModulePresent() {
        return ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent();
    }

    /**
     * VectorKernels when the module is present (and {@code -Dqtool.cpu.scalar=true} does not ask for plain Java);
     * loaded by name so that without the module the class is never touched.
     */
    static CpuKernels load() {
        if (vectorModulePresent() && !Boolean.getBoolean("qtool.cpu.scalar")) {
            try {
                return (CpuKernels) Class.forName("qtool.backend.VectorKernels").getDeclaredConstructor().newInstance();
            } catch (ReflectiveOperationException | LinkageError e) {
                // fall through: a JVM without a usable Vector API still computes, only slower
            }
        }
        return new ScalarKernels();
    }

    /** "vector (256-bit)" or "scalar": for the backend's description. */
    String describe();

    /**
     * Columns per packed panel of B in {@link #tile}: the micro-kernel's width. B is packed as panels of this many
     * columns, each panel {@code [k][panelWidth]} row-major, zero-padded past the matrix's last column.
     */
    int panelWidth();

    /**
     * The GEMM micro-kernel: {@code c[r, j] = sum_i a[r, i] * panel[i, j]} for {@code r < mr} (at most 4),
     * {@code j < nc} (at most {@link #panelWidth}), {@code i < k}. Rows of a and c are {@code lda} and
     * {@code ldc} apart; the panel starts at {@code b[bo]}. Each sum runs over i in order. Overwrites c.
     */
    void tile(float[] a, int ao, int lda, int mr, float[] b, int bo, int k, float[] c, int co, int ldc, int nc);

    /** sum_i a[ao + i] * b[bo + i]. */
    float dot(float[] a, int ao, float[] b, int bo, int n);

    /** sum_i x[xo + i]^2. */
    float sumSquares(float[] x, int xo, int n);

    /** out[i] = w[i] * (x[i] * inv) (RMSNorm's second pass; out may be x). */
    void scaleMul(float[] out, int oo, float[] x, int xo, float inv, float[] w, int wo, int n);

    /** a[i] += b[i]. */
    void add(float[] a, int ao, float[] b, int bo, int n);

    /** out[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u (out may be g). */
    void siluMul(float[] out, int oo, float[] g, int go, float[] u, int uo, int n);

    /** max_i a[ao + i] (n ≥ 1). */
    float max(float[] a, int ao, int n);

    /**
     * Softmax down each column of a panel {@code s[so ...]} of {@code rows × panelWidth}: per column j,
     * e[p][j] = exp(s[p][j] · scale − max_p(s[p][j]) · scale) replaces s, and sums[sumOff + j] = sum_p e[p][j]
     * (added in order of p). −inf entries become 0. Attention's weights, unnormalized.
     */
    void softmaxColumns(float[] s, int so, int rows, float scale, float[] sums, int sumOff);

    /** sum_i exp(a[i] - shift), summed more precisely than in one float (cross-entropy over a whole vocabulary). */
    double expSum(float[] a, int ao, int n, float shift);
}
