// RMS normalization and rotary position embedding.
#include <type_traits>

#include "internal.h"

namespace qt {
namespace {

constexpr int kNormThreads = 1024;  // a thread per 4 columns up to 4096 columns (a decoding step's one row)
constexpr int kNormItems = 4;       // float4s of x (and their weights) a thread keeps in registers

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

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

// Four consecutive outputs at out + i (i a multiple of 4; out 8- or 16-byte aligned for 16-bit or F32).
template <typename Out>
__device__ __forceinline__ void store4(Out* out, size_t i, float a, float b, float c, float d) {
    if constexpr (std::is_same<Out, float>::value) {
        *reinterpret_cast<float4*>(out + i) = make_float4(a, b, c, d);
    } else {
        Out v[4] = {from_f32<Out>(a), from_f32<Out>(b), from_f32<Out>(c), from_f32<Out>(d)};
        *reinterpret_cast<uint2*>(out + i) = *reinterpret_cast<const uint2*>(v);
    }
}

// One block per row. Each thread rescales exactly the elements it read, after the whole row's sum is known, so
// out may alias x (F32 out). vec4: cols % 4 == 0 and aligned rows, read as float4; a row of up to kNormItems float4s a
// thread is read once, x and the weights kept in registers across the sum (a lone row is a chain of latencies: x,
// the block's sum, then the weights, unless they are loaded beside x).
template <typename Out, bool vec4>
__global__ void __launch_bounds__(kNormThreads)
rmsnorm_kernel(Out* out, const float* x, const void* __restrict__ weight, int weight_dtype, int cols, float eps) {
    wait_for_prior_grid();
    allow_dependents();
    __shared__ float scratch[kNormThreads / 32];
    const size_t base = static_cast<size_t>(blockIdx.x) * cols;
    const float4* x4 = reinterpret_cast<const float4*>(x + base);
    float sum = 0.0f;
    if (vec4 && cols / 4 <= kNormItems * static_cast<int>(blockDim.x)) {
        float4 v[kNormItems];
        float w[kNormItems][4];
#pragma unroll
        for (int i = 0; i < kNormItems; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j >= cols / 4) break;
            v[i] = x4[j];
#pragma unroll
            for (int c = 0; c < 4; c++) w[i][c] = load_as_float(weight, weight_dtype, 4 * j + c);
        }
#pragma unroll
        for (int i = 0; i < kNormItems; i++) {
            if (threadIdx.x + i * blockDim.x >= cols / 4) break;
            sum += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
        }
        sum = block_sum(sum, scratch);
        const float inv_rms = 1.0f / sqrtf(sum / cols + eps);
#pragma unroll
        for (int i = 0; i < kNormItems; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j >= cols / 4) break;
            store4(out, base + 4 * j, v[i].x * inv_rms * w[i][0], v[i].y * inv_rms * w[i][1], v[i].z * inv_rms * w[i][2],
                   v[i].w * inv_rms * w[i][3]);
        }
        return;
    }
    if (vec4) {
        for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
            const float4 v = x4[j];
            sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = x[base + j];
            sum += v * v;
        }
    }
    sum = block_sum(sum, scratch);
    // rsqrtf is approximate (2 ulp); 1/sqrtf is correctly rounded, and this runs once per row.
    const float inv_rms = 1.0f / sqrtf(sum / cols + eps);
    if (vec4) {
        for (int j = threadIdx.x; j < cols / 4; j += blockDim.x) {
            const float4 v = x4[j];
            const int c = 4 * j;
            store4(out, base + c, v.x * inv_rms * load_as_float(weight, weight_dtype, c),
                   v.y * inv_rms * load_as_float(weight, weight_dtype, c + 1),
                   v.z * inv_rms * load_as_float(weight, weight_dtype, c + 2),
                   v.w * inv_rms * load_as_float(weight, weight_dtype, c + 3));
        }
    } else {
        for (int j = threadIdx.x; j < cols; j += blockDim.x)
            out[base + j] = from_f32<Out>(x[base + j] * inv_rms * load_as_float(weight, weight_dtype, j));
    }
}

// One thread per (row, head, j < head_dim/2) pair; rotates dimensions j and j + head_dim/2 (rotate_half).
template <typename T>
__global__ void rope_kernel(T* x, int rows, int heads, int head_dim, int seq_len, int start_pos,
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
        T* p = x + head_row * head_dim;
        const float a = to_f32(p[j]), b = to_f32(p[j + half]);
        p[j] = from_f32<T>(a * cosine - b * sine);
        p[j + half] = from_f32<T>(b * cosine + a * sine);
    }
}

