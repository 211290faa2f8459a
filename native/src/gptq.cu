// Gram matrices and GPTQ on the GPU (qt_gram_accumulate, qt_gptq_*): the CUDA version of
// java/main/qtool/quantize/Gptq.java, which is the reference; the comments there give gptq.py's semantics.
//
// Division of labour: Java (CudaBackend.gptq) reads diag(H) through qt_gptq_diagonal, computes the act-order
// permutation, the mean diagonal, the damping retries and g_idx with Gptq.java's own helpers; this file builds
// U = the upper Cholesky factor of H⁻¹ (qt_gptq_inverse_factor, in float64 through cuSOLVER) and runs the column
// loop (qt_gptq_quantize).
//
// The column loop, per block of block_size (<= 128) columns:
//   gptq_block_kernel: the block's columns one after another, every row at once. A row belongs to 8 lanes of a
//     warp (4 rows per warp); lane `sub` holds columns sub, sub + 8, ... of the block in registers. For column t the
//     owner broadcasts w, every lane quantizes it (the same arithmetic as Quantizer, in the same order), and each
//     lane subtracts err·U[t, c] from its columns c > t, with U's diagonal block in shared memory. At a group
//     boundary the 8 lanes find the row's grid from the weights in global memory, where the block's columns still
//     hold their values from the block's start (the kernel writes them back only at its end), as gptq.py reads
//     W[:, i:i+g] and not its block copy W1.
//   one SGEMM: W[:, i2:] -= Err[:, block] · U[i1:i2, i2:].
// Elementwise arithmetic follows Java's: IEEE division, rint, no fused multiply-add in the in-block update
// (__fmul_rn), so codes differ from the CPU's only where a summation order differs (the SGEMM's).
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "blas_dyn.h"
#include "internal.h"

namespace qt {
namespace {

// ---- extra cuBLAS / cuSOLVER entry points, looked up in the libraries qt_init loaded ------------------------------

using SsyrkFn = blas::Status (*)(blas::Handle, int uplo, int trans, int n, int k, const float* alpha, const float* a,
                                 int lda, const float* beta, float* c, int ldc);  // cublasSsyrk_v2
using DpotrfBufferSizeFn = blas::Status (*)(blas::SolverHandle, int uplo, int n, double* a, int lda, int* lwork);
using DpotrfFn = blas::Status (*)(blas::SolverHandle, int uplo, int n, double* a, int lda, double* work, int lwork,
                                  int* dev_info);  // cusolverDnDpotrf
using DtrsmFn = blas::Status (*)(blas::Handle, int side, int uplo, int trans, int diag, int m, int n,
                                 const double* alpha, const double* a, int lda, double* b, int ldb);  // cublasDtrsm_v2
using XtrtriBufferSizeFn = blas::Status (*)(blas::SolverHandle, int uplo, int diag, int64_t n, cudaDataType type,
                                            void* a, int64_t lda, size_t* device_bytes, size_t* host_bytes);
using XtrtriFn = blas::Status (*)(blas::SolverHandle, int uplo, int diag, int64_t n, cudaDataType type, void* a,
                                  int64_t lda, void* device_buffer, size_t device_bytes, void* host_buffer,
                                  size_t host_bytes, int* dev_info);  // cusolverDnXtrtri

constexpr int kDiagNonUnit = 0;  // CUBLAS_DIAG_NON_UNIT
constexpr int kSideLeft = 0;     // CUBLAS_SIDE_LEFT

struct Extra {
    SsyrkFn ssyrk = nullptr;
    DtrsmFn dtrsm = nullptr;
    DpotrfBufferSizeFn dpotrf_buffer_size = nullptr;
    DpotrfFn dpotrf = nullptr;
    XtrtriBufferSizeFn xtrtri_buffer_size = nullptr;
    XtrtriFn xtrtri = nullptr;
};

std::mutex extra_mutex;
Extra extra;
bool extra_blas = false, extra_solver = false;

template <typename Fn>
bool lookup(int library, const char* symbol, Fn* out, std::string& why) {
    const char* path = qt_loaded_library(library);
    if (path == nullptr) {
        why = std::string(library == QT_LIB_CUBLAS ? "cuBLAS" : "cuSOLVER") + " is not loaded";
        return false;
    }
    void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);  // already loaded by qt_init: only a reference
    void* address = handle != nullptr ? dlsym(handle, symbol) : nullptr;
    if (address == nullptr) {
        why = std::string(path) + " lacks " + symbol;
        return false;
    }
    *out = reinterpret_cast<Fn>(address);
    return true;
}

// The cuBLAS entry points (ssyrk); QT_ERR_NOT_INITIALIZED before qt_init.
int extra_blas_api(const Extra** out, const char* caller) {
    if (blas::api() == nullptr) return fail(QT_ERR_NOT_INITIALIZED, "%s needs cuBLAS: call qt_init first", caller);
    std::lock_guard<std::mutex> lock(extra_mutex);
    if (!extra_blas) {
        std::string why;
        if (!lookup(QT_LIB_CUBLAS, "cublasSsyrk_v2", &extra.ssyrk, why))
            return fail(QT_ERR_LIBRARY_NOT_FOUND, "%s: %s", caller, why.c_str());
        extra_blas = true;
    }
    *out = &extra;
    return QT_OK;
}

int extra_solver_api(const Extra** out, const char* caller) {
    if (blas::api() == nullptr) return fail(QT_ERR_NOT_INITIALIZED, "%s needs cuSOLVER: call qt_init first", caller);
    std::lock_guard<std::mutex> lock(extra_mutex);
    if (!extra_solver) {
        std::string why;
        if (!lookup(QT_LIB_CUBLAS, "cublasDtrsm_v2", &extra.dtrsm, why) ||
            !lookup(QT_LIB_CUSOLVER, "cusolverDnDpotrf_bufferSize", &extra.dpotrf_buffer_size, why) ||
            !lookup(QT_LIB_CUSOLVER, "cusolverDnDpotrf", &extra.dpotrf, why) ||
            !lookup(QT_LIB_CUSOLVER, "cusolverDnXtrtri_bufferSize", &extra.xtrtri_buffer_size, why) ||
            !lookup(QT_LIB_CUSOLVER, "cusolverDnXtrtri", &extra.xtrtri, why))
            return fail(QT_ERR_LIBRARY_NOT_FOUND, "%s: %s", caller, why.c_str());
        extra_solver = true;
    }
    *out = &extra;
    return QT_OK;
}

// cuSOLVER's device work buffer, per device, grown as needed; guarded by blas::handle_mutex().
constexpr int kMaxDevices = 64;
void* solver_buffer[kMaxDevices];
size_t solver_buffer_bytes[kMaxDevices];

int ensure_solver_buffer(size_t bytes, void** out) {
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= kMaxDevices) return fail(QT_ERR_UNSUPPORTED, "GPTQ solver buffer: device %d", device);
    if (solver_buffer_bytes[device] < bytes) {
        if (solver_buffer[device] != nullptr) QT_CUDA_TRY(cudaFree(solver_buffer[device]));  // waits for its users
        solver_buffer[device] = nullptr;
        solver_buffer_bytes[device] = 0;
        QT_TRY(qt_malloc(&solver_buffer[device], bytes));
        solver_buffer_bytes[device] = bytes;
    }
    *out = solver_buffer[device];
    return QT_OK;
}

