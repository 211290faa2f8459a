// EXL2 quantization of one linear (qt_exl2_*): the GPU version of qtool.quantize.Exl2Gptq.quantize, itself a port
// of ExLlamaV2's AdaptiveGPTQ.quantize. The factor U of H⁻¹ and the act-order permutation come from
// qt_gptq_inverse_factor, computed once per linear input and reused for every option (CudaBackend.exl2Prepare).
//
// The weight is worked on as ExLlamaV2 does, transposed and permuted: wt [in (processing order), out], so each row
// update runs along contiguous output columns. Per group (storage order, decreasing bits):
//   1. column_absmax_kernel: base[o] = (max |wt[a:b, o]| + 1e-12) / (maxq / 2).
//   2. subscale_kernel (one block): the group's largest base, each column's 4-bit sub-scale qscale in 1..16 and its
//      trial scale tw = (qscale/16)² · max.
//   3. grid_error_kernel: for each of the 97 multipliers p, Σ |clamp(rint(w/(tw·p)))·tw·p − w|^3.5 over a tile of the
//      group, written per tile; quantize_group_kernel sums the tiles in a fixed order (the result does not depend
//      on scheduling) and takes the first minimum.
//   4. quantize_group_kernel: the p of least error, the fp16 super-scale, each column's fp16 scale; then the
//      group's rows one after another (column per thread, the group's column slice in shared memory): code, q,
//      err = (w − q)/U_kk, and the group's later rows updated with err·U[k, ·].
//   5. one SGEMM: wt[b:, :] −= U[a:b, b:]ᵀ · err.
// Elementwise arithmetic is the CPU reference's: IEEE division and sqrt, rint, no fused multiply-add where Java
// has none (__fmul_rn / __fsub_rn), fp16 rounding by __float2half_rn; so results differ from the CPU's only where a
// summation order differs (the SGEMM and the grid sums).
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "blas_dyn.h"
#include "internal.h"

namespace qt {
namespace {

constexpr int kGrid = 96;               // AdaptiveQuantizer.p_grid
constexpr float kMinP = 0.70f;          // AdaptiveQuantizer.min_p
constexpr float kMaxP = 1.2f;           // AdaptiveQuantizer.max_p
constexpr int kColumnsPerThreadBlock = 32;
constexpr int kGridColumns = 128;       // columns per grid_error_kernel block
constexpr int kGridRows = 32;           // rows per grid_error_kernel block
constexpr int kMaxGroupRows = 1024;     // quantize_group_kernel keeps a group's column slice in shared memory

size_t align256(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

struct Layout {
    size_t wt, err, base, tw, qmax, partial, total;
    int tiles;
};

Layout workspace_layout(int out, int in, int max_group_rows) {
    Layout l{};
    const int col_blocks = (out + kGridColumns - 1) / kGridColumns;
    l.tiles = col_blocks * ((max_group_rows + kGridRows - 1) / kGridRows);
    size_t at = 0;
    l.wt = at;
    at += align256(sizeof(float) * static_cast<size_t>(in) * out);
    l.err = at;
    at += align256(sizeof(float) * static_cast<size_t>(max_group_rows) * out);
    l.base = at;
    at += align256(sizeof(float) * out);
    l.tw = at;
    at += align256(sizeof(float) * out);
    l.qmax = at;
    at += align256(sizeof(float));
    l.partial = at;
    at += align256(sizeof(float) * static_cast<size_t>(l.tiles) * (kGrid + 1));
    l.total = at;
    return l;
}

__device__ __forceinline__ float fp16(float v) { return __half2float(__float2half_rn(v)); }

// Exl2Tensor.subScale: fp16(fp16(qscale²) · fp16(qscale_max / 256)).
__device__ __forceinline__ float sub_scale(int qscale, float qscale_max) {
    return fp16(__fmul_rn(fp16(static_cast<float>(qscale * qscale)), fp16(qscale_max / 256.f)));
}

__device__ __forceinline__ float grid_p(int i) {
    const float pi = static_cast<float>(i) / static_cast<float>(kGrid);
    return __fadd_rn(__fmul_rn(kMinP, 1.0f - pi), __fmul_rn(kMaxP, pi));
}

// wt[k, o] = w[o, perm[k]]: 32x32 tiles through shared memory, reads along a row of w, writes along a row of wt.
__global__ void permute_transpose_kernel(float* __restrict__ wt, const float* __restrict__ w, const int32_t* __restrict__ perm,
                                         int out, int in) {
    __shared__ float tile[32][33];
    const int k0 = blockIdx.x * 32, o0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int o = o0 + j, k = k0 + threadIdx.x;
        if (o < out && k < in) tile[j][threadIdx.x] = w[static_cast<size_t>(o) * in + perm[k]];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int k = k0 + j, o = o0 + threadIdx.x;
        if (o < out && k < in) wt[static_cast<size_t>(k) * out + o] = tile[threadIdx.x][j];
    }
}

__global__ void column_absmax_kernel(float* __restrict__ base, const float* __restrict__ wt, int out, int a, int b,
                                     float half_maxq) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out) return;
    float m = 0.f;
    for (int r = a; r < b; r++) m = fmaxf(m, fabsf(wt[static_cast<size_t>(r) * out + o]));
    base[o] = (m + 1e-12f) / half_maxq;
}

