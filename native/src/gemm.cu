// qt_linear: out = x W^T (+ bias) through cuBLAS.
//
// Row-major out [rows, outF] = x [rows, in] * W^T, W [outF, in]. cuBLAS is column-major, where the same
// memory reads as out^T [outF, rows], x^T [in, rows] and W^T [in, outF]; so out^T = op(W^T) * x^T with
// op = transpose: gemm(T, N, m = outF, n = rows, k = in, A = W (lda = in), B = x (ldb = in), C = out (ldc = outF)).
#include <type_traits>

#include "blas_dyn.h"
#include "internal.h"

namespace qt {
namespace {

// F32 -> F16/BF16 with round to nearest even, the input of the tensor-core product.
template <typename T>
__global__ void round_activations(T* __restrict__ dst, const float* __restrict__ src, size_t n);

template <>
__global__ void round_activations<__half>(__half* __restrict__ dst, const float* __restrict__ src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]);
}

template <>
__global__ void round_activations<__nv_bfloat16>(__nv_bfloat16* __restrict__ dst, const float* __restrict__ src,
                                                  size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

// out[r, c] += bias[c], out of type Out.
template <typename Out>
__global__ void add_bias(Out* __restrict__ out, const void* __restrict__ bias, int bias_dtype, size_t rows, int cols) {
    size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float b = load_as_float(bias, bias_dtype, i % cols);
        if constexpr (std::is_same<Out, float>::value) out[i] += b;
        else if constexpr (std::is_same<Out, __half>::value) out[i] = __float2half_rn(__half2float(out[i]) + b);
        else out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) + b);
    }
}

