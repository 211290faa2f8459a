package qtool.quantize;

import java.util.stream.IntStream;

/**
 * Dense Cholesky pieces for GPTQ in double precision, on row-major n×n arrays (upper triangles only; the strictly
 * lower part is scratch). Both routines are left-looking over blocks of {@link #BLOCK} rows: the contribution of
 * every finished row to a block is one pass of row-contiguous AXPYs (which the JIT vectorises), split over column
 * chunks across threads; the rows inside a block then finish one by one. That keeps the n³/6 multiply-adds of each
 * routine streaming through cache instead of walking columns.
 */
final class Cholesky {
    static final int BLOCK = 32;
    private static final int CHUNK = 128;

    private Cholesky() {}

    /**
     * A = UᵀU: overwrites the upper triangle of {@code a} with U. Returns false (a then holds garbage) when a pivot
     * is not positive, i.e. A is not numerically positive definite.
     */
    static boolean upperInPlace(double[] a, int n) {
        for (int b0 = 0; b0 < n; b0 += BLOCK) {
            int b1 = Math.min(b0 + BLOCK, n);
            int rows = b1 - b0;
            int width = n - b0;
            int start = b0;
            if (b0 > 0) {
                // A[r][c] -= sum over finished rows m < b0 of U[m][r] * U[m][c], for r in the block and c >= r.
                int chunks = (width + CHUNK - 1) / CHUNK;
                IntStream.range(0, chunks).parallel().forEach(ch -> {
                    int c0 = start + ch * CHUNK, c1 = Math.min(c0 + CHUNK, n), len = c1 - c0;
                    double[] acc = new double[rows * len];
                    int m = 0;
                    for (; m + 4 <= start; m += 4) { // four source rows per pass: a quarter of the acc traffic
                        int s0 = m * n + c0, s1 = s0 + n, s2 = s1 + n, s3 = s2 + n;
                        for (int r = 0; r < rows; r++) {
                            int col = m * n + start + r;
                            double k0 = a[col], k1 = a[col + n], k2 = a[col + 2 * n], k3 = a[col + 3 * n];
                            int accRow = r * len;
                            for (int c = 0; c < len; c++) {
                                acc[accRow + c] += k0 * a[s0 + c] + k1 * a[s1 + c] + k2 * a[s2 + c] + k3 * a[s3 + c];
                            }
                        }
                    }
                    for (; m < start; m++) {
                        int mRow = m * n;
                        for (int r = 0; r < rows; r++) {
                            double coef = a[mRow + start + r];
                            if (coef == 0) continue;
                            int accRow = r * len;
                            for (int c = 0; c < len; c++) acc[accRow + c] += coef * a[mRow + c0 + c];
                        }
                    }
                    for (int r = 0; r < rows; r++) {
                        int row = (start + r) * n;
                        for (int c = Math.max(c0, start + r); c < c1; c++) a[row + c] -= acc[r * len + c - c0];
                    }
                });
            }
            // Inside the block: row r takes the contributions of the block's earlier rows, then is normalised.
            for (int r = b0; r < b1; r++) {
                int row = r * n;
                for (int m = b0; m < r; m++) {
                    double coef = a[m * n + r];
                    if (coef == 0) continue;
                    int mRow = m * n;
                    for (int c = r; c < n; c++) a[row + c] -= coef * a[mRow + c];
                }
                double pivot = a[row + r];
                if (!(pivot > 0) || Double.isInfinite(pivot)) return false;
                double d = Math.sqrt(pivot);
                a[row + r] = d;
                double inv = 1 / d;
                for (int c = r + 1; c < n; c++) a[row + c] *= inv;
            }
        }
        return true;
    }

    /**
     * Overwrites the upper triangular U in {@code a} (positive diagonal) with U⁻¹, also upper triangular (zeroing the
     * strictly lower part), by back
     * substitution over blocks of rows from the bottom: row i of Y = U⁻¹ is (e_i − Σ_{k>i} U[i][k]·Y[k]) / U[i][i].
     * Returns false if the result is not finite.
     */
    static boolean invertUpperInPlace(double[] a, int n) {
        // Zeros below the diagonal let whole rows be read as rows of the upper triangular Y.
        IntStream.range(0, n).parallel().forEach(i -> java.util.Arrays.fill(a, i * n, i * n + i, 0));
        for (int b1 = n; b1 > 0; b1 -= BLOCK) {
            int b0 = Math.max(0, b1 - BLOCK);
            int rows = b1 - b0;
            int end = b1;
            int width = n - b0;
            // acc[r][c - b0] = Σ_{k >= b1} U[b0 + r][k] · Y[k][c]; only c >= k contribute, so c >= b1.
            double[] acc = new double[rows * width];
            if (b1 < n) {
                int chunks = (n - b1 + CHUNK - 1) / CHUNK;
                IntStream.range(0, chunks).parallel().forEach(ch -> {
                    int c0 = end + ch * CHUNK, c1 = Math.min(c0 + CHUNK, n);
                    int k = end;
                    for (; k + 4 <= c1; k += 4) { // four rows of Y per pass; Y[k + j][c] = 0 for c < k + j
                        int from = Math.max(k, c0);
                        int y0 = k * n, y1 = y0 + n, y2 = y1 + n, y3 = y2 + n;
                        for (int r = 0; r < rows; r++) {
                            int uRow = (b0 + r) * n + k;
                            double k0 = a[uRow], k1 = a[uRow + 1], k2 = a[uRow + 2], k3 = a[uRow + 3];
                            int accRow = r * width - b0;
                            for (int c = from; c < c1; c++) {
                                acc[accRow + c] += k0 * a[y0 + c] + k1 * a[y1 + c] + k2 * a[y2 + c] + k3 * a[y3 + c];
                            }
                        }
                    }
                    for (; k < c1; k++) {
                        int kRow = k * n;
                        int from = Math.max(k, c0);
                        for (int r = 0; r < rows; r++) {
                            double coef = a[(b0 + r) * n + k];
                            if (coef == 0) continue;
                            int accRow = r * width - b0;
                            for (int c = from; c < c1; c++) acc[accRow + c] += coef * a[kRow + c];
                        }
                    }
                });
            }
            double[] y = new double[width];
            for (int i = b1 - 1; i >= b0; i--) {
                int row = i * n;
                int accRow = (i - b0) * width - b0;
                // y[c - b0] for c >= i: the identity minus the contributions of rows below i.
                for (int c = i; c < n; c++) y[c - b0] = -acc[accRow + c];
                y[i - b0] += 1;
                for (int k = i + 1; k < b1; k++) {
                    double coef = a[row + k];
                    if (coef == 0) continue;
                    int kRow = k * n;
                    for (int c = k; c < n; c++) y[c - b0] -= coef * a[kRow + c];
                }
                double inv = 1 / a[row + i];
                for (int c = i; c < n; c++) {
                    double v = y[c - b0] * inv;
                    if (!Double.isFinite(v)) return false;
                    a[row + c] = v;
                }
            }
        }
        return true;
    }
}