// ---- layout of the caller's workspace -----------------------------------------------------------------------------

constexpr int kMaxBlock = 128;  // widest lazy-update block: lanes per row x registers per lane
constexpr int kBlockWarps = 8;
constexpr int kMinRowsPerBlock = kBlockWarps * 2;  // with 16 lanes per row
constexpr unsigned kFull = 0xffffffffu;

size_t align256(size_t bytes) { return (bytes + 255) & ~static_cast<size_t>(255); }

struct QuantizeLayout {
    size_t wp, err, codes, invperm, loss, total;  // byte offsets
};

QuantizeLayout quantize_layout(int out, int in, int block_size) {
    QuantizeLayout l{};
    size_t at = 0;
    l.wp = at;
    at += align256(sizeof(float) * static_cast<size_t>(out) * in);
    l.err = at;
    at += align256(sizeof(float) * static_cast<size_t>(out) * block_size);
    l.codes = at;
    at += align256(static_cast<size_t>(out) * in);
    l.invperm = at;
    at += align256(sizeof(int) * static_cast<size_t>(in));
    l.loss = at;
    at += align256(sizeof(double) * static_cast<size_t>((out + kMinRowsPerBlock - 1) / kMinRowsPerBlock));
    l.total = at;
    return l;
}

// H⁻¹'s triangular factor is inverted by a triangular solve against the identity (cuBLAS DTRSM, on the FP64 tensor
// cores; a second n x n matrix) or by cuSOLVER's Xtrtri in place. QTOOL_GPTQ_INVERSE=trtri|trsm picks one.
bool use_trsm() {
    const char* v = getenv("QTOOL_GPTQ_INVERSE");
    return v == nullptr || strcmp(v, "trtri") != 0;
}

// Lanes sharing one row in the column loop: 8 (16 columns each) or 16 (8 each); QTOOL_GPTQ_LANES overrides.
int lanes_per_row() {
    const char* v = getenv("QTOOL_GPTQ_LANES");
    return v != nullptr && strcmp(v, "16") == 0 ? 16 : 8;
}

bool profiling() {
    const char* v = getenv("QTOOL_GPTQ_PROFILE");
    return v != nullptr && strcmp(v, "1") == 0;
}

size_t factor_matrix_bytes(int n) { return align256(sizeof(double) * static_cast<size_t>(n) * n); }
size_t factor_bytes(int n) { return factor_matrix_bytes(n) * (use_trsm() ? 2 : 1) + 256; }

__global__ void identity_kernel(double* b, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) b[static_cast<size_t>(i) * n + j] = i == j ? 1.0 : 0.0;
}


// ---- kernels: the inverse's factor ---------------------------------------------------------------------------------

// A (row-major, float64) = J·P·(H' + damp·I)·Pᵀ·J on and above the diagonal, zero below: A[i][j] =
// H'[perm[n-1-i]][perm[n-1-j]], H' = H with zero diagonals set to 1 (Gptq.upperFactorOfInverse).
__global__ void build_factor_input_kernel(double* a, const float* h, const int* perm, int n, double damp_abs) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
    double v = 0;
    if (j >= i) {
        const int ra = perm[n - 1 - i];
        if (j == i) {
            const float d = h[static_cast<size_t>(ra) * n + ra];
            v = static_cast<double>(d == 0.f ? 1.f : d) + damp_abs;
        } else {
            v = h[static_cast<size_t>(ra) * n + perm[n - 1 - j]];
        }
    }
    a[static_cast<size_t>(i) * n + j] = v;
    }
}

