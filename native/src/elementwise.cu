// Elementwise and row-wise kernels: dtype casts, embedding lookup, SiLU gating, residual add, and the
// cross-entropy of logits against targets.
#include <cmath>

#include "internal.h"

namespace qt {
namespace {

// ---- cast ------------------------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ T from_double(double v);
template <> __device__ __forceinline__ float from_double<float>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ __half from_double<__half>(double v) { return __double2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) { return __double2bfloat16(v); }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Each source element converts straight to the destination type (F64 too: no double rounding through F32).
template <typename Dst, typename Src>
__global__ void cast_kernel(Dst* __restrict__ dst, const Src* __restrict__ src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if constexpr (std::is_same<Src, double>::value) dst[i] = from_double<Dst>(src[i]);
        else dst[i] = from_float<Dst>(to_float(src[i]));
    }
}

template <typename Dst>
int launch_cast(void* dst, const void* src, int src_dtype, size_t n, cudaStream_t s) {
    unsigned int blocks = blocks_for(n, 256);
    Dst* d = static_cast<Dst*>(dst);
    switch (src_dtype) {
        case QT_F32: cast_kernel<<<blocks, 256, 0, s>>>(d, static_cast<const float*>(src), n); break;
        case QT_F16: cast_kernel<<<blocks, 256, 0, s>>>(d, static_cast<const __half*>(src), n); break;
        case QT_BF16: cast_kernel<<<blocks, 256, 0, s>>>(d, static_cast<const __nv_bfloat16*>(src), n); break;
        case QT_F64: cast_kernel<<<blocks, 256, 0, s>>>(d, static_cast<const double*>(src), n); break;
        default: return fail(QT_ERR_INVALID_ARGUMENT, "qt_cast: source dtype %s", dtype_name(src_dtype));
    }
    return check_launch("cast_kernel");
}

// ---- embedding -------------------------------------------------------------------------------------

// One block per output row; an id outside the table writes NaN so the mistake cannot pass unseen.
__global__ void embedding_kernel(float* __restrict__ out, const void* __restrict__ table, int table_dtype,
                                 const int* __restrict__ ids, int dim, int vocab) {
    const int row = blockIdx.x;
    const int id = ids[row];
    float* dst = out + static_cast<size_t>(row) * dim;
    if (id < 0 || id >= vocab) {
        for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = NAN;
        return;
    }
    const size_t base = static_cast<size_t>(id) * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = load_as_float(table, table_dtype, base + j);
}

// ---- silu_mul, add ---------------------------------------------------------------------------------

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

template <typename T>
__global__ void silu_mul_kernel(T* out, const T* gate, const T* up, size_t n) {
    wait_for_prior_grid();
    allow_dependents();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_float<T>(silu_times(to_float(gate[i]), to_float(up[i])));
}

// 16 bytes a thread per step: four F32 or eight 16-bit elements.
template <typename T>
__global__ void silu_mul_kernel16(uint4* out, const uint4* gate, const uint4* up, size_t n16) {
    constexpr int E = 16 / sizeof(T);
    wait_for_prior_grid();
    allow_dependents();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        uint4 g4 = gate[i], u4 = up[i], r4;
        const T* g = reinterpret_cast<const T*>(&g4);
        const T* u = reinterpret_cast<const T*>(&u4);
        T* r = reinterpret_cast<T*>(&r4);
#pragma unroll
        for (int e = 0; e < E; e++) r[e] = from_float<T>(silu_times(to_float(g[e]), to_float(u[e])));
        out[i] = r4;
    }
}

template <typename T>
int launch_silu_mul(void* out, const void* gate, const void* up, size_t n, cudaStream_t s) {
    constexpr size_t E = 16 / sizeof(T);
    if (n % E == 0 && aligned16(out) && aligned16(gate) && aligned16(up)) {
        QT_CUDA_TRY(launch_dependent(silu_mul_kernel16<T>, blocks_for(n / E, 256), 256, 0, s, static_cast<uint4*>(out),
                                     static_cast<const uint4*>(gate), static_cast<const uint4*>(up), n / E));
    } else {
        QT_CUDA_TRY(launch_dependent(silu_mul_kernel<T>, blocks_for(n, 256), 256, 0, s, static_cast<T*>(out),
                                     static_cast<const T*>(gate), static_cast<const T*>(up), n));
    }
    return check_launch("silu_mul_kernel");
}

__global__ void add_kernel(float* x, const float* y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

__global__ void add_kernel4(float4* x, const float4* y, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 a = x[i], b = y[i];
        a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
        x[i] = a;
    }
}

// ---- cross entropy ---------------------------------------------------------------------------------