cudaDataType cuda_type(int dtype) {
    return dtype == QT_F32 ? CUDA_R_32F : dtype == QT_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_linear_scratch_bytes(int rows, int in_features, int x_dtype, int weight_dtype, size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_linear_scratch_bytes: bytes is NULL");
    QT_REQUIRE(rows >= 0 && in_features >= 0, "qt_linear_scratch_bytes: negative size");
    QT_REQUIRE(is_float_dtype(weight_dtype), "qt_linear_scratch_bytes: weight dtype %s", dtype_name(weight_dtype));
    QT_REQUIRE(is_float_dtype(x_dtype), "qt_linear_scratch_bytes: x dtype %s", dtype_name(x_dtype));
    *bytes = weight_dtype != QT_F32 && x_dtype == QT_F32 ? static_cast<size_t>(rows) * in_features * 2 : 0;
    return QT_OK;
}

int qt_linear_prepare(void* stream) {
    constexpr int n = 64;
    void* buffer = nullptr;
    QT_CUDA_TRY(cudaMalloc(&buffer, 3 * n * n * sizeof(float)));
    cudaStream_t s = as_stream(stream);
    cudaError_t error = cudaMemsetAsync(buffer, 0, 3 * n * n * sizeof(float), s);
    int status = error == cudaSuccess ? QT_OK : fail_cuda(error, "cudaMemsetAsync (qt_linear_prepare)");
    char* b = static_cast<char*>(buffer);
    const size_t stride = n * n * sizeof(float);
    for (int dtype : {QT_F16, QT_BF16, QT_F32}) {
        if (status != QT_OK) break;
        status = qt_linear(b, QT_F32, b + stride, dtype, b + 2 * stride, dtype, nullptr, 0, n, n, n, 0, nullptr, 0, stream);
    }
    if (status == QT_OK && (error = cudaStreamSynchronize(s)) != cudaSuccess)
        status = fail_cuda(error, "cudaStreamSynchronize (qt_linear_prepare)");
    cudaFree(buffer);
    return status;
}

int qt_linear(void* out, int out_dtype, const void* x, int x_dtype, const void* weight, int weight_dtype,
              const void* bias, int bias_dtype, int rows, int in_features, int out_features, int accumulate,
              void* scratch, size_t scratch_bytes, void* stream) {
    QT_REQUIRE(rows >= 0 && in_features >= 0 && out_features >= 0, "qt_linear: negative size (%d, %d, %d)", rows,
               in_features, out_features);
    if (rows == 0 || out_features == 0) return QT_OK;
    QT_REQUIRE(out && x && weight, "qt_linear: NULL out, x or weight");
    QT_REQUIRE(is_float_dtype(weight_dtype), "qt_linear: weight dtype %s (need F32, F16 or BF16)",
               dtype_name(weight_dtype));
    QT_REQUIRE(bias == nullptr || is_float_dtype(bias_dtype), "qt_linear: bias dtype %s", dtype_name(bias_dtype));
    if (weight_dtype == QT_F32) {
        QT_REQUIRE(x_dtype == QT_F32 && out_dtype == QT_F32, "qt_linear: F32 weights take F32 x and out (got %s, %s)",
                   dtype_name(x_dtype), dtype_name(out_dtype));
    } else {
        QT_REQUIRE(x_dtype == QT_F32 || x_dtype == weight_dtype, "qt_linear: x dtype %s with %s weights (need F32 or %s)",
                   dtype_name(x_dtype), dtype_name(weight_dtype), dtype_name(weight_dtype));
        QT_REQUIRE(out_dtype == QT_F32 || out_dtype == weight_dtype,
                   "qt_linear: out dtype %s with %s weights (need F32 or %s)", dtype_name(out_dtype),
                   dtype_name(weight_dtype), dtype_name(weight_dtype));
    }
    cudaStream_t s = as_stream(stream);

    if (in_features == 0) {  // an empty sum: zeros (plus bias), or nothing to accumulate
        if (!accumulate)
            QT_CUDA_TRY(cudaMemsetAsync(out, 0, dtype_bytes(out_dtype) * rows * out_features, s));
    } else {
        const void* activations = x;
        if (weight_dtype != QT_F32 && x_dtype == QT_F32) {
            size_t need = static_cast<size_t>(rows) * in_features * 2;
            QT_REQUIRE(scratch != nullptr && scratch_bytes >= need,
                       "qt_linear: scratch of %zu bytes is smaller than the %zu needed (qt_linear_scratch_bytes)",
                       scratch_bytes, need);
            size_t n = static_cast<size_t>(rows) * in_features;
            if (weight_dtype == QT_F16)
                round_activations<__half><<<blocks_for(n, 256), 256, 0, s>>>(static_cast<__half*>(scratch),
                                                                            static_cast<const float*>(x), n);
            else
                round_activations<__nv_bfloat16><<<blocks_for(n, 256), 256, 0, s>>>(
                    static_cast<__nv_bfloat16*>(scratch), static_cast<const float*>(x), n);
            QT_TRY(check_launch("round_activations"));
            activations = scratch;
        }

        std::lock_guard<std::mutex> lock(blas::handle_mutex());
        blas::Handle handle = nullptr;
        QT_TRY(blas::handle_for(s, &handle, "qt_linear"));
        const blas::Api* cublas = blas::api();
        const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
        blas::Status status;
        if (weight_dtype == QT_F32) {
            status = cublas->sgemm(handle, blas::kOpT, blas::kOpN, out_features, rows, in_features, &one,
                                   static_cast<const float*>(weight), in_features, static_cast<const float*>(x),
                                   in_features, &beta, static_cast<float*>(out), out_features);
            if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasSgemm_v2 (qt_linear)");
        } else {
            cudaDataType type = cuda_type(weight_dtype);
            status = cublas->gemm_ex(handle, blas::kOpT, blas::kOpN, out_features, rows, in_features, &one, weight,
                                     type, in_features, activations, type, in_features, &beta, out,
                                     cuda_type(out_dtype), out_features, blas::kCompute32F, blas::kGemmDefault);
            if (status != blas::kStatusSuccess) return blas::fail_blas(status, "cublasGemmEx (qt_linear)");
        }
    }

    if (bias != nullptr) {
        size_t n = static_cast<size_t>(rows) * out_features;
        const unsigned blocks = blocks_for(n, 256);
        if (out_dtype == QT_F32)
            add_bias<<<blocks, 256, 0, s>>>(static_cast<float*>(out), bias, bias_dtype, rows, out_features);
        else if (out_dtype == QT_F16)
            add_bias<<<blocks, 256, 0, s>>>(static_cast<__half*>(out), bias, bias_dtype, rows, out_features);
        else
            add_bias<<<blocks, 256, 0, s>>>(static_cast<__nv_bfloat16*>(out), bias, bias_dtype, rows, out_features);
        QT_TRY(check_launch("add_bias"));
    }
    return QT_OK;
}

}  // extern "C"
