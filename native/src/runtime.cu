// Runtime surface: status strings and the per-thread error detail, devices, memory, streams, events,
// CUDA graph capture, and the copy-bandwidth benchmark.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "internal.h"

namespace qt {

namespace {
thread_local char last_error[2048];
// Between qt_graph_begin and qt_graph_end on this thread: the failures recorded meanwhile. A call that fails its
// checks queues nothing, so the capture itself stays valid; qt_graph_end refuses such a graph all the same.
thread_local bool capturing = false;
thread_local int capture_failures = 0;
thread_local int capture_first_status = QT_OK;
thread_local char capture_first_failure[512];
constexpr int kMaxDevices = 64;
int sm_count_cache[kMaxDevices];  // 0 = not read yet
}  // namespace

int fail(int status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    if (capturing && capture_failures++ == 0) {
        capture_first_status = status;
        snprintf(capture_first_failure, sizeof capture_first_failure, "%s", last_error);
    }
    return status;
}

int status_of(cudaError_t error) {
    switch (error) {
        case cudaErrorMemoryAllocation: return QT_ERR_OUT_OF_MEMORY;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInitializationError:
        case cudaErrorDevicesUnavailable:
        case cudaErrorInvalidDevice: return QT_ERR_NO_DEVICE;
        default: return QT_ERR_CUDA;
    }
}

int fail_cuda(cudaError_t error, const char* what) {
    return fail(status_of(error), "%s: %s (%s, CUDA error %d)", what, cudaGetErrorString(error),
                cudaGetErrorName(error), static_cast<int>(error));
}

int check_launch(const char* kernel) {
    cudaError_t error = cudaGetLastError();
    if (error == cudaSuccess) return QT_OK;
    char what[160];
    snprintf(what, sizeof what, "launch of kernel %s", kernel);
    return fail_cuda(error, what);
}

int multiprocessor_count() {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
    int count = sm_count_cache[device];
    if (count == 0) {
        if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0)
            count = 132;
        sm_count_cache[device] = count;
    }
    return count;
}

bool dependent_launches() {
    static int cache[kMaxDevices];  // 0 unknown, 1 no, 2 yes
    static const bool off = [] {
        const char* e = getenv("QTOOL_PDL");
        return e != nullptr && e[0] == '0';
    }();
    int device = 0;
    if (off || cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
    if (cache[device] == 0) {
        int major = 0;
        const bool hopper = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                            major >= 9;
        cache[device] = hopper ? 2 : 1;
    }
    return cache[device] == 2;
}

}  // namespace qt

using namespace qt;

