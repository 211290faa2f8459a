#!/usr/bin/env bash
# GPTQ kernels from packed weights (native/src/qgemm.cu): qt_gptq_gemv and qt_gptq_dequant + cuBLAS against the double
# product of the unpacked weights (every width, act-order or not, group 128 / -1, 4096×4096 and 11008×4096; outputs
# poisoned with NaN first), then GEMV timings as GB/s of packed bytes beside the device copy bandwidth.
# Run on the GPU host from the unpacked .gpu/ folder of ./scripts/gpu-pack.sh && scripts/gpu/pack-data.sh.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu
JAVA=/tmp/qtool-jre/bin/java
[ -x $JAVA ] || bash $G/run.sh --version > /dev/null
$JAVA --enable-native-access=ALL-UNNAMED -cp $G/qtool.jar:$G/checks qtool.backend.CudaBackendCheck 7 | tee $OUT/kcheck.txt | grep -E "^seed|gptq [2348]b|timing gptq gemv|checks,"
