// Cholesky factorization and inverse through cuSOLVER (for GPTQ's inverse Hessian), and symmetrization.
//
// qtool's matrices are row-major; cuSOLVER's are column-major, where the same memory reads as the
// transpose. For a symmetric matrix that is the same matrix, but the triangles swap: the row-major lower
// triangle is the column-major upper one. So QT_LOWER maps to CUBLAS_FILL_MODE_UPPER: cuSOLVER then
// computes a = U^T U (column-major U), whose memory read row-major is L = U^T with a = L L^T.
#include <cstdio>

#include "blas_dyn.h"
#include "internal.h"

namespace qt {
namespace {

constexpr int kMaxDevices = 64;
void* workspace[kMaxDevices];       // per device: [dev_info (16 bytes)][work floats]; guarded by handle_mutex
size_t workspace_bytes[kMaxDevices];

int ensure_workspace(size_t bytes, void** out) {
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= kMaxDevices) return fail(QT_ERR_UNSUPPORTED, "cuSOLVER workspace: device %d", device);
    if (workspace_bytes[device] < bytes) {
        // cudaFree waits for the device, so work still using the old buffer finishes first.
        if (workspace[device] != nullptr) QT_CUDA_TRY(cudaFree(workspace[device]));
        workspace[device] = nullptr;
        workspace_bytes[device] = 0;
        QT_TRY(qt_malloc(&workspace[device], bytes));
        workspace_bytes[device] = bytes;
    }
    *out = workspace[device];
    return QT_OK;
}

enum class Factorization { kCholesky, kInverse };

int factorize(Factorization which, void* a, int n, int triangle, int* info, void* stream, const char* caller) {
    QT_REQUIRE(info != nullptr, "%s: info is NULL", caller);
    *info = 0;
    QT_REQUIRE(n >= 0, "%s: n = %d", caller, n);
    QT_REQUIRE(triangle == QT_LOWER || triangle == QT_UPPER, "%s: triangle %d", caller, triangle);
    if (n == 0) return QT_OK;
    QT_REQUIRE(a != nullptr, "%s: a is NULL", caller);
    cudaStream_t s = as_stream(stream);
    const int uplo = triangle == QT_LOWER ? blas::kFillUpper : blas::kFillLower;  // see the file comment
    float* matrix = static_cast<float*>(a);

    std::lock_guard<std::mutex> lock(blas::handle_mutex());
    blas::SolverHandle handle = nullptr;
    QT_TRY(blas::solver_handle_for(s, &handle, caller));
    const blas::SolverApi* solver = blas::solver_api();
    int lwork = 0;
    blas::Status status = which == Factorization::kCholesky
                              ? solver->spotrf_buffer_size(handle, uplo, n, matrix, n, &lwork)
                              : solver->spotri_buffer_size(handle, uplo, n, matrix, n, &lwork);
    if (status != blas::kStatusSuccess)
        return blas::fail_solver(status, which == Factorization::kCholesky ? "cusolverDnSpotrf_bufferSize"
                                                                          : "cusolverDnSpotri_bufferSize");
    void* buffer = nullptr;
    QT_TRY(ensure_workspace(16 + sizeof(float) * static_cast<size_t>(lwork), &buffer));
    int* dev_info = static_cast<int*>(buffer);
    float* work = reinterpret_cast<float*>(static_cast<char*>(buffer) + 16);
    status = which == Factorization::kCholesky ? solver->spotrf(handle, uplo, n, matrix, n, work, lwork, dev_info)
                                               : solver->spotri(handle, uplo, n, matrix, n, work, lwork, dev_info);
    if (status != blas::kStatusSuccess)
        return blas::fail_solver(status, which == Factorization::kCholesky ? "cusolverDnSpotrf" : "cusolverDnSpotri");
    int host_info = 0;
    QT_CUDA_TRY(cudaMemcpyAsync(&host_info, dev_info, sizeof host_info, cudaMemcpyDeviceToHost, s));
    QT_CUDA_TRY(cudaStreamSynchronize(s));
    *info = host_info;
    if (host_info > 0)
        return fail(QT_ERR_NOT_POSITIVE_DEFINITE, "%s: the leading minor of order %d is not positive definite%s", caller,
                    host_info, which == Factorization::kInverse ? " (the factor is singular)" : "");
    if (host_info < 0) return fail(QT_ERR_CUSOLVER, "%s: cuSOLVER rejected parameter %d", caller, -host_info);
    return QT_OK;
}

// Copies the `from` triangle onto the other one through 32x32 tiles in shared memory, so both the reads
// (of the mirrored tile) and the writes are coalesced.
__global__ void symmetrize_kernel(float* a, int n, int from_lower) {
    __shared__ float tile[32][33];  // +1 column: transposed reads hit distinct banks
    const int tile_row = blockIdx.y, tile_col = blockIdx.x;
    // Destination tiles: strictly upper (col > row) when copying from the lower triangle, and vice versa.
    if (from_lower ? tile_col < tile_row : tile_col > tile_row) return;
    // Source: the mirrored tile (tile_col, tile_row); dst(i, j) = a[j][i].
    for (int y = threadIdx.y; y < 32; y += blockDim.y) {
        const int src_row = tile_col * 32 + y, src_col = tile_row * 32 + threadIdx.x;
        if (src_row < n && src_col < n) tile[y][threadIdx.x] = a[static_cast<size_t>(src_row) * n + src_col];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < 32; y += blockDim.y) {
        const int i = tile_row * 32 + y, j = tile_col * 32 + threadIdx.x;
        if (i < n && j < n && (from_lower ? j > i : j < i)) a[static_cast<size_t>(i) * n + j] = tile[threadIdx.x][y];
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_cholesky(void* a, int n, int triangle, int* info, void* stream) {
    return factorize(Factorization::kCholesky, a, n, triangle, info, stream, "qt_cholesky");
}

int qt_cholesky_inverse(void* a, int n, int triangle, int* info, void* stream) {
    return factorize(Factorization::kInverse, a, n, triangle, info, stream, "qt_cholesky_inverse");
}

int qt_symmetrize(void* a, int n, int from_triangle, void* stream) {
    QT_REQUIRE(n >= 0, "qt_symmetrize: n = %d", n);
    QT_REQUIRE(from_triangle == QT_LOWER || from_triangle == QT_UPPER, "qt_symmetrize: triangle %d", from_triangle);
    if (n == 0) return QT_OK;
    QT_REQUIRE(a != nullptr, "qt_symmetrize: a is NULL");
    const unsigned int tiles = (n + 31) / 32;
    QT_REQUIRE(tiles <= 65535, "qt_symmetrize: n = %d is too large", n);
    symmetrize_kernel<<<dim3(tiles, tiles), dim3(32, 8), 0, as_stream(stream)>>>(static_cast<float*>(a), n,
                                                                                 from_triangle == QT_LOWER);
    return check_launch("symmetrize_kernel");
}

}  // extern "C"
