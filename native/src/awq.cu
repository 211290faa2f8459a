// AWQ's clipping search (qt_awq_clip_search): the GPU version of qtool.quantize.Awq.searchClip. For each output row
// and input group, among the candidate ranges of Awq.clipCandidates (10 symmetric ±absMax·(1 − k/20), then with
// two_sided 100 pairs (min·(1 − a/20), max·(1 − b/20))), the [lo, hi] whose clamped-and-quantized group
// q = Q(clamp(w_g, lo, hi)) least changes the group's outputs on the sampled inputs: err = dᵀ·H_g·d, d = q − w_g,
// H_g the group's diagonal block of the inputs' Gram matrix XᵀX. The first minimum wins, in the same candidate order.
//
// One block per (group, chunk of kRowsPerBlock rows). H_g is staged in shared memory transposed, with a padded
// stride, so that the lanes of a warp read consecutive addresses. Each warp works on kRowsPerWarp rows at once (they
// share H_g: each shared-memory load of H feeds kRowsPerWarp FMAs); lane l holds elements l, l + 32, l + 64, l + 96
// of each row's group. Per candidate: the fp16-rounded scale and zero of each row exactly as Awq.quantizeGroup
// makes them (the clamped group's min/max are the clamped min/max of the group, since clamping is monotone), d into
// the warp's shared row (interleaved by row: one float4 broadcast per column), then Σ_i d_i Σ_j H[i][j] d_j with
// fp32 FMAs, the outer sum in double. Elementwise arithmetic is the reference's: IEEE division, rintf (half to even,
// as Math.rint), __float2half_rn, no fused multiply-add where Java has none.
//
// Groups wider than kMaxWidth (group_size -1 on a wide linear) do not fit: QT_ERR_UNSUPPORTED, and CudaBackend runs
// the host search for them.
#include <cstdint>

#include "internal.h"

namespace qt {
namespace {

constexpr int kMaxWidth = 128;     // widest group staged in shared memory
constexpr int kLanesK = kMaxWidth / 32;
constexpr int kRowsPerWarp = 4;
constexpr int kWarps = 8;
constexpr int kRowsPerBlock = 64;  // kWarps · kRowsPerWarp · 2 passes
constexpr int kShrinks = 10;       // Awq.CLIP_MAX_SHRINK · Awq.CLIP_GRID
constexpr float kClipGrid = 20.f;  // Awq.CLIP_GRID

__device__ __forceinline__ float fp16(float v) { return __half2float(__float2half_rn(v)); }

// absMax·(1 − k/20) and friends, as float arithmetic in Java's order: x · (1 − (float) k / 20).
__device__ __forceinline__ float shrink(float x, int k) {
    return __fmul_rn(x, __fsub_rn(1.f, __fdiv_rn(static_cast<float>(k), kClipGrid)));
}

// Awq.quantizeGroup's scale and zero for a group whose (clamped) values span [lo, hi].
struct Grid {
    float scale, zero, max_int;
};

__device__ __forceinline__ Grid grid_of(float lo, float hi, int bits, bool zero_point) {
    Grid g;
    if (zero_point) {
        g.max_int = static_cast<float>((1 << bits) - 1);
        g.scale = fp16(__fdiv_rn(fmaxf(__fsub_rn(hi, lo), 1e-5f), g.max_int));
        g.zero = fminf(fmaxf(-rintf(__fdiv_rn(lo, g.scale)), 0.f), g.max_int);
    } else {
        const int half = 1 << (bits - 1);
        const float max_abs = fmaxf(1e-5f, fmaxf(fabsf(lo), fabsf(hi)));
        g.max_int = static_cast<float>(2 * half - 1);
        g.scale = fp16(__fdiv_rn(max_abs, static_cast<float>(half - 1)));
        g.zero = static_cast<float>(half);
    }
    return g;
}

__device__ __forceinline__ float warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Dynamic shared memory: H_g transposed [n][n + 1] (ht[j·ld + i] = H[g0 + i][g0 + j]), then each warp's d rows as
// float4 [kMaxWidth] (component r = row r of the warp's rows).
__global__ void __launch_bounds__(kWarps * 32) clip_search_kernel(float* __restrict__ range_out, const float* __restrict__ w,
                                                                 const float* __restrict__ gram, int out, int in, int width,
                                                                 int groups, int bits, bool zero_point, bool two_sided) {
    extern __shared__ float smem[];
    const int g = blockIdx.x, g0 = g * width, n = min(width, in - g0), ld = n + 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* ht = smem;
    float4* dbuf = reinterpret_cast<float4*>(smem + ((n * ld + 3) & ~3)) + warp * kMaxWidth;

    for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
        const int i = e / n, j = e % n;  // row i of H read along j: coalesced
        ht[j * ld + i] = gram[static_cast<size_t>(g0 + i) * in + g0 + j];
    }
    __syncthreads();