// A running (max, sum of exp(x - max)) pair: the online form of logsumexp, one pass over the row.
struct MaxSum {
    float max;
    float sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
    // -inf maxima carry no mass; skipping them avoids exp(-inf - -inf) = NaN.
    if (a.max == -INFINITY) return b;
    if (b.max == -INFINITY) return a;
    float m = fmaxf(a.max, b.max);
    return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

constexpr int kCrossEntropyThreads = 512;

__global__ void __launch_bounds__(kCrossEntropyThreads)
cross_entropy_kernel(float* __restrict__ out, const float* __restrict__ logits, const int* __restrict__ targets,
                     int vocab) {
    const int row = blockIdx.x;
    const float* x = logits + static_cast<size_t>(row) * vocab;
    MaxSum acc{-INFINITY, 0.0f};
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float v = x[j];
        if (v > acc.max) {
            acc.sum = acc.sum * expf(acc.max - v) + 1.0f;  // exp(-inf) = 0 on the first element
            acc.max = v;
        } else if (v != -INFINITY) {
            acc.sum += expf(v - acc.max);  // NaN logits propagate through here
        }
    }
    // Warp, then block reduction of the pairs.
    for (int offset = 16; offset > 0; offset >>= 1) {
        MaxSum other{__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)};
        acc = combine(acc, other);
    }
    __shared__ MaxSum partial[kCrossEntropyThreads / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < blockDim.x / 32 ? partial[lane] : MaxSum{-INFINITY, 0.0f};
        for (int offset = 16; offset > 0; offset >>= 1) {
            MaxSum other{__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)};
            acc = combine(acc, other);
        }
        if (lane == 0) {
            const int target = targets[row];
            out[row] = (target < 0 || target >= vocab) ? NAN : acc.max + logf(acc.sum) - x[target];
        }
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_cast(void* dst, int dst_dtype, const void* src, int src_dtype, size_t n, void* stream) {
    if (n == 0) return QT_OK;
    QT_REQUIRE(dst && src, "qt_cast: NULL dst or src");
    QT_REQUIRE(is_float_dtype(dst_dtype), "qt_cast: destination dtype %s (need F32, F16 or BF16)", dtype_name(dst_dtype));
    QT_REQUIRE(is_float_dtype(src_dtype) || src_dtype == QT_F64, "qt_cast: source dtype %s", dtype_name(src_dtype));
    cudaStream_t s = as_stream(stream);
    if (dst_dtype == src_dtype) {
        if (dst != src) QT_CUDA_TRY(cudaMemcpyAsync(dst, src, n * dtype_bytes(dst_dtype), cudaMemcpyDeviceToDevice, s));
        return QT_OK;
    }
    switch (dst_dtype) {
        case QT_F32: return launch_cast<float>(dst, src, src_dtype, n, s);
        case QT_F16: return launch_cast<__half>(dst, src, src_dtype, n, s);
        default: return launch_cast<__nv_bfloat16>(dst, src, src_dtype, n, s);
    }
}

int qt_embedding(void* out, const void* table, int table_dtype, const void* ids, int rows, int dim, int vocab,
                 void* stream) {
    QT_REQUIRE(rows >= 0 && dim >= 0 && vocab >= 0, "qt_embedding: negative size");
    if (rows == 0 || dim == 0) return QT_OK;
    QT_REQUIRE(out && table && ids, "qt_embedding: NULL out, table or ids");
    QT_REQUIRE(is_float_dtype(table_dtype), "qt_embedding: table dtype %s", dtype_name(table_dtype));
    int threads = dim >= 256 ? 256 : ((dim + 31) / 32) * 32;
    embedding_kernel<<<rows, threads, 0, as_stream(stream)>>>(static_cast<float*>(out), table, table_dtype,
                                                              static_cast<const int*>(ids), dim, vocab);
    return check_launch("embedding_kernel");
}

int qt_silu_mul(void* out, const void* gate, const void* up, int dtype, size_t n, void* stream) {
    if (n == 0) return QT_OK;
    QT_REQUIRE(out && gate && up, "qt_silu_mul: NULL argument");
    QT_REQUIRE(is_float_dtype(dtype), "qt_silu_mul: dtype %s", dtype_name(dtype));
    cudaStream_t s = as_stream(stream);
    switch (dtype) {
        case QT_F32: return launch_silu_mul<float>(out, gate, up, n, s);
        case QT_F16: return launch_silu_mul<__half>(out, gate, up, n, s);
        default: return launch_silu_mul<__nv_bfloat16>(out, gate, up, n, s);
    }
}

int qt_add(void* x, const void* y, size_t n, void* stream) {
    if (n == 0) return QT_OK;
    QT_REQUIRE(x && y, "qt_add: NULL argument");
    cudaStream_t s = as_stream(stream);
    if (n % 4 == 0 && aligned16(x) && aligned16(y)) {
        add_kernel4<<<blocks_for(n / 4, 256), 256, 0, s>>>(static_cast<float4*>(x), static_cast<const float4*>(y), n / 4);
    } else {
        add_kernel<<<blocks_for(n, 256), 256, 0, s>>>(static_cast<float*>(x), static_cast<const float*>(y), n);
    }
    return check_launch("add_kernel");
}

int qt_cross_entropy(void* out, const void* logits, const void* targets, int rows, int vocab, void* stream) {
    QT_REQUIRE(rows >= 0 && vocab > 0, "qt_cross_entropy: need rows >= 0 and vocab > 0 (got %d, %d)", rows, vocab);
    if (rows == 0) return QT_OK;
    QT_REQUIRE(out && logits && targets, "qt_cross_entropy: NULL argument");
    cross_entropy_kernel<<<rows, kCrossEntropyThreads, 0, as_stream(stream)>>>(
        static_cast<float*>(out), static_cast<const float*>(logits), static_cast<const int*>(targets), vocab);
    return check_launch("cross_entropy_kernel");
}

}  // extern "C"
