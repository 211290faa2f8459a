// Private helpers shared by the native sources: error reporting, CUDA call checks, dtype helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>

#include "qtool.h"

namespace qt {

// Records a detail message for the calling thread (read back by qt_last_error) and returns status.
int fail(int status, const char* format, ...) __attribute__((format(printf, 2, 3)));

// Maps a CUDA runtime error to a status and records "<what>: <cuda text> (<name>, <code>)".
int fail_cuda(cudaError_t error, const char* what);

// Status code a failing CUDA call maps to: no device, out of memory, or the generic CUDA error.
int status_of(cudaError_t error);

// Checks the launch just made (configuration errors, a sticky error from earlier work).
int check_launch(const char* kernel);

// The current device's multiprocessor count, cached per device.
int multiprocessor_count();

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// ---- programmatic dependent launch (Hopper) ----
// Decoding is a chain of small kernels, each waiting for the one before it. launch_dependent starts a kernel while the
// previous one in the stream still runs (once all of that kernel's blocks have called allow_dependents or exited), so
// the launch latency and the previous kernel's tail overlap: on an H100, reading a 24 MB matrix takes a lone kernel
// 10.9 µs (73 % of copy bandwidth) and a chained one 8.1 µs (98 %). A kernel so launched must call
// wait_for_prior_grid() before it reads what an earlier kernel wrote or writes anything (ours do it first thing).
// Both are no-ops in a kernel launched the ordinary way, and before sm_90.
__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next dependent launch start. Most kernels call it right after wait_for_prior_grid; qmatrix_gemv calls it
// first thing, so that the next GEMV's blocks, taking SMs as this one's finish, load their weights early. Each kernel
// still waits for the one before it (whose completion implies its own predecessor's) before it reads a result or
// writes anything.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// wait_for_prior_grid() for a kernel that reads an earlier result only through p: p's value passes through the wait,
// so reads through it come after, but other loads (of constant weights) may be issued before it, to stream in while
// the kernel before still drains. Writes must still follow a plain wait_for_prior_grid().
template <typename T>
__device__ __forceinline__ T* wait_for_prior_grid(T* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" : "+l"(p));
#endif
    return p;
}

// Whether the current device takes dependent launches (compute capability 9 or later; QTOOL_PDL=0 turns them off, for
// measurements), cached per device.
bool dependent_launches();

// kernel<<<grid, block, smem, s>>>(args...) as a dependent launch where the device takes them.
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             Args... args) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = s;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = dependent_launches() ? 1 : 0;
    return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

inline bool is_float_dtype(int dtype) { return dtype == QT_F32 || dtype == QT_F16 || dtype == QT_BF16; }

inline size_t dtype_bytes(int dtype) {
    switch (dtype) {
        case QT_F32: return 4;
        case QT_F16: return 2;
        case QT_BF16: return 2;
        case QT_I32: return 4;
        case QT_F64: return 8;
        default: return 0;
    }
}

inline const char* dtype_name(int dtype) {
    switch (dtype) {
        case QT_F32: return "F32";
        case QT_F16: return "F16";
        case QT_BF16: return "BF16";
        case QT_I32: return "I32";
        case QT_F64: return "F64";
        default: return "unknown";
    }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline unsigned int blocks_for(size_t n, unsigned int threads, unsigned int cap = 65535u * 8u) {
    size_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    return b > cap ? cap : static_cast<unsigned int>(b);
}

// Loads element i of a float tensor of a run-time dtype as F32.
__device__ __forceinline__ float load_as_float(const void* p, int dtype, size_t i) {
    switch (dtype) {
        case QT_F16: return __half2float(static_cast<const __half*>(p)[i]);
        case QT_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
        default: return static_cast<const float*>(p)[i];
    }
}

}  // namespace qt

// Returns from the enclosing function with a status when a CUDA runtime call fails.
#define QT_CUDA_TRY(call)                                                       \
    do {                                                                        \
        cudaError_t qt_err_ = (call);                                           \
        if (qt_err_ != cudaSuccess) return ::qt::fail_cuda(qt_err_, #call);     \
    } while (0)

// Returns from the enclosing function when a qt_ status is not QT_OK.
#define QT_TRY(call)                                                            \
    do {                                                                        \
        int qt_status_ = (call);                                                \
        if (qt_status_ != QT_OK) return qt_status_;                             \
    } while (0)

#define QT_REQUIRE(condition, ...)                                              \
    do {                                                                        \
        if (!(condition)) return ::qt::fail(QT_ERR_INVALID_ARGUMENT, __VA_ARGS__); \
    } while (0)
