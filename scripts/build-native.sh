#!/usr/bin/env bash
# Builds libqtool.so (and the kernel test) with CMake into build/native/:
#   build/native/libqtool.so     the library Java loads (NativeLibrary looks here, under the current folder)
#   build/native/test_kernels    the standalone kernel test (run it on a machine with a GPU)
# Needs nvcc (on PATH or in /usr/local/cuda/bin) and cmake. Without nvcc it says so and exits 0, so a
# CPU-only checkout still builds the Java side. Environment:
#   QTOOL_CUDA_ARCH   CUDA architectures (CMake syntax), default 90 (Hopper); e.g. "80;90"
#   QTOOL_BUILD_DIR   build folder, default build/native
#   QTOOL_JOBS        parallel compile jobs, default the number of processors
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

nvcc_path="$(command -v nvcc || true)"
if [ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_path=/usr/local/cuda/bin/nvcc; fi
if [ -z "$nvcc_path" ]; then
  echo "build-native: nvcc not found (PATH, /usr/local/cuda/bin); skipping libqtool.so (qtool runs on the CPU backend)"
  exit 0
fi
if ! command -v cmake >/dev/null; then
  echo "build-native: cmake not found; install CMake 3.24 or newer" >&2
  exit 1
fi

build_dir="${QTOOL_BUILD_DIR:-$root/build/native}"
arch="${QTOOL_CUDA_ARCH:-90}"
jobs="${QTOOL_JOBS:-$(nproc 2>/dev/null || echo 4)}"

cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc_path" \
  -DQTOOL_CUDA_ARCH="$arch" >/dev/null
cmake --build "$build_dir" -j "$jobs"
echo "build-native: $build_dir/libqtool.so (CUDA arch $arch)"