// U[i][j] = (float) R⁻¹[n-1-j][n-1-i] for j >= i, 0 below, through 32x32 tiles; r_inv is row-major upper. Flags a
// diagonal that is not positive and finite (cuSOLVER does not stop at NaN) in *bad.
__global__ void extract_factor_kernel(float* u, const double* r_inv, int n, int* bad) {
    __shared__ double tile[32][33];
    const int i0 = blockIdx.y * 32, j0 = blockIdx.x * 32;
    if (j0 + 31 < i0) {  // wholly below the diagonal
        for (int y = threadIdx.y; y < 32; y += blockDim.y) {
            const int i = i0 + y, j = j0 + threadIdx.x;
            if (i < n && j < n) u[static_cast<size_t>(i) * n + j] = 0.f;
        }
        return;
    }
    // tile[y][x] holds U(i0 + x, j0 + y) = R⁻¹[n-1-j0-y][n-1-i0-x]: consecutive x read consecutive addresses.
    for (int y = threadIdx.y; y < 32; y += blockDim.y) {
        const int a = n - 1 - (j0 + y), b = n - 1 - (i0 + static_cast<int>(threadIdx.x));
        tile[y][threadIdx.x] = (a >= 0 && b >= 0 && a <= b) ? r_inv[static_cast<size_t>(a) * n + b] : 0.0;
    }
    __syncthreads();
    for (int y = threadIdx.y; y < 32; y += blockDim.y) {
        const int i = i0 + y, j = j0 + threadIdx.x;
        if (i >= n || j >= n) continue;
        const float v = j >= i ? static_cast<float>(tile[threadIdx.x][y]) : 0.f;
        u[static_cast<size_t>(i) * n + j] = v;
        if (i == j && !(v > 0.f && v < INFINITY)) atomicExch(bad, 1);
    }
}

// ---- kernels: the column loop --------------------------------------------------------------------------------------

struct Grid {
    float scale, zero;
};

__device__ __forceinline__ int quantize_code(float x, float scale, float zero, int maxq) {
    const float q = rintf(x / scale) + zero;
    return static_cast<int>(fminf(fmaxf(q, 0.f), static_cast<float>(maxq)));
}

__device__ __forceinline__ float dequantize_code(int code, float scale, float zero) {
    return scale * (static_cast<float>(code) - zero);
}

// Quantizer.findParams over x[0, count), shared by the WIDTH lanes of a segment (lane index sub); every lane gets
// the same grid. When h is not NULL, column c counts as 0 where H[col0 + c][col0 + c] == 0 (a dead input).
// All 32 lanes of the warp must call it together (shuffles); rows without work pass count 0.
template <int WIDTH>
__device__ __noinline__ Grid find_grid(const float* x, int count, const float* h, size_t h_stride, int col0, int sub,
                                       int maxq, int sym, bool mse) {
    // sym: 1 symmetric; 0 asymmetric; 2 asymmetric with zero points of at least 1 (a v1 checkpoint stores z - 1)
    const float zmin = sym == 2 ? 1.f : 0.f;
    float xmin = 0.f, xmax = 0.f;
    for (int c = sub; c < count; c += WIDTH) {
        float v = x[c];
        if (h != nullptr && h[static_cast<size_t>(col0 + c) * h_stride] == 0.f) v = 0.f;
        xmin = fminf(xmin, v);
        xmax = fmaxf(xmax, v);
    }
#pragma unroll
    for (int off = WIDTH / 2; off > 0; off >>= 1) {
        xmin = fminf(xmin, __shfl_xor_sync(kFull, xmin, off, WIDTH));
        xmax = fmaxf(xmax, __shfl_xor_sync(kFull, xmax, off, WIDTH));
    }
    if (sym == 1) {
        xmax = fmaxf(fabsf(xmin), xmax);
        if (xmin < 0.f) xmin = -xmax;
    }
    if (xmin == 0.f && xmax == 0.f) {
        xmin = -1.f;
        xmax = 1.f;
    }
    float scale = (xmax - xmin) / static_cast<float>(maxq);
    float zero = sym == 1 ? static_cast<float>((maxq + 1) / 2) : fmaxf(zmin, rintf(-xmin / scale));
    if (!mse) return Grid{scale, zero};
    // Quantizer.MSE_*: 80 shrink steps of 1/100, error |q - x|^2.4 summed in float64.
    double best = INFINITY;
    for (int step = 0; step < 80; step++) {
        const float p = static_cast<float>(1.0 - static_cast<double>(step) / 100);
        const float xmin1 = p * xmin, xmax1 = p * xmax;
        const float scale1 = (xmax1 - xmin1) / static_cast<float>(maxq);
        const float zero1 = sym == 1 ? zero : fmaxf(zmin, rintf(-xmin1 / scale1));
        double err = 0;
        for (int c = sub; c < count; c += WIDTH) {
            float v = x[c];
            if (h != nullptr && h[static_cast<size_t>(col0 + c) * h_stride] == 0.f) v = 0.f;
            const float q = dequantize_code(quantize_code(v, scale1, zero1, maxq), scale1, zero1);
            err += pow(static_cast<double>(fabsf(q - v)), 2.4);
        }
#pragma unroll
        for (int off = WIDTH / 2; off > 0; off >>= 1) err += __shfl_xor_sync(kFull, err, off, WIDTH);
        if (err < best) {
            best = err;
            scale = scale1;
            zero = zero1;
        }
    }
    return Grid{scale, zero};
}

