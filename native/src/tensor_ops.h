// Device primitives of the tensor-core kernels (attention.cu, qgemm.cu): async copies into shared memory, ldmatrix,
// and the m16n8k16 FP16 product with FP32 accumulation.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "qtool's tensor-core kernels use cp.async and mma.sync: build for compute capability 8.0 or newer (QTOOL_CUDA_ARCH)"
#endif

namespace qt {

// Tile loads are async copies (cp.async, sm_80+): the bytes go from global to shared memory without passing
// through registers, so every thread keeps all its loads in flight while the block computes on an earlier tile.
// (Against plain loads in the attention kernel on an H100: decode 1213 vs 794 GB/s, prefill 25.2 vs 24.7 TFLOP/s;
// native/README.md.) A source that is not valid reads nothing and writes zeros (src-size 0).
__device__ __forceinline__ void copy16(void* shared_dst, const void* global_src, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src), "r"(valid ? 16 : 0));
}

// Closes a group of async copies; wait_copies<N> returns once all but the N most recent groups have landed
// (in this thread: a __syncthreads must follow before other threads' copies are read).
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait_copies() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 16-bit matrices from shared memory (volatile: kept in program order, so never above the barrier that
// publishes the tile; the loops that use them issue a whole step's loads before its products, so their latencies
// overlap); lane l gives the address of row l % 8 of matrix l / 8, and receives in r[m] its two elements of matrix m:
// (row l / 4, columns 2 (l % 4), +1), or with .trans (rows 2 (l % 4), +1 of column l / 4).
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const void* p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// c += a b: a 16x16 FP16 (row-major fragments), b 16x8 FP16 (column-major), c 16x8 FP32.
__device__ __forceinline__ void mma_f16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm(  // not volatile: a pure register operation the compiler may schedule
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace qt
