#!/usr/bin/env bash
# qt_qmatrix kernels (native/src/qgemm.cu) on the GPU host: test_kernels' qmatrix checks (random mixed-width matrices
# with and without perm and zeros; GEMV at 1, 2, 3 and 8 rows into F32, F16 and += F32 y against the double product;
# dequant within fp16 rounding; argument checks), then its qmatrix timings (µs and GB/s of the GEMV's bytes beside the
# device copy bandwidth), again with 4-warp blocks (QTOOL_QMATRIX_WARPS=4) for comparison.
# Uses build/native/libqtool.so and build/native/test_kernels when they were carried along (device tool: carry
# ["build/native/libqtool.so", "build/native/test_kernels"] after ./scripts/build-native.sh), else builds both with
# the host's nvcc and CMake into /tmp/qtool-native. Logs under $OUT: qmatrix.txt, qmatrix-warps4.txt.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=build/native
if [ ! -x $B/test_kernels ] || [ ! -f $B/libqtool.so ]; then
  B=/tmp/qtool-native
  PATH=$PATH:/usr/local/cuda/bin QTOOL_BUILD_DIR=$B QTOOL_JOBS=$(nproc) ./scripts/build-native.sh > "$OUT/qmatrix-build.txt" 2>&1 \
    || { tail -20 "$OUT/qmatrix-build.txt"; exit 1; }
fi
export LD_LIBRARY_PATH=$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$B/test_kernels --seed "${SEED:-7}" --filter qmatrix --bench qmatrix > "$OUT/qmatrix.txt" 2>&1; rc=$?
grep -E "^device|device copy|qmatrix|checks," "$OUT/qmatrix.txt"
QTOOL_QMATRIX_WARPS=4 $B/test_kernels --bench-only --bench qmatrix > "$OUT/qmatrix-warps4.txt" 2>&1
grep "qmatrix gemv" "$OUT/qmatrix-warps4.txt" | sed 's/^ */4 warps: /'
echo "checks-qmatrix: test_kernels exit $rc"
exit $rc