// One warp per (row, group): the grids fixed before the loop. whole_rows: one grid per row from the row as given
// (group size -1, before dead columns are zeroed); else static groups from the weights with dead columns zeroed.
__global__ void up_front_grid_kernel(const float* w, const float* h, float* scales, int* zeros, int out, int in,
                                     int group, int groups, int maxq, int sym, int mse, int whole_rows) {
    const long long item = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x & 31;
    if (item >= static_cast<long long>(out) * groups) return;  // whole warps leave together
    const int o = static_cast<int>(item % out), k = static_cast<int>(item / out);
    const int col0 = whole_rows ? 0 : k * group;
    const int count = whole_rows ? in : min(group, in - col0);
    const Grid g = find_grid<32>(w + static_cast<size_t>(o) * in + col0, count, whole_rows ? nullptr : h,
                                 static_cast<size_t>(in) + 1, col0, lane, maxq, sym, mse != 0);
    if (lane == 0) {
        scales[static_cast<size_t>(k) * out + o] = g.scale;
        zeros[static_cast<size_t>(k) * out + o] = static_cast<int>(g.zero);
    }
}

// wp[o][k] = W[o][perm[k]], 0 where that input is dead; invperm[perm[k]] = k.
__global__ void permute_kernel(float* wp, int* invperm, const float* w, const float* h, const int* perm, int out,
                               int in) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= in) return;
    const int c = perm[k];
    const bool dead = h[static_cast<size_t>(c) * in + c] == 0.f;
    if (blockIdx.y == 0) invperm[c] = k;
    for (int o = blockIdx.y; o < out; o += gridDim.y)
        wp[static_cast<size_t>(o) * in + k] = dead ? 0.f : w[static_cast<size_t>(o) * in + c];
}

// Back to the original column order: dequantized[o][c] = wp[o][invperm[c]], codes likewise.
__global__ void unpermute_kernel(float* dequantized, uint8_t* codes, const float* wp, const uint8_t* codes_p,
                                 const int* invperm, int out, int in) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= in) return;
    const int k = invperm[c];
    for (int o = blockIdx.y; o < out; o += gridDim.y) {
        const size_t row = static_cast<size_t>(o) * in;
        dequantized[row + c] = wp[row + k];
        codes[row + c] = codes_p[row + k];
    }
}

enum GroupMode { kWholeRow = 0, kDynamicGroups = 1, kStaticGroups = 2 };

