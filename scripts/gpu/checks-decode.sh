#!/usr/bin/env bash
# qt_decode_attention (position on the device) and CUDA graph capture, on the GPU host:
#   test_kernels --filter decode   RoPE + cache store + attention against a double reference and qt_rope + qt_attention,
#                                  at positions 0, 1, 255, 256, 1000, max_seq - 1 and max_seq (out of range: NaN, no writes)
#   test_kernels --filter graph    a one-layer decoding step captured once, replayed at six positions, against direct
#                                  calls; failing calls inside a capture
#   test_kernels --bench decode    µs per call and GB/s of cache at positions 512/2048/4095 on Llama-2-7B shapes, as a
#                                  one-call graph, and beside qt_rope x2 + qt_attention
# Uses build/native/{libqtool.so,test_kernels} when carried (build here with ./scripts/build-native.sh, then carry
# ["build/native/libqtool.so", "build/native/test_kernels"]); otherwise builds with the host's nvcc and cmake.
# Logs under $OUT; exit 1 if a check fails.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
B=build/native
if [ ! -x $B/test_kernels ] || [ ! -f $B/libqtool.so ]; then
  B=/tmp/qtool-decode-build
  QTOOL_BUILD_DIR=$B ./scripts/build-native.sh > "$OUT/build.log" 2>&1 && [ -x $B/test_kernels ] \
    || { echo "checks-decode: no carried build/native and the host build failed:"; tail -20 "$OUT/build.log"; exit 1; }
fi
# cuBLAS: the toolkit's folders (qt_init's defaults), else PyTorch's wheel.
if [ -z "${QTOOL_CUDA_LIB_DIR:-}" ]; then
  lib=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null)
  [ -n "$lib" ] && [ -d "$lib" ] && export QTOOL_CUDA_LIB_DIR=$lib
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
tk() { LD_LIBRARY_PATH=$B $B/test_kernels "$@"; }
rc=0
tk --seed ${SEED:-7} --no-bench --filter decode > "$OUT/decode.txt" 2>&1 || rc=1
grep -E "FAIL|checks," "$OUT/decode.txt"
tk --seed ${SEED:-7} --no-bench --filter graph > "$OUT/graph.txt" 2>&1 || rc=1
grep -E "graph|checks," "$OUT/graph.txt"
tk --bench-only --bench decode > "$OUT/bench-decode.txt" 2>&1 || rc=1
sed -n '/^Timings/,$p' "$OUT/bench-decode.txt"
exit $rc