extern "C" {

const char* qt_status_string(int status) {
    switch (status) {
        case QT_OK: return "QT_OK";
        case QT_ERR_INVALID_ARGUMENT: return "QT_ERR_INVALID_ARGUMENT";
        case QT_ERR_NOT_INITIALIZED: return "QT_ERR_NOT_INITIALIZED";
        case QT_ERR_NO_DEVICE: return "QT_ERR_NO_DEVICE";
        case QT_ERR_LIBRARY_NOT_FOUND: return "QT_ERR_LIBRARY_NOT_FOUND";
        case QT_ERR_OUT_OF_MEMORY: return "QT_ERR_OUT_OF_MEMORY";
        case QT_ERR_CUDA: return "QT_ERR_CUDA";
        case QT_ERR_CUBLAS: return "QT_ERR_CUBLAS";
        case QT_ERR_CUSOLVER: return "QT_ERR_CUSOLVER";
        case QT_ERR_UNSUPPORTED: return "QT_ERR_UNSUPPORTED";
        case QT_ERR_NOT_POSITIVE_DEFINITE: return "QT_ERR_NOT_POSITIVE_DEFINITE";
        default: return "QT_ERR_UNKNOWN";
    }
}

const char* qt_last_error(void) { return last_error; }

int qt_noop(void) { return QT_OK; }

int qt_version(int* version) {
    QT_REQUIRE(version != nullptr, "qt_version: version is NULL");
    *version = 100;  // 0.1.0
    return QT_OK;
}

int qt_device_count(int* count) {
    QT_REQUIRE(count != nullptr, "qt_device_count: count is NULL");
    *count = 0;
    QT_CUDA_TRY(cudaGetDeviceCount(count));
    return QT_OK;
}

int qt_set_device(int device) {
    QT_CUDA_TRY(cudaSetDevice(device));
    return QT_OK;
}

int qt_get_device(int* device) {
    QT_REQUIRE(device != nullptr, "qt_get_device: device is NULL");
    QT_CUDA_TRY(cudaGetDevice(device));
    return QT_OK;
}

int qt_device_info_get(int device, qt_device_info* info) {
    QT_REQUIRE(info != nullptr, "qt_device_info_get: info is NULL");
    memset(info, 0, sizeof *info);
    cudaDeviceProp prop;
    QT_CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->multiprocessor_count = prop.multiProcessorCount;
    info->compute_capability_major = prop.major;
    info->compute_capability_minor = prop.minor;
    info->memory_bus_width_bits = prop.memoryBusWidth;
    info->l2_cache_bytes = prop.l2CacheSize;
    info->shared_memory_per_block_optin_bytes = static_cast<int>(prop.sharedMemPerBlockOptin);
    // CUDA 13 dropped cudaDeviceProp::memoryClockRate; the attribute remains.
    QT_CUDA_TRY(cudaDeviceGetAttribute(&info->memory_clock_khz, cudaDevAttrMemoryClockRate, device));
    // Free memory is per device: read it on that device, then restore the caller's.
    int previous = 0;
    QT_CUDA_TRY(cudaGetDevice(&previous));
    QT_CUDA_TRY(cudaSetDevice(device));
    cudaError_t error = cudaMemGetInfo(&info->free_memory_bytes, &info->total_memory_bytes);
    QT_CUDA_TRY(cudaSetDevice(previous));
    if (error != cudaSuccess) return fail_cuda(error, "cudaMemGetInfo");
    return QT_OK;
}

int qt_device_synchronize(void) {
    QT_CUDA_TRY(cudaDeviceSynchronize());
    return QT_OK;
}

int qt_malloc(void** ptr, size_t bytes) {
    QT_REQUIRE(ptr != nullptr, "qt_malloc: ptr is NULL");
    *ptr = nullptr;
    if (bytes == 0) return QT_OK;
    cudaError_t error = cudaMalloc(ptr, bytes);
    if (error != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is not sticky; keep it from leaking into the next check
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return fail(status_of(error), "cudaMalloc(%zu bytes): %s (CUDA error %d; %.2f GiB free of %.2f GiB)",
                    bytes, cudaGetErrorString(error), static_cast<int>(error), free_bytes / 1073741824.0,
                    total_bytes / 1073741824.0);
    }
    return QT_OK;
}

int qt_free(void* ptr) {
    if (ptr == nullptr) return QT_OK;
    QT_CUDA_TRY(cudaFree(ptr));
    return QT_OK;
}

int qt_memset_async(void* ptr, int value, size_t bytes, void* stream) {
    if (bytes == 0) return QT_OK;
    QT_REQUIRE(ptr != nullptr, "qt_memset_async: ptr is NULL");
    QT_CUDA_TRY(cudaMemsetAsync(ptr, value, bytes, as_stream(stream)));
    return QT_OK;
}

namespace {
int copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, void* stream, bool wait, const char* name) {
    if (bytes == 0) return QT_OK;
    if (dst == nullptr || src == nullptr) return fail(QT_ERR_INVALID_ARGUMENT, "%s: NULL pointer", name);
    cudaError_t error = cudaMemcpyAsync(dst, src, bytes, kind, as_stream(stream));
    if (error != cudaSuccess) return fail_cuda(error, name);
    if (wait) {
        error = cudaStreamSynchronize(as_stream(stream));
        if (error != cudaSuccess) return fail_cuda(error, name);
    }
    return QT_OK;
}
}  // namespace