// Columns [i1, i1 + count) of every row (see the file comment). Dynamic shared memory: U's diagonal block,
// count x kMaxBlock floats. loss_partial[blockIdx.x] accumulates this block's rows' share of the loss.
template <int MODE, int LPR>
__global__ void __launch_bounds__(kBlockWarps * 32)
gptq_block_kernel(float* wp, const float* u, float* err, uint8_t* codes_p, float* scales, int* zeros,
                  double* loss_partial, const int* perm, int out, int in, int i1, int count, int block_size, int group,
                  int maxq, int sym, int mse) {
    constexpr int kLanesPerRow = LPR, kColsPerLane = kMaxBlock / LPR, kRowsPerBlock = kBlockWarps * (32 / LPR);
    extern __shared__ float us[];  // us[t * kMaxBlock + c] = U[i1 + t][i1 + c] for c >= t, else 0
    __shared__ double warp_loss[kBlockWarps];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane & (kLanesPerRow - 1);
    const int o = blockIdx.x * kRowsPerBlock + warp * (32 / kLanesPerRow) + lane / kLanesPerRow;
    const bool valid = o < out;

    for (int idx = threadIdx.x; idx < count * kMaxBlock; idx += blockDim.x) {
        const int t = idx / kMaxBlock, c = idx % kMaxBlock;
        us[idx] = (c >= t && c < count) ? u[static_cast<size_t>(i1 + t) * in + i1 + c] : 0.f;
    }

    float* row = wp + static_cast<size_t>(valid ? o : 0) * in;
    float val[kColsPerLane], ev[kColsPerLane];
    int cv[kColsPerLane];
    float own_scale[MODE == kStaticGroups ? kColsPerLane : 1], own_zero[MODE == kStaticGroups ? kColsPerLane : 1];
#pragma unroll
    for (int k = 0; k < kColsPerLane; k++) {
        const int c = sub + kLanesPerRow * k;
        val[k] = valid && c < count ? row[i1 + c] : 0.f;
        ev[k] = 0.f;
        cv[k] = 0;
        if constexpr (MODE == kStaticGroups) {
            own_scale[k] = 1.f;
            own_zero[k] = 0.f;
            if (valid && c < count) {
                const size_t at = static_cast<size_t>(perm[i1 + c] / group) * out + o;
                own_scale[k] = scales[at];
                own_zero[k] = static_cast<float>(zeros[at]);
            }
        }
    }
    float scale = 1.f, zero = 0.f;
    if constexpr (MODE == kWholeRow) {
        if (valid) {
            scale = scales[o];
            zero = static_cast<float>(zeros[o]);
        }
    }
    int next_group = ((i1 + group - 1) / group) * group;  // dynamic groups: the next column that starts one
    if constexpr (MODE == kDynamicGroups) {
        if (valid && i1 % group != 0) {  // a group that began in an earlier block goes on
            scale = scales[static_cast<size_t>(i1 / group) * out + o];
            zero = static_cast<float>(zeros[static_cast<size_t>(i1 / group) * out + o]);
        }
    }
    __syncthreads();

    double loss = 0;
#pragma unroll
    for (int kk = 0; kk < kColsPerLane; kk++) {
        if (kk * kLanesPerRow >= count) break;
        for (int s = 0; s < kLanesPerRow; s++) {
            const int t = kk * kLanesPerRow + s;
            if (t >= count) break;
            const int i = i1 + t;
            if constexpr (MODE == kDynamicGroups) {
                if (i == next_group) {
                    next_group += group;
                    // The group's columns as gptq.py reads W[:, i:i+g]: this block's still hold their start values.
                    const Grid g = find_grid<kLanesPerRow>(row + i, valid ? min(group, in - i) : 0, nullptr, 0, 0, sub,
                                                           maxq, sym, mse != 0);
                    scale = g.scale;
                    zero = g.zero;
                    if (valid && sub == 0) {
                        scales[static_cast<size_t>(i / group) * out + o] = scale;
                        zeros[static_cast<size_t>(i / group) * out + o] = static_cast<int>(zero);
                    }
                }
            }
            float sc = scale, z = zero;
            if constexpr (MODE == kStaticGroups) {
                sc = __shfl_sync(kFull, own_scale[kk], s, kLanesPerRow);
                z = __shfl_sync(kFull, own_zero[kk], s, kLanesPerRow);
            }
            const float w = __shfl_sync(kFull, val[kk], s, kLanesPerRow);
            const float d = us[t * kMaxBlock + t];
            const int code = quantize_code(w, sc, z, maxq);
            const float q = dequantize_code(code, sc, z);
            const float diff = w - q;
            const float e = diff / d;
            // (w - q)² / U_ii² / 2, in double from e (Java: in float from diff; the same up to rounding)
            if (sub == 0 && valid) loss += 0.5 * static_cast<double>(e) * static_cast<double>(e);
            if (sub == s) {
                val[kk] = q;
                ev[kk] = e;
                cv[kk] = code;
            }
#pragma unroll
            for (int k = kk; k < kColsPerLane; k++) {
                const int c = sub + kLanesPerRow * k;
                if (c > t && c < count) val[k] = __fsub_rn(val[k], __fmul_rn(e, us[t * kMaxBlock + c]));
            }
        }
    }

    if (valid) {
#pragma unroll
        for (int k = 0; k < kColsPerLane; k++) {
            const int c = sub + kLanesPerRow * k;
            if (c < count) {
                row[i1 + c] = val[k];
                err[static_cast<size_t>(o) * block_size + c] = ev[k];
                codes_p[static_cast<size_t>(o) * in + i1 + c] = static_cast<uint8_t>(cv[k]);
            }
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) loss += __shfl_xor_sync(kFull, loss, off);
    if (lane == 0) warp_loss[warp] = loss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0;
        for (int k = 0; k < kBlockWarps; k++) sum += warp_loss[k];
        loss_partial[blockIdx.x] += sum;
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_gram_accumulate(void* h, const void* x, int rows, int in, void* stream) {
    QT_REQUIRE(rows >= 0 && in >= 0, "qt_gram_accumulate: rows = %d, in = %d", rows, in);
    if (rows == 0 || in == 0) return QT_OK;
    QT_REQUIRE(h != nullptr && x != nullptr, "qt_gram_accumulate: NULL h or x");
    cudaStream_t s = as_stream(stream);
    const Extra* ex = nullptr;
    QT_TRY(extra_blas_api(&ex, "qt_gram_accumulate"));
    {
        std::lock_guard<std::mutex> lock(blas::handle_mutex());
        blas::Handle handle = nullptr;
        QT_TRY(blas::handle_for(s, &handle, "qt_gram_accumulate"));
        const float one = 1.f;
        // Row-major x [rows, in] is column-major Xᵀ [in, rows]: C = Xᵀ·(Xᵀ)ᵀ = XᵀX (n = in, k = rows). The column-major
        // lower triangle is the row-major upper one, mirrored below afterwards (as CpuBackend.accumulateGram does).
        blas::Status status = ex->ssyrk(handle, blas::kFillLower, blas::kOpN, in, rows, &one, static_cast<const float*>(x),
                                        in, &one, static_cast<float*>(h), in);
        if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasSsyrk_v2");
    }
    return qt_symmetrize(h, in, QT_UPPER, stream);
}

int qt_gptq_workspace_bytes(int out, int in, int block_size, size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_gptq_workspace_bytes: bytes is NULL");
    QT_REQUIRE(out > 0 && in > 0, "qt_gptq_workspace_bytes: %d x %d", out, in);
    QT_REQUIRE(block_size > 0, "qt_gptq_workspace_bytes: block size %d", block_size);
    const size_t q = quantize_layout(out, in, block_size).total, f = factor_bytes(in);
    *bytes = q > f ? q : f;
    return QT_OK;
}

int qt_gptq_diagonal(float* diagonal, const void* h, int n, void* stream) {
    QT_REQUIRE(n > 0 && diagonal != nullptr && h != nullptr, "qt_gptq_diagonal: n = %d, NULL pointer", n);
    cudaStream_t s = as_stream(stream);
    QT_CUDA_TRY(cudaMemcpy2DAsync(diagonal, sizeof(float), h, sizeof(float) * (static_cast<size_t>(n) + 1), sizeof(float),
                                  n, cudaMemcpyDeviceToHost, s));
    QT_CUDA_TRY(cudaStreamSynchronize(s));
    return QT_OK;
}

int qt_gptq_inverse_factor(void* u, const void* h, const int32_t* perm, int n, double damp_abs, void* workspace,
                           size_t workspace_bytes, int* info, void* stream) {
    QT_REQUIRE(info != nullptr, "qt_gptq_inverse_factor: info is NULL");
    *info = 0;
    QT_REQUIRE(n > 0 && u != nullptr && h != nullptr && perm != nullptr && workspace != nullptr,
               "qt_gptq_inverse_factor: n = %d, NULL pointer", n);
    QT_REQUIRE(workspace_bytes >= factor_bytes(n), "qt_gptq_inverse_factor: workspace of %zu bytes, needs %zu",
               workspace_bytes, factor_bytes(n));
    QT_REQUIRE(damp_abs >= 0 && std::isfinite(damp_abs), "qt_gptq_inverse_factor: damping %g", damp_abs);
    cudaStream_t s = as_stream(stream);
    const Extra* ex = nullptr;
    QT_TRY(extra_solver_api(&ex, "qt_gptq_inverse_factor"));
    const bool trsm = use_trsm();
    double* a = static_cast<double*>(workspace);
    double* b = reinterpret_cast<double*>(static_cast<char*>(workspace) + factor_matrix_bytes(n));  // trsm: identity, then L⁻¹
    int* flags = reinterpret_cast<int*>(static_cast<char*>(workspace) + factor_matrix_bytes(n) * (trsm ? 2 : 1));
    const bool profile = profiling();
    cudaEvent_t ev[4] = {};
    if (profile)
        for (cudaEvent_t& e : ev) QT_CUDA_TRY(cudaEventCreate(&e));
    if (profile) QT_CUDA_TRY(cudaEventRecord(ev[0], s));
    // flags[0]: potrf's info, flags[1]: trtri's, flags[2]: a bad diagonal in U
    QT_CUDA_TRY(cudaMemsetAsync(flags, 0, 3 * sizeof(int), s));
    build_factor_input_kernel<<<dim3((n + 255) / 256, n < 65535 ? n : 65535), 256, 0, s>>>(a, static_cast<const float*>(h), perm, n, damp_abs);
    QT_TRY(check_launch("build_factor_input_kernel"));
    {
        std::lock_guard<std::mutex> lock(blas::handle_mutex());
        blas::SolverHandle handle = nullptr;
        QT_TRY(blas::solver_handle_for(s, &handle, "qt_gptq_inverse_factor"));
        // Row-major A is the column-major Aᵀ = A; its column-major lower factor L (A = L·Lᵀ) reads row-major as
        // R = Lᵀ with A = RᵀR, and L⁻¹ reads row-major as R⁻¹. (See solver.cu on the triangles.)
        int lwork = 0;
        blas::Status status = ex->dpotrf_buffer_size(handle, blas::kFillLower, n, a, n, &lwork);
        if (status != blas::kStatusSuccess) return blas::fail_solver(status, "cusolverDnDpotrf_bufferSize");
        size_t trtri_device = 0, trtri_host = 0;
        if (!trsm) {
            status = ex->xtrtri_buffer_size(handle, blas::kFillLower, kDiagNonUnit, n, CUDA_R_64F, a, n, &trtri_device,
                                            &trtri_host);
            if (status != blas::kStatusSuccess) return blas::fail_solver(status, "cusolverDnXtrtri_bufferSize");
        }
        size_t need = sizeof(double) * static_cast<size_t>(lwork);
        if (trtri_device > need) need = trtri_device;
        void* buffer = nullptr;
        QT_TRY(ensure_solver_buffer(need + 16, &buffer));
        status = ex->dpotrf(handle, blas::kFillLower, n, a, n, static_cast<double*>(buffer), lwork, &flags[0]);
        if (status != blas::kStatusSuccess) return blas::fail_solver(status, "cusolverDnDpotrf");
        if (profile) QT_CUDA_TRY(cudaEventRecord(ev[1], s));
        int potrf_info = 0;
        QT_CUDA_TRY(cudaMemcpyAsync(&potrf_info, &flags[0], sizeof(int), cudaMemcpyDeviceToHost, s));
        QT_CUDA_TRY(cudaStreamSynchronize(s));
        if (potrf_info > 0) {
            *info = potrf_info;
            return fail(QT_ERR_NOT_POSITIVE_DEFINITE,
                        "qt_gptq_inverse_factor: the leading minor of order %d of the damped Hessian is not positive definite",
                        potrf_info);
        }
        if (potrf_info < 0) return fail(QT_ERR_CUSOLVER, "cusolverDnDpotrf rejected parameter %d", -potrf_info);
        if (trsm) {
            // Column-major L·X = I: X = L⁻¹, lower (zeros above), the same layout Xtrtri leaves.
            identity_kernel<<<dim3((n + 255) / 256, n < 65535 ? n : 65535), 256, 0, s>>>(b, n);
            QT_TRY(check_launch("identity_kernel"));
            blas::Handle blas_handle = nullptr;
            QT_TRY(blas::handle_for(s, &blas_handle, "qt_gptq_inverse_factor"));
            const double one = 1.0;
            status = ex->dtrsm(blas_handle, kSideLeft, blas::kFillLower, blas::kOpN, kDiagNonUnit, n, n, &one, a, n, b, n);
            if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasDtrsm_v2");
        } else {
            std::vector<char> host(trtri_host > 0 ? trtri_host : 1);
            status = ex->xtrtri(handle, blas::kFillLower, kDiagNonUnit, n, CUDA_R_64F, a, n, buffer, trtri_device,
                                host.data(), trtri_host, &flags[1]);
            if (status != blas::kStatusSuccess) return blas::fail_solver(status, "cusolverDnXtrtri");
        }
    }
    if (profile) QT_CUDA_TRY(cudaEventRecord(ev[2], s));
    const unsigned tiles = (n + 31) / 32;
    extract_factor_kernel<<<dim3(tiles, tiles), dim3(32, 8), 0, s>>>(static_cast<float*>(u), trsm ? b : a, n, &flags[2]);
    QT_TRY(check_launch("extract_factor_kernel"));
    if (profile) {
        QT_CUDA_TRY(cudaEventRecord(ev[3], s));
        QT_CUDA_TRY(cudaEventSynchronize(ev[3]));
        float ms[3] = {};
        for (int k = 0; k < 3; k++) QT_CUDA_TRY(cudaEventElapsedTime(&ms[k], ev[k], ev[k + 1]));
        fprintf(stderr, "qtool gptq profile: factor n=%d: build+potrf %.3f ms, %s %.3f ms, extract %.3f ms\n", n, ms[0],
                trsm ? "trsm" : "trtri", ms[1], ms[2]);
        for (cudaEvent_t& e : ev) cudaEventDestroy(e);
    }
    int host_flags[3] = {0, 0, 0};
    QT_CUDA_TRY(cudaMemcpyAsync(host_flags, flags, sizeof host_flags, cudaMemcpyDeviceToHost, s));
    QT_CUDA_TRY(cudaStreamSynchronize(s));
    if (host_flags[1] < 0) return fail(QT_ERR_CUSOLVER, "cusolverDnXtrtri rejected parameter %d", -host_flags[1]);
    if (host_flags[1] > 0 || host_flags[2] != 0) {
        *info = host_flags[1] > 0 ? host_flags[1] : n;
        return fail(QT_ERR_NOT_POSITIVE_DEFINITE,
                    "qt_gptq_inverse_factor: the factor of the damped Hessian is singular or not finite (info %d)", *info);
    }
    return QT_OK;
}

int qt_gptq_quantize(const void* w, const void* h, const void* u, const int32_t* perm, int out, int in, int bits,
                     int group_size, int sym, int mse, int static_groups, int block_size, void* codes, void* scales,
                     void* zeros, void* dequantized, double* loss, void* workspace, size_t workspace_bytes,
                     void* stream) {
    QT_REQUIRE(out > 0 && in > 0, "qt_gptq_quantize: %d x %d", out, in);
    QT_REQUIRE(w && h && u && perm && codes && scales && zeros && dequantized && loss && workspace,
               "qt_gptq_quantize: NULL pointer");
    QT_REQUIRE(bits >= 1 && bits <= 8, "qt_gptq_quantize: bits %d", bits);
    QT_REQUIRE(group_size == -1 || group_size > 0, "qt_gptq_quantize: group size %d", group_size);
    QT_REQUIRE(!static_groups || group_size > 0, "qt_gptq_quantize: static groups need a group size");
    QT_REQUIRE(block_size > 0, "qt_gptq_quantize: block size %d", block_size);
    if (block_size > kMaxBlock)
        return fail(QT_ERR_UNSUPPORTED, "qt_gptq_quantize: block size %d (at most %d)", block_size, kMaxBlock);
    const QuantizeLayout layout = quantize_layout(out, in, block_size);
    QT_REQUIRE(workspace_bytes >= layout.total, "qt_gptq_quantize: workspace of %zu bytes, needs %zu", workspace_bytes,
               layout.total);
    cudaStream_t s = as_stream(stream);
    char* base = static_cast<char*>(workspace);
    float* wp = reinterpret_cast<float*>(base + layout.wp);
    float* err = reinterpret_cast<float*>(base + layout.err);
    uint8_t* codes_p = reinterpret_cast<uint8_t*>(base + layout.codes);
    int* invperm = reinterpret_cast<int*>(base + layout.invperm);
    double* loss_partial = reinterpret_cast<double*>(base + layout.loss);
    const float* wf = static_cast<const float*>(w);
    const float* hf = static_cast<const float*>(h);
    const float* uf = static_cast<const float*>(u);
    float* scale_out = static_cast<float*>(scales);
    int* zero_out = static_cast<int*>(zeros);
    const int maxq = (1 << bits) - 1;
    const int group = group_size == -1 ? in : group_size;
    const int groups = (in + group - 1) / group;
    const int lanes = lanes_per_row();
    const int rows_per_block = kBlockWarps * (32 / lanes);
    const int row_blocks = (out + rows_per_block - 1) / rows_per_block;
    const unsigned y_blocks = static_cast<unsigned>(out < 1024 ? out : 1024);

    QT_CUDA_TRY(cudaMemsetAsync(loss_partial, 0, sizeof(double) * row_blocks, s));
    if (group_size == -1 || static_groups) {
        const long long warps = static_cast<long long>(out) * (group_size == -1 ? 1 : groups);
        up_front_grid_kernel<<<static_cast<unsigned>((warps + 7) / 8), 256, 0, s>>>(
            wf, hf, scale_out, zero_out, out, in, group, group_size == -1 ? 1 : groups, maxq, sym, mse,
            group_size == -1);
        QT_TRY(check_launch("up_front_grid_kernel"));
    }
    permute_kernel<<<dim3((in + 255) / 256, y_blocks), 256, 0, s>>>(wp, invperm, wf, hf, perm, out, in);
    QT_TRY(check_launch("permute_kernel"));

    const int mode = group_size == -1 ? kWholeRow : static_groups ? kStaticGroups : kDynamicGroups;
    auto kernel = lanes == 16 ? (mode == kWholeRow       ? gptq_block_kernel<kWholeRow, 16>
                                 : mode == kStaticGroups ? gptq_block_kernel<kStaticGroups, 16>
                                                         : gptq_block_kernel<kDynamicGroups, 16>)
                              : (mode == kWholeRow       ? gptq_block_kernel<kWholeRow, 8>
                                 : mode == kStaticGroups ? gptq_block_kernel<kStaticGroups, 8>
                                                         : gptq_block_kernel<kDynamicGroups, 8>);
    const bool profile = profiling();
    std::vector<cudaEvent_t> events;
    if (profile) {
        events.resize(2 * ((in + block_size - 1) / block_size) + 1);
        for (cudaEvent_t& e : events) QT_CUDA_TRY(cudaEventCreate(&e));
        QT_CUDA_TRY(cudaEventRecord(events[0], s));
    }
    const int smem_max = static_cast<int>(sizeof(float)) * kMaxBlock * kMaxBlock;
    QT_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max));
    {
        std::lock_guard<std::mutex> lock(blas::handle_mutex());
        blas::Handle handle = nullptr;
        QT_TRY(blas::handle_for(s, &handle, "qt_gptq_quantize"));
        const float minus_one = -1.f, one = 1.f;
        for (int i1 = 0; i1 < in; i1 += block_size) {
            const int count = in - i1 < block_size ? in - i1 : block_size;
            const int i2 = i1 + count;
            const size_t smem = sizeof(float) * static_cast<size_t>(count) * kMaxBlock;
            kernel<<<row_blocks, kBlockWarps * 32, smem, s>>>(wp, uf, err, codes_p, scale_out, zero_out, loss_partial,
                                                              perm, out, in, i1, count, block_size, group, maxq, sym,
                                                              mse);
            QT_TRY(check_launch("gptq_block_kernel"));
            if (profile) QT_CUDA_TRY(cudaEventRecord(events[2 * (i1 / block_size) + 1], s));
            if (i2 < in) {
                // Row-major W[:, i2:] -= Err[:, :count] · U[i1:i2, i2:], as column-major (in - i2) x out:
                // C = U_blockᵀ-view [in - i2, count] · Errᵀ-view [count, out].
                blas::Status status = blas::api()->sgemm(handle, blas::kOpN, blas::kOpN, in - i2, out, count, &minus_one,
                                                         uf + static_cast<size_t>(i1) * in + i2, in, err, block_size,
                                                         &one, wp + i2, in);
                if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasSgemm_v2 (GPTQ block update)");
            }
            if (profile) QT_CUDA_TRY(cudaEventRecord(events[2 * (i1 / block_size) + 2], s));
        }
    }
    unpermute_kernel<<<dim3((in + 255) / 256, y_blocks), 256, 0, s>>>(
        static_cast<float*>(dequantized), static_cast<uint8_t*>(codes), wp, codes_p, invperm, out, in);
    QT_TRY(check_launch("unpermute_kernel"));
    std::vector<double> partial(row_blocks);
    QT_CUDA_TRY(cudaMemcpyAsync(partial.data(), loss_partial, sizeof(double) * row_blocks, cudaMemcpyDeviceToHost, s));
    QT_CUDA_TRY(cudaStreamSynchronize(s));
    double total = 0;
    for (double p : partial) total += p;
    *loss = total;
    if (profile) {
        float kernels = 0, gemms = 0, ms = 0;
        for (size_t k = 0; k + 2 < events.size(); k += 2) {  // per block: kernel, then SGEMM
            QT_CUDA_TRY(cudaEventElapsedTime(&ms, events[k], events[k + 1]));
            kernels += ms;
            QT_CUDA_TRY(cudaEventElapsedTime(&ms, events[k + 1], events[k + 2]));
            gemms += ms;
        }
        fprintf(stderr, "qtool gptq profile: loop %dx%d (%d lanes/row): block kernels %.3f ms, SGEMMs %.3f ms\n", out, in,
                lanes, kernels, gemms);
        for (cudaEvent_t& e : events) cudaEventDestroy(e);
    }
    return QT_OK;
}

}  // extern "C"