// 16-bit x with head_dim % 4 == 0: one thread per two adjacent j, read and written as 4-byte pairs (the scalar kernel
// above moves 2 bytes per access, which leaves a 16-bit tensor at a third of the bandwidth). Same arithmetic.
template <typename T>
__global__ void rope_pairs_kernel(T* x, int rows, int heads, int head_dim, int seq_len, int start_pos,
                                  const float* __restrict__ inv_freq) {
    const int half = head_dim / 2, quarter = head_dim / 4;
    const size_t total = static_cast<size_t>(rows) * heads * quarter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int j = 2 * static_cast<int>(i % quarter);
        const size_t head_row = i / quarter;  // row * heads + head
        const int row = static_cast<int>(head_row / heads);
        const float position = static_cast<float>(start_pos + row % seq_len);
        float s0, c0, s1, c1;
        sincosf(position * inv_freq[j], &s0, &c0);
        sincosf(position * inv_freq[j + 1], &s1, &c1);
        T* p = x + head_row * head_dim;
        uint32_t a_bits = *reinterpret_cast<const uint32_t*>(p + j), b_bits = *reinterpret_cast<const uint32_t*>(p + j + half);
        const T* a = reinterpret_cast<const T*>(&a_bits);
        const T* b = reinterpret_cast<const T*>(&b_bits);
        const float a0 = to_f32(a[0]), a1 = to_f32(a[1]), b0 = to_f32(b[0]), b1 = to_f32(b[1]);
        T ra[2] = {from_f32<T>(a0 * c0 - b0 * s0), from_f32<T>(a1 * c1 - b1 * s1)};
        T rb[2] = {from_f32<T>(b0 * c0 + a0 * s0), from_f32<T>(b1 * c1 + a1 * s1)};
        *reinterpret_cast<uint32_t*>(p + j) = *reinterpret_cast<const uint32_t*>(ra);
        *reinterpret_cast<uint32_t*>(p + j + half) = *reinterpret_cast<const uint32_t*>(rb);
    }
}

template <typename T>
int launch_rope(T* x, int rows, int heads, int head_dim, int seq_len, int start_pos, const float* inv, cudaStream_t s) {
    if (!std::is_same<T, float>::value && head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0) {
        const size_t quads = static_cast<size_t>(rows) * heads * (head_dim / 4);
        rope_pairs_kernel<<<blocks_for(quads, 256), 256, 0, s>>>(x, rows, heads, head_dim, seq_len, start_pos, inv);
    } else {
        const size_t pairs = static_cast<size_t>(rows) * heads * (head_dim / 2);
        rope_kernel<<<blocks_for(pairs, 256), 256, 0, s>>>(x, rows, heads, head_dim, seq_len, start_pos, inv);
    }
    return check_launch("rope_kernel");
}

template <typename Out>
int launch_rmsnorm(void* out, const void* x, const void* weight, int weight_dtype, int rows, int cols, float eps,
                   cudaStream_t s) {
    const bool vec4 = cols % 4 == 0 && aligned16(x) && aligned16(out);  // rows start 16 (8) bytes apart then
    const int per_row = vec4 ? cols / 4 : cols;  // a thread each, up to kNormThreads (then each takes several)
    const int threads = per_row >= kNormThreads ? kNormThreads : ((per_row + 31) / 32) * 32;
    const auto kernel = vec4 ? rmsnorm_kernel<Out, true> : rmsnorm_kernel<Out, false>;
    QT_CUDA_TRY(launch_dependent(kernel, rows, threads, 0, s, static_cast<Out*>(out), static_cast<const float*>(x),
                                 weight, weight_dtype, cols, eps));
    return check_launch("rmsnorm_kernel");
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_rmsnorm(void* out, int out_dtype, const void* x, const void* weight, int weight_dtype, int rows, int cols,
               float eps, void* stream) {
    QT_REQUIRE(rows >= 0 && cols > 0, "qt_rmsnorm: need rows >= 0, cols > 0 (got %d, %d)", rows, cols);
    if (rows == 0) return QT_OK;
    QT_REQUIRE(out && x && weight, "qt_rmsnorm: NULL argument");
    QT_REQUIRE(is_float_dtype(weight_dtype), "qt_rmsnorm: weight dtype %s", dtype_name(weight_dtype));
    QT_REQUIRE(is_float_dtype(out_dtype), "qt_rmsnorm: out dtype %s", dtype_name(out_dtype));
    QT_REQUIRE(out_dtype == QT_F32 || out != x, "qt_rmsnorm: a %s out cannot be x", dtype_name(out_dtype));
    cudaStream_t s = as_stream(stream);
    switch (out_dtype) {
        case QT_F32: return launch_rmsnorm<float>(out, x, weight, weight_dtype, rows, cols, eps, s);
        case QT_F16: return launch_rmsnorm<__half>(out, x, weight, weight_dtype, rows, cols, eps, s);
        default: return launch_rmsnorm<__nv_bfloat16>(out, x, weight, weight_dtype, rows, cols, eps, s);
    }
}

int qt_rope(void* x, int dtype, int rows, int heads, int head_dim, int seq_len, int start_pos, const void* inv_freq,
            void* stream) {
    QT_REQUIRE(rows >= 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0 && seq_len > 0 && start_pos >= 0,
               "qt_rope: bad sizes (rows %d, heads %d, head_dim %d (must be even), seq_len %d, start_pos %d)", rows,
               heads, head_dim, seq_len, start_pos);
    QT_REQUIRE(is_float_dtype(dtype), "qt_rope: dtype %s", dtype_name(dtype));
    if (rows == 0) return QT_OK;
    QT_REQUIRE(x && inv_freq, "qt_rope: NULL argument");
    cudaStream_t s = as_stream(stream);
    const float* inv = static_cast<const float*>(inv_freq);
    switch (dtype) {
        case QT_F32: return launch_rope(static_cast<float*>(x), rows, heads, head_dim, seq_len, start_pos, inv, s);
        case QT_F16: return launch_rope(static_cast<__half*>(x), rows, heads, head_dim, seq_len, start_pos, inv, s);
        default: return launch_rope(static_cast<__nv_bfloat16*>(x), rows, heads, head_dim, seq_len, start_pos, inv, s);
    }
}

}  // extern "C"