    const int candidates = kShrinks + (two_sided ? kShrinks * kShrinks : 0);
    for (int r0 = blockIdx.y * kRowsPerBlock + warp * kRowsPerWarp; r0 < min(out, (blockIdx.y + 1) * kRowsPerBlock);
         r0 += kWarps * kRowsPerWarp) {
        // Each row's group values (0 outside the group or past the last row), true min/max, and the search's
        // min/max with 0 included (Awq.searchClip starts both from 0).
        float wv[kRowsPerWarp][kLanesK], wmin[kRowsPerWarp], wmax[kRowsPerWarp], min0[kRowsPerWarp], max0[kRowsPerWarp];
        float best_lo[kRowsPerWarp], best_hi[kRowsPerWarp];
        double best_err[kRowsPerWarp];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; r++) {
            const bool row_ok = r0 + r < out;
            float lo = INFINITY, hi = -INFINITY;
#pragma unroll
            for (int k = 0; k < kLanesK; k++) {
                const int i = lane + 32 * k;
                wv[r][k] = row_ok && i < n ? w[static_cast<size_t>(r0 + r) * in + g0 + i] : 0.f;
                if (i < n) {
                    lo = fminf(lo, wv[r][k]);
                    hi = fmaxf(hi, wv[r][k]);
                }
            }
            wmin[r] = warp_min(lo);
            wmax[r] = warp_max(hi);
            min0[r] = fminf(0.f, wmin[r]);
            max0[r] = fmaxf(0.f, wmax[r]);
            best_lo[r] = min0[r];
            best_hi[r] = max0[r];
            best_err[r] = INFINITY;
        }

        for (int c = 0; c < candidates; c++) {
            float clo[kRowsPerWarp], chi[kRowsPerWarp], d[kRowsPerWarp][kLanesK];
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; r++) {
                if (c < kShrinks) {
                    const float m = shrink(fmaxf(-min0[r], max0[r]), c);
                    clo[r] = -m;
                    chi[r] = m;
                } else {
                    const int a = (c - kShrinks) / kShrinks, b = (c - kShrinks) % kShrinks;
                    clo[r] = shrink(min0[r], a);
                    chi[r] = shrink(max0[r], b);
                }
                const Grid q = grid_of(fminf(fmaxf(wmin[r], clo[r]), chi[r]), fminf(fmaxf(wmax[r], clo[r]), chi[r]), bits, zero_point);
#pragma unroll
                for (int k = 0; k < kLanesK; k++) {
                    const float x = fminf(fmaxf(wv[r][k], clo[r]), chi[r]);
                    const float code = fminf(fmaxf(rintf(__fdiv_rn(x, q.scale)) + q.zero, 0.f), q.max_int);
                    d[r][k] = lane + 32 * k < n ? __fsub_rn(__fmul_rn(__fsub_rn(code, q.zero), q.scale), wv[r][k]) : 0.f;
                }
            }
            __syncwarp();
#pragma unroll
            for (int k = 0; k < kLanesK; k++) dbuf[lane + 32 * k] = make_float4(d[0][k], d[1][k], d[2][k], d[3][k]);
            __syncwarp();
            float acc[kRowsPerWarp][kLanesK] = {};
            for (int j = 0; j < n; j++) {
                const float4 dj = dbuf[j];
                const float* hrow = ht + j * ld + lane;
#pragma unroll
                for (int k = 0; k < kLanesK; k++) {
                    if (32 * k >= n) break;
                    const float h = lane + 32 * k < n ? hrow[32 * k] : 0.f;
                    acc[0][k] = fmaf(h, dj.x, acc[0][k]);
                    acc[1][k] = fmaf(h, dj.y, acc[1][k]);
                    acc[2][k] = fmaf(h, dj.z, acc[2][k]);
                    acc[3][k] = fmaf(h, dj.w, acc[3][k]);
                }
            }
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; r++) {
                double e = 0;
#pragma unroll
                for (int k = 0; k < kLanesK; k++) e += static_cast<double>(d[r][k]) * acc[r][k];
                e = warp_sum(e);
                if (e < best_err[r]) {  // the first minimum; NaN never wins (then Java's fallback: [min0, max0])
                    best_err[r] = e;
                    best_lo[r] = clo[r];
                    best_hi[r] = chi[r];
                }
            }
        }
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; r++) {
                if (r0 + r >= out) break;
                float2* dst = reinterpret_cast<float2*>(range_out) + static_cast<size_t>(r0 + r) * groups + g;
                *dst = make_float2(best_lo[r], best_hi[r]);
            }
        }
    }
}

}  // namespace
}  // namespace qt

extern "C" {

using namespace qt;

int qt_awq_clip_search(float* range_out, const void* w, const void* gram, int out, int in, int group_size, int bits,
                       int zero_point, int two_sided, void* stream) {
    QT_REQUIRE(range_out != nullptr && w != nullptr && gram != nullptr, "qt_awq_clip_search: NULL pointer");
    QT_REQUIRE(out > 0 && in > 0, "qt_awq_clip_search: %d x %d", out, in);
    QT_REQUIRE(bits >= 2 && bits <= 8, "qt_awq_clip_search: bits %d (2..8)", bits);
    QT_REQUIRE(group_size == -1 || group_size > 0, "qt_awq_clip_search: group_size %d (-1 or > 0)", group_size);
    const int width = group_size == -1 ? in : group_size, groups = (in + width - 1) / width;
    const int n = width < in ? width : in;
    if (n > kMaxWidth) {
        return fail(QT_ERR_UNSUPPORTED, "qt_awq_clip_search: groups of %d columns (at most %d stay in shared memory)", n, kMaxWidth);
    }
    const size_t smem = sizeof(float) * ((static_cast<size_t>(n) * (n + 1) + 3) & ~static_cast<size_t>(3))
                        + sizeof(float4) * kMaxWidth * kWarps;
    QT_CUDA_TRY(cudaFuncSetAttribute(clip_search_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    const dim3 grid(groups, (out + kRowsPerBlock - 1) / kRowsPerBlock);
    clip_search_kernel<<<grid, kWarps * 32, smem, as_stream(stream)>>>(range_out, static_cast<const float*>(w),
                                                                       static_cast<const float*>(gram), out, in, width,
                                                                       groups, bits, zero_point != 0, two_sided != 0);
    return check_launch("clip_search_kernel");
}

}  // extern "C"
