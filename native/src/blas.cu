// qt_init: checks that a GPU answers, then loads cuBLAS and cuSOLVER with dlopen and resolves the
// functions blas_dyn.h declares; keeps one cuBLAS and one cuSOLVER handle per device.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "blas_dyn.h"
#include "internal.h"

namespace qt {
namespace blas {

namespace {

constexpr int kMaxDevices = 64;

std::mutex init_mutex;     // serializes qt_init
std::mutex handles_mutex;  // guards the handles below and their use
bool initialized = false;
Api cublas_api;
SolverApi cusolver_api;
bool cusolver_loaded = false;
std::string cusolver_missing;  // why cuSOLVER is not loaded, for the error of qt_cholesky
std::string loaded_paths[3];   // by enum qt_library
Handle handles[kMaxDevices];
SolverHandle solver_handles[kMaxDevices];

// cuBLAS workspaces we own, one per (device, stream). cublasSetStream puts the handle back on cuBLAS's default
// workspace pool, which cuBLAS may allocate from lazily, inside a graph capture too; so every call sets the
// stream's own buffer (32 MiB: NVIDIA's recommendation for Hopper). Per stream, because products queued on two
// streams may run at the same time. A destroyed stream's buffer stays for a later stream at the same address.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
struct Workspace {
    cudaStream_t stream;
    void* buffer;
};
std::vector<Workspace> workspaces[kMaxDevices];

bool stream_is_capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
        cudaGetLastError();
        return false;  // then the allocation below reports what is wrong
    }
    return capture != cudaStreamCaptureStatusNone;
}

// Creating a handle or a workspace allocates, which a graph capture forbids: say so rather than break the capture.
int refuse_setup_in_capture(cudaStream_t stream, const char* caller) {
    if (!stream_is_capturing(stream)) return QT_OK;
    return fail(QT_ERR_INVALID_ARGUMENT,
                "%s: first cuBLAS product on this device or stream is inside a graph capture; call qt_linear_prepare "
                "on the stream before qt_graph_begin", caller);
}

// Default places after the caller's directories; the dynamic loader's own search (bare soname) comes last.
const char* const kDefaultDirs[] = {
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda-13.0/targets/x86_64-linux/lib",
};

std::vector<std::string> search_dirs(const char* cuda_lib_dirs) {
    std::vector<std::string> dirs;
    if (cuda_lib_dirs != nullptr) {
        std::string list(cuda_lib_dirs);
        size_t begin = 0;
        while (begin <= list.size()) {
            size_t end = list.find(':', begin);
            if (end == std::string::npos) end = list.size();
            if (end > begin) dirs.push_back(list.substr(begin, end - begin));
            begin = end + 1;
        }
    }
    for (const char* dir : kDefaultDirs) dirs.push_back(dir);
    return dirs;
}

// dlopen of dir/name, or of the bare name when dir is empty. Appends what happened to `tried`.
void* open_library(const std::string& dir, const char* name, std::string& tried) {
    std::string path = dir.empty() ? std::string(name) : dir + "/" + name;
    if (!dir.empty() && access(path.c_str(), F_OK) != 0) {
        tried += "\n  " + path + ": not found";
        return nullptr;
    }
    // RTLD_GLOBAL: a library loaded later that needs this one (libcublas needs libcublasLt) finds it by soname.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle == nullptr) {
        const char* why = dlerror();
        tried += "\n  " + path + ": " + (why ? why : "dlopen failed");
    }
    return handle;
}

std::string path_of(void* handle, const char* symbol, const char* fallback) {
    void* address = dlsym(handle, symbol);
    Dl_info info;
    if (address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr) return info.dli_fname;
    return fallback;
}

template <typename Fn>
bool resolve(void* library, const char* symbol, Fn* out, std::string& missing) {
    *out = reinterpret_cast<Fn>(dlsym(library, symbol));
    if (*out == nullptr) missing += std::string(missing.empty() ? "" : ", ") + symbol;
    return *out != nullptr;
}