// One block: the largest base, then each column's sub-scale (written to this group's qscale row) and trial scale.
__global__ void subscale_kernel(uint8_t* __restrict__ qscale, float* __restrict__ tw, float* __restrict__ qmax_out,
                                const float* __restrict__ base, int out) {
    __shared__ float red[1024];
    float m = 0.f;
    for (int o = threadIdx.x; o < out; o += blockDim.x) m = fmaxf(m, base[o]);
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    const float qmax = red[0];
    if (threadIdx.x == 0) *qmax_out = qmax;
    for (int o = threadIdx.x; o < out; o += blockDim.x) {
        const float tp = __fmul_rn(__fsqrt_rn(base[o] / qmax), 16.f);
        const float q = fminf(fmaxf(rintf(tp), 1.f), 16.f);
        qscale[o] = static_cast<uint8_t>(q);
        const float t = q / 16.f;
        tw[o] = __fmul_rn(__fmul_rn(t, t), qmax);
    }
}

// partial[tile][i]: Σ over the tile (kGridRows rows x kGridColumns columns of the group) of |err|^3.5 at multiplier i.
__global__ void grid_error_kernel(float* __restrict__ partial, const float* __restrict__ wt, const float* __restrict__ tw,
                                  int out, int a, int b, float qzero, float maxq) {
    __shared__ float red[kGridColumns];
    const int o = blockIdx.x * kGridColumns + threadIdx.x;
    const int r0 = a + blockIdx.y * kGridRows, r1 = min(r0 + kGridRows, b);
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    const float lo = -qzero, hi = maxq - qzero;
    const float scale = o < out ? tw[o] : 0.f;
    for (int i = 0; i <= kGrid; i++) {
        float sum = 0.f;
        if (o < out) {
            const float sc = __fmul_rn(scale, grid_p(i));
            for (int r = r0; r < r1; r++) {
                const float x = wt[static_cast<size_t>(r) * out + o];
                const float e = fabsf(__fsub_rn(__fmul_rn(fminf(fmaxf(rintf(x / sc), lo), hi), sc), x));
                sum = __fadd_rn(sum, __fmul_rn(__fmul_rn(__fmul_rn(e, e), e), __fsqrt_rn(e)));
            }
        }
        red[threadIdx.x] = sum;
        __syncthreads();
        for (int s = kGridColumns / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) partial[static_cast<size_t>(tile) * (kGrid + 1) + i] = red[0];
        __syncthreads();
    }
}

