// cuBLAS and cuSOLVER reached through dlopen: the types, enum values and function-pointer types this
// library uses, written out because the build machine has no cuBLAS/cuSOLVER headers (and so that
// libqtool.so builds, and loads, anywhere; the libraries are needed only when a product is computed).
//
// Values copied from CUDA 13.0's cublas_api.h (cublasStatus_t, cublasOperation_t, cublasFillMode_t,
// cublasMath_t, cublasComputeType_t, cublasGemmAlgo_t) and cusolver_common.h (cusolverStatus_t); the data
// types come from library_types.h, which ships with the CUDA runtime headers. native/test/check_blas_enums.cu
// static_asserts every value against the real headers where they exist (the GPU host); CMake builds it
// whenever it finds cublas_v2.h.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType: CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF

#include <mutex>

namespace qt {
namespace blas {

using Handle = void*;        // cublasHandle_t: struct cublasContext*
using SolverHandle = void*;  // cusolverDnHandle_t: struct cusolverDnContext*
using Status = int;          // cublasStatus_t and cusolverStatus_t are C enums: int-sized

constexpr Status kStatusSuccess = 0;  // CUBLAS_STATUS_SUCCESS, CUSOLVER_STATUS_SUCCESS

// cublasOperation_t
constexpr int kOpN = 0;  // CUBLAS_OP_N
constexpr int kOpT = 1;  // CUBLAS_OP_T

// cublasFillMode_t (column-major triangles, as cuSOLVER sees them)
constexpr int kFillLower = 0;  // CUBLAS_FILL_MODE_LOWER
constexpr int kFillUpper = 1;  // CUBLAS_FILL_MODE_UPPER

// cublasMath_t
constexpr int kDefaultMath = 0;   // CUBLAS_DEFAULT_MATH: FP32 products stay FP32 (no TF32)
constexpr int kPedanticMath = 2;  // CUBLAS_PEDANTIC_MATH

// cublasComputeType_t
constexpr int kCompute32F = 68;           // CUBLAS_COMPUTE_32F
constexpr int kCompute32FPedantic = 69;   // CUBLAS_COMPUTE_32F_PEDANTIC

// cublasGemmAlgo_t
constexpr int kGemmDefault = -1;  // CUBLAS_GEMM_DEFAULT

// Function types: the C signatures, with enums as int and handles as void*.
using CreateFn = Status (*)(Handle*);                               // cublasCreate_v2
using DestroyFn = Status (*)(Handle);                               // cublasDestroy_v2
using SetStreamFn = Status (*)(Handle, cudaStream_t);               // cublasSetStream_v2
using SetMathModeFn = Status (*)(Handle, int);                      // cublasSetMathMode
using SetWorkspaceFn = Status (*)(Handle, void*, size_t);           // cublasSetWorkspace_v2
using GetStatusStringFn = const char* (*)(Status);                  // cublasGetStatusString
using SgemmFn = Status (*)(Handle, int transa, int transb, int m, int n, int k, const float* alpha,
                           const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                           int ldc);                                // cublasSgemm_v2
using GemmExFn = Status (*)(Handle, int transa, int transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType a_type, int lda, const void* b, cudaDataType b_type,
                            int ldb, const void* beta, void* c, cudaDataType c_type, int ldc, int compute_type,
                            int algo);                              // cublasGemmEx

using SolverCreateFn = Status (*)(SolverHandle*);                   // cusolverDnCreate
using SolverDestroyFn = Status (*)(SolverHandle);                   // cusolverDnDestroy
using SolverSetStreamFn = Status (*)(SolverHandle, cudaStream_t);   // cusolverDnSetStream
using SpotrfBufferSizeFn = Status (*)(SolverHandle, int uplo, int n, float* a, int lda, int* lwork);
using SpotrfFn = Status (*)(SolverHandle, int uplo, int n, float* a, int lda, float* work, int lwork,
                            int* dev_info);                         // cusolverDnSpotrf
using SpotriBufferSizeFn = Status (*)(SolverHandle, int uplo, int n, float* a, int lda, int* lwork);
using SpotriFn = Status (*)(SolverHandle, int uplo, int n, float* a, int lda, float* work, int lwork,
                            int* dev_info);                         // cusolverDnSpotri

struct Api {
    CreateFn create;
    DestroyFn destroy;
    SetStreamFn set_stream;
    SetMathModeFn set_math_mode;
    SetWorkspaceFn set_workspace;
    GetStatusStringFn get_status_string;  // optional (NULL if absent)
    SgemmFn sgemm;
    GemmExFn gemm_ex;
};

struct SolverApi {
    SolverCreateFn create;
    SolverDestroyFn destroy;
    SolverSetStreamFn set_stream;
    SpotrfBufferSizeFn spotrf_buffer_size;
    SpotrfFn spotrf;
    SpotriBufferSizeFn spotri_buffer_size;
    SpotriFn spotri;
};

// Set by qt_init; NULL until cuBLAS (cuSOLVER) is loaded.
const Api* api();
const SolverApi* solver_api();

// Guards the handles (shared by all threads): hold it from handle_for until the last call on the handle.
std::mutex& handle_mutex();

// The current device's handle, created on first use, with its stream set to `stream` and that stream's own
// workspace (allocated on the stream's first use, which a graph capture refuses). Call with handle_mutex() held.
// Fails with QT_ERR_NOT_INITIALIZED before qt_init (QT_ERR_LIBRARY_NOT_FOUND for cuSOLVER when it was not found).
int handle_for(cudaStream_t stream, Handle* handle, const char* caller);
int solver_handle_for(cudaStream_t stream, SolverHandle* handle, const char* caller);

// Records a failed cuBLAS/cuSOLVER call ("<what>: <status text> (status N)") and returns the status.
int fail_blas(Status status, const char* what);
int fail_solver(Status status, const char* what);

}  // namespace blas
}  // namespace qt