int load_cublas(const std::vector<std::string>& dirs) {
    std::string tried;
    void* lt = nullptr;
    void* blas = nullptr;
    std::vector<std::string> places(dirs);
    places.push_back("");  // the dynamic loader's search path
    for (const std::string& dir : places) {
        lt = open_library(dir, "libcublasLt.so.13", tried);
        if (lt == nullptr) continue;
        blas = open_library(dir, "libcublas.so.13", tried);
        if (blas != nullptr) break;
    }
    if (blas == nullptr) {
        return fail(QT_ERR_LIBRARY_NOT_FOUND,
                    "cuBLAS 13 (libcublasLt.so.13 and libcublas.so.13) not found; set QTOOL_CUDA_LIB_DIR to the "
                    "folder holding them (CUDA 13 toolkit's targets/x86_64-linux/lib, or PyTorch's nvidia/cu13/lib). "
                    "Tried:%s",
                    tried.c_str());
    }
    std::string missing;
    Api a{};
    resolve(blas, "cublasCreate_v2", &a.create, missing);
    resolve(blas, "cublasDestroy_v2", &a.destroy, missing);
    resolve(blas, "cublasSetStream_v2", &a.set_stream, missing);
    resolve(blas, "cublasSetMathMode", &a.set_math_mode, missing);
    resolve(blas, "cublasSetWorkspace_v2", &a.set_workspace, missing);
    resolve(blas, "cublasSgemm_v2", &a.sgemm, missing);
    resolve(blas, "cublasGemmEx", &a.gemm_ex, missing);
    if (!missing.empty())
        return fail(QT_ERR_LIBRARY_NOT_FOUND, "cuBLAS at %s lacks %s",
                    path_of(blas, "cublasCreate_v2", "libcublas.so.13").c_str(), missing.c_str());
    std::string optional;
    resolve(blas, "cublasGetStatusString", &a.get_status_string, optional);  // may be absent
    cublas_api = a;
    loaded_paths[QT_LIB_CUBLASLT] = path_of(lt, "cublasLtCreate", "libcublasLt.so.13");
    loaded_paths[QT_LIB_CUBLAS] = path_of(blas, "cublasCreate_v2", "libcublas.so.13");
    return QT_OK;
}

// cuSOLVER is optional at init: its absence is recorded and reported by the calls that need it.
void load_cusolver(const std::vector<std::string>& dirs) {
    std::string tried;
    void* solver = nullptr;
    std::vector<std::string> places(dirs);
    places.push_back("");
    for (const std::string& dir : places) {
        if (!dir.empty()) {
            // libcusolver needs these; preload them from the same folder, which need not be on the loader's path.
            std::string ignored;
            for (const char* dependency : {"libnvJitLink.so.13", "libcusparse.so.12"}) open_library(dir, dependency, ignored);
        }
        for (const char* name : {"libcusolver.so.12", "libcusolver.so.13"}) {
            solver = open_library(dir, name, tried);
            if (solver != nullptr) break;
        }
        if (solver != nullptr) break;
    }
    if (solver == nullptr) {
        cusolver_missing = "cuSOLVER (libcusolver.so.12 or .13) not found; tried:" + tried;
        return;
    }
    std::string missing;
    SolverApi s{};
    resolve(solver, "cusolverDnCreate", &s.create, missing);
    resolve(solver, "cusolverDnDestroy", &s.destroy, missing);
    resolve(solver, "cusolverDnSetStream", &s.set_stream, missing);
    resolve(solver, "cusolverDnSpotrf_bufferSize", &s.spotrf_buffer_size, missing);
    resolve(solver, "cusolverDnSpotrf", &s.spotrf, missing);
    resolve(solver, "cusolverDnSpotri_bufferSize", &s.spotri_buffer_size, missing);
    resolve(solver, "cusolverDnSpotri", &s.spotri, missing);
    if (!missing.empty()) {
        cusolver_missing = "cuSOLVER at " + path_of(solver, "cusolverDnCreate", "libcusolver") + " lacks " + missing;
        return;
    }
    cusolver_api = s;
    cusolver_loaded = true;
    loaded_paths[QT_LIB_CUSOLVER] = path_of(solver, "cusolverDnCreate", "libcusolver");
}

}  // namespace

const Api* api() { return initialized ? &cublas_api : nullptr; }
const SolverApi* solver_api() { return initialized && cusolver_loaded ? &cusolver_api : nullptr; }
std::mutex& handle_mutex() { return handles_mutex; }

int fail_blas(Status status, const char* what) {
    const char* text = cublas_api.get_status_string ? cublas_api.get_status_string(status) : "cuBLAS error";
    return fail(QT_ERR_CUBLAS, "%s: %s (cuBLAS status %d)", what, text ? text : "cuBLAS error", status);
}