int qt_memcpy_htod(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, stream, true, "qt_memcpy_htod");
}
int qt_memcpy_dtoh(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream, true, "qt_memcpy_dtoh");
}
int qt_memcpy_dtod(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, true, "qt_memcpy_dtod");
}
int qt_memcpy_htod_async(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, stream, false, "qt_memcpy_htod_async");
}
int qt_memcpy_dtoh_async(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream, false, "qt_memcpy_dtoh_async");
}
int qt_memcpy_dtod_async(void* dst, const void* src, size_t bytes, void* stream) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, false, "qt_memcpy_dtod_async");
}

int qt_host_alloc_pinned(void** ptr, size_t bytes) {
    QT_REQUIRE(ptr != nullptr, "qt_host_alloc_pinned: ptr is NULL");
    *ptr = nullptr;
    if (bytes == 0) return QT_OK;
    cudaError_t error = cudaMallocHost(ptr, bytes);
    if (error != cudaSuccess) {
        cudaGetLastError();
        return fail(status_of(error), "cudaMallocHost(%zu bytes): %s (CUDA error %d)", bytes,
                    cudaGetErrorString(error), static_cast<int>(error));
    }
    return QT_OK;
}

int qt_host_free_pinned(void* ptr) {
    if (ptr == nullptr) return QT_OK;
    QT_CUDA_TRY(cudaFreeHost(ptr));
    return QT_OK;
}

int qt_stream_create(void** stream) {
    QT_REQUIRE(stream != nullptr, "qt_stream_create: stream is NULL");
    cudaStream_t s = nullptr;
    QT_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = s;
    return QT_OK;
}

int qt_stream_destroy(void* stream) {
    if (stream == nullptr) return QT_OK;
    QT_CUDA_TRY(cudaStreamDestroy(as_stream(stream)));
    return QT_OK;
}

int qt_stream_synchronize(void* stream) {
    QT_CUDA_TRY(cudaStreamSynchronize(as_stream(stream)));
    return QT_OK;
}

int qt_event_create(void** event) {
    QT_REQUIRE(event != nullptr, "qt_event_create: event is NULL");
    cudaEvent_t e = nullptr;
    QT_CUDA_TRY(cudaEventCreate(&e));
    *event = e;
    return QT_OK;
}

int qt_event_destroy(void* event) {
    if (event == nullptr) return QT_OK;
    QT_CUDA_TRY(cudaEventDestroy(static_cast<cudaEvent_t>(event)));
    return QT_OK;
}

int qt_event_record(void* event, void* stream) {
    QT_REQUIRE(event != nullptr, "qt_event_record: event is NULL");
    QT_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(event), as_stream(stream)));
    return QT_OK;
}

