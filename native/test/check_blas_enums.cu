// Compile-time check that the cuBLAS/cuSOLVER values written out in native/src/blas_dyn.h match the real
// headers. CMake builds this only where cublas_v2.h and cusolverDn.h exist (the GPU host); the build
// machine has neither, which is why blas_dyn.h exists. Nothing here runs: compiling is the test.
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <type_traits>

#include "../src/blas_dyn.h"

namespace b = qt::blas;

static_assert(b::kStatusSuccess == CUBLAS_STATUS_SUCCESS, "CUBLAS_STATUS_SUCCESS");
static_assert(b::kStatusSuccess == CUSOLVER_STATUS_SUCCESS, "CUSOLVER_STATUS_SUCCESS");
static_assert(b::kOpN == CUBLAS_OP_N && b::kOpT == CUBLAS_OP_T, "cublasOperation_t");
static_assert(b::kFillLower == CUBLAS_FILL_MODE_LOWER && b::kFillUpper == CUBLAS_FILL_MODE_UPPER, "cublasFillMode_t");
static_assert(b::kDefaultMath == CUBLAS_DEFAULT_MATH && b::kPedanticMath == CUBLAS_PEDANTIC_MATH, "cublasMath_t");
static_assert(b::kCompute32F == CUBLAS_COMPUTE_32F && b::kCompute32FPedantic == CUBLAS_COMPUTE_32F_PEDANTIC,
              "cublasComputeType_t");
static_assert(b::kGemmDefault == CUBLAS_GEMM_DEFAULT, "cublasGemmAlgo_t");
static_assert(CUSOLVER_STATUS_NOT_INITIALIZED == 1 && CUSOLVER_STATUS_ALLOC_FAILED == 2 &&
                  CUSOLVER_STATUS_INVALID_VALUE == 3 && CUSOLVER_STATUS_ARCH_MISMATCH == 4 &&
                  CUSOLVER_STATUS_EXECUTION_FAILED == 6 && CUSOLVER_STATUS_INTERNAL_ERROR == 7,
              "cusolverStatus_t values named in blas.cu's fail_solver");
// The enums the function-pointer types pass as int must be int-sized.
static_assert(sizeof(cublasStatus_t) == sizeof(int) && sizeof(cublasOperation_t) == sizeof(int) &&
                  sizeof(cublasComputeType_t) == sizeof(int) && sizeof(cublasGemmAlgo_t) == sizeof(int) &&
                  sizeof(cublasFillMode_t) == sizeof(int) && sizeof(cusolverStatus_t) == sizeof(int),
              "enum sizes");

// The function-pointer types against the real prototypes, parameter by parameter (enums as int).
static_assert(std::is_same<decltype(&cublasSgemm_v2),
                           cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                              const float*, const float*, int, const float*, int, const float*,
                                              float*, int)>::value,
              "cublasSgemm_v2 prototype changed");
static_assert(std::is_same<decltype(&cublasSetWorkspace_v2), cublasStatus_t (*)(cublasHandle_t, void*, size_t)>::value,
              "cublasSetWorkspace_v2 prototype changed");
// cublasGemmEx has C++ overloads: taking its address as this exact type compiles only if one matches.
using GemmExPrototype = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                           const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                           const void*, void*, cudaDataType, int, cublasComputeType_t,
                                           cublasGemmAlgo_t);
[[maybe_unused]] static const GemmExPrototype gemm_ex_matches = &cublasGemmEx;
static_assert(std::is_same<decltype(&cusolverDnSpotrf),
                           cusolverStatus_t (*)(cusolverDnHandle_t, cublasFillMode_t, int, float*, int, float*, int,
                                                int*)>::value,
              "cusolverDnSpotrf prototype changed");
static_assert(std::is_same<decltype(&cusolverDnSpotri),
                           cusolverStatus_t (*)(cusolverDnHandle_t, cublasFillMode_t, int, float*, int, float*, int,
                                                int*)>::value,
              "cusolverDnSpotri prototype changed");

int main() { return 0; }