int fail_solver(Status status, const char* what) {
    // cusolverStatus_t values, from cusolver_common.h, for a readable message.
    const char* text;
    switch (status) {
        case 1: text = "CUSOLVER_STATUS_NOT_INITIALIZED"; break;
        case 2: text = "CUSOLVER_STATUS_ALLOC_FAILED"; break;
        case 3: text = "CUSOLVER_STATUS_INVALID_VALUE"; break;
        case 4: text = "CUSOLVER_STATUS_ARCH_MISMATCH"; break;
        case 6: text = "CUSOLVER_STATUS_EXECUTION_FAILED"; break;
        case 7: text = "CUSOLVER_STATUS_INTERNAL_ERROR"; break;
        default: text = "cuSOLVER error"; break;
    }
    return fail(QT_ERR_CUSOLVER, "%s: %s (cuSOLVER status %d)", what, text, status);
}

int handle_for(cudaStream_t stream, Handle* handle, const char* caller) {
    if (!initialized) return fail(QT_ERR_NOT_INITIALIZED, "%s needs cuBLAS: call qt_init first", caller);
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= kMaxDevices) return fail(QT_ERR_UNSUPPORTED, "%s: device %d", caller, device);
    if (handles[device] == nullptr) {
        QT_TRY(refuse_setup_in_capture(stream, caller));
        Handle h = nullptr;
        Status s = cublas_api.create(&h);
        if (s != kStatusSuccess) return fail_blas(s, "cublasCreate_v2");
        // Default math: FP32 products in FP32 (no TF32); 16-bit inputs use tensor cores, accumulating in FP32.
        s = cublas_api.set_math_mode(h, kDefaultMath);
        if (s != kStatusSuccess) {
            cublas_api.destroy(h);
            return fail_blas(s, "cublasSetMathMode");
        }
        handles[device] = h;
    }
    void* workspace = nullptr;
    for (const Workspace& w : workspaces[device])
        if (w.stream == stream) workspace = w.buffer;
    if (workspace == nullptr) {
        QT_TRY(refuse_setup_in_capture(stream, caller));
        cudaError_t error = cudaMalloc(&workspace, kWorkspaceBytes);
        if (error != cudaSuccess) {
            cudaGetLastError();
            return fail_cuda(error, "cudaMalloc of the cuBLAS workspace (32 MiB per stream)");
        }
        workspaces[device].push_back({stream, workspace});
    }
    Status s = cublas_api.set_stream(handles[device], stream);
    if (s != kStatusSuccess) return fail_blas(s, "cublasSetStream_v2");
    s = cublas_api.set_workspace(handles[device], workspace, kWorkspaceBytes);  // after set_stream, which resets it
    if (s != kStatusSuccess) return fail_blas(s, "cublasSetWorkspace_v2");
    *handle = handles[device];
    return QT_OK;
}

int solver_handle_for(cudaStream_t stream, SolverHandle* handle, const char* caller) {
    if (!initialized) return fail(QT_ERR_NOT_INITIALIZED, "%s needs cuSOLVER: call qt_init first", caller);
    if (!cusolver_loaded) return fail(QT_ERR_LIBRARY_NOT_FOUND, "%s: %s", caller, cusolver_missing.c_str());
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= kMaxDevices) return fail(QT_ERR_UNSUPPORTED, "%s: device %d", caller, device);
    if (solver_handles[device] == nullptr) {
        SolverHandle h = nullptr;
        Status s = cusolver_api.create(&h);
        if (s != kStatusSuccess) return fail_solver(s, "cusolverDnCreate");
        solver_handles[device] = h;
    }
    Status s = cusolver_api.set_stream(solver_handles[device], stream);
    if (s != kStatusSuccess) return fail_solver(s, "cusolverDnSetStream");
    *handle = solver_handles[device];
    return QT_OK;
}

}  // namespace blas
}  // namespace qt

using namespace qt;

extern "C" {

int qt_init(const char* cuda_lib_dirs) {
    std::lock_guard<std::mutex> lock(blas::init_mutex);
    if (blas::initialized) return QT_OK;
    int count = 0;
    cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess) {
        cudaGetLastError();
        return fail(QT_ERR_NO_DEVICE, "no usable GPU: cudaGetDeviceCount: %s (%s, CUDA error %d)",
                    cudaGetErrorString(error), cudaGetErrorName(error), static_cast<int>(error));
    }
    if (count == 0) return fail(QT_ERR_NO_DEVICE, "no usable GPU: cudaGetDeviceCount found no CUDA device");
    std::vector<std::string> dirs = blas::search_dirs(cuda_lib_dirs);
    QT_TRY(blas::load_cublas(dirs));
    blas::load_cusolver(dirs);
    blas::initialized = true;
    return QT_OK;
}

const char* qt_loaded_library(int library) {
    if (!blas::initialized || library < 0 || library > 2 || blas::loaded_paths[library].empty()) return nullptr;
    return blas::loaded_paths[library].c_str();
}

}  // extern "C"