int qt_event_synchronize(void* event) {
    QT_REQUIRE(event != nullptr, "qt_event_synchronize: event is NULL");
    QT_CUDA_TRY(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
    return QT_OK;
}

int qt_event_elapsed_ms(void* start, void* end, float* ms) {
    QT_REQUIRE(start != nullptr && end != nullptr && ms != nullptr, "qt_event_elapsed_ms: NULL argument");
    QT_CUDA_TRY(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
    return QT_OK;
}

int qt_bench_copy(size_t bytes, int iters, float* gbps) {
    QT_REQUIRE(gbps != nullptr && bytes > 0 && iters > 0, "qt_bench_copy: need bytes > 0, iters > 0, gbps");
    *gbps = 0.0f;
    void* src = nullptr;
    void* dst = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    cudaStream_t stream = nullptr;
    int status = QT_OK;
    float ms = 0.0f;
    // One exit path so every resource is released whichever step fails.
    do {
        if ((status = qt_malloc(&src, bytes)) != QT_OK) break;
        if ((status = qt_malloc(&dst, bytes)) != QT_OK) break;
        cudaError_t e;
        if ((e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess) { status = fail_cuda(e, "cudaStreamCreate"); break; }
        if ((e = cudaEventCreate(&start)) != cudaSuccess) { status = fail_cuda(e, "cudaEventCreate"); break; }
        if ((e = cudaEventCreate(&stop)) != cudaSuccess) { status = fail_cuda(e, "cudaEventCreate"); break; }
        // Non-zero bytes: never time copies of untouched memory.
        if ((e = cudaMemsetAsync(src, 0x5a, bytes, stream)) != cudaSuccess) { status = fail_cuda(e, "cudaMemsetAsync"); break; }
        for (int i = 0; i < 3 && e == cudaSuccess; i++) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
        if (e != cudaSuccess) { status = fail_cuda(e, "cudaMemcpyAsync (warm-up)"); break; }
        if ((e = cudaEventRecord(start, stream)) != cudaSuccess) { status = fail_cuda(e, "cudaEventRecord"); break; }
        for (int i = 0; i < iters && e == cudaSuccess; i++) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
        if (e != cudaSuccess) { status = fail_cuda(e, "cudaMemcpyAsync"); break; }
        if ((e = cudaEventRecord(stop, stream)) != cudaSuccess) { status = fail_cuda(e, "cudaEventRecord"); break; }
        if ((e = cudaEventSynchronize(stop)) != cudaSuccess) { status = fail_cuda(e, "cudaEventSynchronize"); break; }
        if ((e = cudaEventElapsedTime(&ms, start, stop)) != cudaSuccess) { status = fail_cuda(e, "cudaEventElapsedTime"); break; }
    } while (false);
    if (status == QT_OK && ms > 0.0f) *gbps = static_cast<float>(2.0 * bytes * iters / (ms * 1e-3) / 1e9);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
    if (src) cudaFree(src);
    if (dst) cudaFree(dst);
    return status;
}

int qt_graph_begin(void* stream) {
    QT_REQUIRE(stream != nullptr,
               "qt_graph_begin: the legacy default stream (NULL) cannot be captured; use one from qt_stream_create");
    QT_CUDA_TRY(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal));
    capturing = true;
    capture_failures = 0;
    return QT_OK;
}

int qt_graph_end(void* stream, void** graph) {
    QT_REQUIRE(stream != nullptr, "qt_graph_end: stream is NULL");
    // The capture ends whatever happened during it, so that the stream is usable again.
    cudaGraph_t captured = nullptr;
    cudaError_t error = cudaStreamEndCapture(as_stream(stream), &captured);
    const int failures = capture_failures;
    capturing = false;
    capture_failures = 0;
    if (graph != nullptr) *graph = nullptr;
    if (error != cudaSuccess) {
        if (captured != nullptr) cudaGraphDestroy(captured);
        cudaGetLastError();  // not sticky: keep it out of the next launch check
        return fail_cuda(error, "qt_graph_end: cudaStreamEndCapture (a call during the capture waited, allocated or "
                                "failed to launch)");
    }
    if (failures > 0) {
        cudaGraphDestroy(captured);
        return fail(capture_first_status, "qt_graph_end: %d call(s) failed during the capture; the first: %s", failures,
                    capture_first_failure);
    }
    if (graph == nullptr) {
        cudaGraphDestroy(captured);
        return fail(QT_ERR_INVALID_ARGUMENT, "qt_graph_end: graph is NULL (the capture was ended and dropped)");
    }
    cudaGraphExec_t exec = nullptr;
    error = cudaGraphInstantiate(&exec, captured, 0);
    cudaGraphDestroy(captured);  // the executable graph keeps what it needs
    if (error != cudaSuccess) {
        cudaGetLastError();
        return fail_cuda(error, "qt_graph_end: cudaGraphInstantiate");
    }
    *graph = exec;
    return QT_OK;
}

int qt_graph_launch(void* graph, void* stream) {
    QT_REQUIRE(graph != nullptr, "qt_graph_launch: graph is NULL");
    QT_CUDA_TRY(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), as_stream(stream)));
    return QT_OK;
}

int qt_graph_destroy(void* graph) {
    if (graph == nullptr) return QT_OK;
    QT_CUDA_TRY(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)));
    return QT_OK;
}

}  // extern "C"