// The group's scales from the grid sums, then its rows: quantize, error, in-group update (shared memory).
__global__ void quantize_group_kernel(float* __restrict__ wt, float* __restrict__ err, uint8_t* __restrict__ codes,
                                      const uint8_t* __restrict__ qscale, float* __restrict__ qscale_max_out,
                                      const float* __restrict__ qmax_in, const float* __restrict__ partial, int tiles,
                                      const float* __restrict__ u, int in, int out, int a, int b, int bits) {
    extern __shared__ float slice[];  // [b - a][kColumnsPerThreadBlock]
    __shared__ float best_p_shared;
    if (threadIdx.x == 0) {
        int best = 0;
        double best_sum = 0;
        for (int i = 0; i <= kGrid; i++) {
            double s = 0;
            for (int t = 0; t < tiles; t++) s += partial[static_cast<size_t>(t) * (kGrid + 1) + i];
            if (i == 0 || s < best_sum) {
                best = i;
                best_sum = s;
            }
        }
        const float f = static_cast<float>(best) / static_cast<float>(kGrid);
        best_p_shared = __fadd_rn(__fmul_rn(kMaxP, f), __fmul_rn(kMinP, 1.f - f));
    }
    __syncthreads();
    const float qscale_max = fp16(__fmul_rn(*qmax_in, best_p_shared));
    if (blockIdx.x == 0 && threadIdx.x == 0) *qscale_max_out = qscale_max;
    const int o = blockIdx.x * kColumnsPerThreadBlock + threadIdx.x;
    if (o >= out) return;
    const int rows = b - a;
    for (int j = 0; j < rows; j++) slice[j * kColumnsPerThreadBlock + threadIdx.x] = wt[static_cast<size_t>(a + j) * out + o];
    const float s = sub_scale(qscale[o], qscale_max);
    const float qzero = static_cast<float>(1 << (bits - 1)), maxq = static_cast<float>((1 << bits) - 1);
    for (int j = 0; j < rows; j++) {
        const int c = a + j;
        const float x = slice[j * kColumnsPerThreadBlock + threadIdx.x];
        const float code = fminf(fmaxf(rintf(x / s) + qzero, 0.f), maxq);
        const float q = fp16(__fmul_rn(code - qzero, s));
        const float* urow = u + static_cast<size_t>(c) * in;
        const float e = __fsub_rn(x, q) / urow[c];
        codes[static_cast<size_t>(c) * out + o] = static_cast<uint8_t>(code);
        err[static_cast<size_t>(j) * out + o] = e;
        for (int r = j + 1; r < rows; r++) {
            float& v = slice[r * kColumnsPerThreadBlock + threadIdx.x];
            v = __fsub_rn(v, __fmul_rn(urow[a + r], e));
        }
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_exl2_workspace_bytes(int out, int in, int max_group_rows, size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_exl2_workspace_bytes: bytes is NULL");
    QT_REQUIRE(out > 0 && in > 0 && max_group_rows > 0 && max_group_rows <= in, "qt_exl2_workspace_bytes: %d x %d, group rows %d",
               out, in, max_group_rows);
    *bytes = workspace_layout(out, in, max_group_rows).total;
    return QT_OK;
}

int qt_exl2_quantize(const void* w, const void* u, const int32_t* perm, int out, int in, int groups, const int* group_bits,
                     const int* group_rows, void* codes, void* qscale, void* qscale_max, void* workspace,
                     size_t workspace_bytes, void* stream) {
    QT_REQUIRE(w != nullptr && u != nullptr && perm != nullptr && codes != nullptr && qscale != nullptr && qscale_max != nullptr
                   && workspace != nullptr && group_bits != nullptr && group_rows != nullptr,
               "qt_exl2_quantize: NULL pointer");
    QT_REQUIRE(out > 0 && in > 0 && groups > 0, "qt_exl2_quantize: %d x %d, %d groups", out, in, groups);
    int covered = 0, max_rows = 0;
    for (int g = 0; g < groups; g++) {
        const int bits = group_bits[g], rows = group_rows[g];
        QT_REQUIRE(bits >= 2 && bits <= 8 && rows > 0, "qt_exl2_quantize: group %d has %d bits, %d rows", g, bits, rows);
        covered += rows;
        if (rows > max_rows) max_rows = rows;
    }
    QT_REQUIRE(covered == in, "qt_exl2_quantize: groups cover %d rows, not %d", covered, in);
    if (max_rows > kMaxGroupRows) return fail(QT_ERR_UNSUPPORTED, "qt_exl2_quantize: a group of %d rows (at most %d)", max_rows, kMaxGroupRows);
    const Layout l = workspace_layout(out, in, max_rows);
    QT_REQUIRE(workspace_bytes >= l.total, "qt_exl2_quantize: workspace of %zu bytes, needs %zu", workspace_bytes, l.total);
    cudaStream_t s = as_stream(stream);
    char* ws = static_cast<char*>(workspace);
    float* wt = reinterpret_cast<float*>(ws + l.wt);
    float* err = reinterpret_cast<float*>(ws + l.err);
    float* base = reinterpret_cast<float*>(ws + l.base);
    float* tw = reinterpret_cast<float*>(ws + l.tw);
    float* qmax = reinterpret_cast<float*>(ws + l.qmax);
    float* partial = reinterpret_cast<float*>(ws + l.partial);
    const float* uf = static_cast<const float*>(u);

    permute_transpose_kernel<<<dim3((in + 31) / 32, (out + 31) / 32), dim3(32, 8), 0, s>>>(wt, static_cast<const float*>(w), perm, out, in);
    QT_TRY(check_launch("permute_transpose_kernel"));
    const size_t smem_max = sizeof(float) * static_cast<size_t>(max_rows) * kColumnsPerThreadBlock;
    if (smem_max > 48 * 1024) {
        QT_CUDA_TRY(cudaFuncSetAttribute(quantize_group_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_max)));
    }

    std::lock_guard<std::mutex> lock(blas::handle_mutex());
    blas::Handle handle = nullptr;
    QT_TRY(blas::handle_for(s, &handle, "qt_exl2_quantize"));
    const float minus_one = -1.f, one = 1.f;
    int a = 0;
    for (int g = 0; g < groups; g++) {
        const int bits = group_bits[g], b = a + group_rows[g];
        const float maxq = static_cast<float>((1 << bits) - 1);
        uint8_t* qscale_row = static_cast<uint8_t*>(qscale) + static_cast<size_t>(g) * out;
        column_absmax_kernel<<<(out + 255) / 256, 256, 0, s>>>(base, wt, out, a, b, maxq / 2.f);
        QT_TRY(check_launch("column_absmax_kernel"));
        subscale_kernel<<<1, 1024, 0, s>>>(qscale_row, tw, qmax, base, out);
        QT_TRY(check_launch("subscale_kernel"));
        const dim3 tiles((out + kGridColumns - 1) / kGridColumns, (b - a + kGridRows - 1) / kGridRows);
        grid_error_kernel<<<tiles, kGridColumns, 0, s>>>(partial, wt, tw, out, a, b, (maxq + 1.f) / 2.f, maxq);
        QT_TRY(check_launch("grid_error_kernel"));
        const size_t smem = sizeof(float) * static_cast<size_t>(b - a) * kColumnsPerThreadBlock;
        quantize_group_kernel<<<(out + kColumnsPerThreadBlock - 1) / kColumnsPerThreadBlock, kColumnsPerThreadBlock, smem, s>>>(
            wt, err, static_cast<uint8_t*>(codes), qscale_row, static_cast<float*>(qscale_max) + g, qmax, partial,
            static_cast<int>(tiles.x * tiles.y), uf, in, out, a, b, bits);
        QT_TRY(check_launch("quantize_group_kernel"));
        if (b < in) {
            // Row-major wt[b:, :] -= U[a:b, b:]ᵀ · err[0:b-a, :], as column-major out x (in - b):
            // C = errᵀ-view [out, b - a] · (U block, row-major [b - a, in - b] read transposed).
            blas::Status status = blas::api()->sgemm(handle, blas::kOpN, blas::kOpT, out, in - b, b - a, &minus_one, err, out,
                                                     uf + static_cast<size_t>(a) * in + b, in, &one,
                                                     wt + static_cast<size_t>(b) * out, out);
            if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasSgemm_v2 (EXL2 group update)");
        }
        a = b;
    }
    QT_CUDA_TRY(cudaStreamSynchronize(s));
    return QT_OK;
}

}  // extern "C"
