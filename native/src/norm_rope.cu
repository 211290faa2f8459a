// RMS normalization and rotary position embedding.
#include "internal.h"

namespace qt {
namespace {

constexpr int kNormThreads = 256;

// Sum over the block; every thread gets the total. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// One block per row. Each thread rescales exactly the elements it read, after the whole row's sum is
// known, so out may alias x.
__global__ void __launch_bounds__(kNormThreads)
rmsnorm_kernel(float* out, const float* x, const void* __restrict__ weight, int weight_dtype, int cols, float eps) {
    __shared__ float scratch[kNormThreads / 32];
    const size_t base = static_cast<size_t>(blockIdx.x) * cols;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = x[base + j];
        sum += v * v;
    }
    sum = block_sum(sum, scratch);
    // rsqrtf is approximate (2 ulp); 1/sqrtf is correctly rounded, and this runs once per row.
    const float inv_rms = 1.0f / sqrtf(sum / cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        out[base + j] = x[base + j] * inv_rms * load_as_float(weight, weight_dtype, j);
}

// One thread per (row, head, j < head_dim/2) pair; rotates dimensions j and j + head_dim/2 (rotate_half).
__global__ void rope_kernel(float* x, int rows, int heads, int head_dim, int seq_len, int start_pos,
                            const float* __restrict__ inv_freq) {
    const int half = head_dim / 2;
    const size_t total = static_cast<size_t>(rows) * heads * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int j = static_cast<int>(i % half);
        const size_t head_row = i / half;  // row * heads + head
        const int row = static_cast<int>(head_row / heads);
        const int position = start_pos + row % seq_len;
        // The angle is an F32 product, as HF computes it; sincosf then reduces it exactly (no fast math).
        const float angle = static_cast<float>(position) * inv_freq[j];
        float sine, cosine;
        sincosf(angle, &sine, &cosine);
        float* p = x + head_row * head_dim;
        const float a = p[j], b = p[j + half];
        p[j] = a * cosine - b * sine;
        p[j + half] = b * cosine + a * sine;
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_rmsnorm(void* out, const void* x, const void* weight, int weight_dtype, int rows, int cols, float eps,
               void* stream) {
    QT_REQUIRE(rows >= 0 && cols > 0, "qt_rmsnorm: need rows >= 0, cols > 0 (got %d, %d)", rows, cols);
    if (rows == 0) return QT_OK;
    QT_REQUIRE(out && x && weight, "qt_rmsnorm: NULL argument");
    QT_REQUIRE(is_float_dtype(weight_dtype), "qt_rmsnorm: weight dtype %s", dtype_name(weight_dtype));
    int threads = cols >= kNormThreads ? kNormThreads : ((cols + 31) / 32) * 32;
    rmsnorm_kernel<<<rows, threads, 0, as_stream(stream)>>>(static_cast<float*>(out), static_cast<const float*>(x),
                                                            weight, weight_dtype, cols, eps);
    return check_launch("rmsnorm_kernel");
}

int qt_rope(void* x, int rows, int heads, int head_dim, int seq_len, int start_pos, const void* inv_freq,
            void* stream) {
    QT_REQUIRE(rows >= 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0 && seq_len > 0 && start_pos >= 0,
               "qt_rope: bad sizes (rows %d, heads %d, head_dim %d (must be even), seq_len %d, start_pos %d)", rows,
               heads, head_dim, seq_len, start_pos);
    if (rows == 0) return QT_OK;
    QT_REQUIRE(x && inv_freq, "qt_rope: NULL argument");
    size_t pairs = static_cast<size_t>(rows) * heads * (head_dim / 2);
    rope_kernel<<<blocks_for(pairs, 256), 256, 0, as_stream(stream)>>>(static_cast<float*>(x), rows, heads, head_dim,
                                                                       seq_len, start_pos,
                                                                       static_cast<const float*>(inv_freq));
    return check_launch("rope_kernel");
}

}  // extern "C"
