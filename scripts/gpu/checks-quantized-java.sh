#!/usr/bin/env bash
# Quantized linears (QMatrix: GPTQ and EXL2 in the qt_qmatrix layout) and decoding, through the Java backend:
# qt_qmatrix_gemv (1 row F32, 5 rows F16, 3 rows linearAdd + bias) and qt_qmatrix_dequant + cuBLAS (16 rows) against
# the double product (GPTQ 2/3/4/8-bit, act-order or not, g128 / -1; EXL2 mixed widths; 4096×4096, 11008×4096,
# 4096×11008; outputs poisoned with NaN first); qt_decode_attention step by step against qt_attention over the whole
# sequence, replayed from a CUDA graph with a GEMV beside it; then GEMV timings as GB/s of packed bytes beside the
# device copy bandwidth. Run on the GPU host from the unpacked .gpu/ folder of ./scripts/gpu-pack.sh &&
# scripts/gpu/pack-data.sh.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu
JAVA=/tmp/qtool-jre/bin/java
[ -x $JAVA ] || bash $G/run.sh --version > /dev/null
$JAVA --enable-native-access=ALL-UNNAMED -cp $G/qtool.jar:$G/checks qtool.backend.CudaBackendCheck 7 --quantized \
  | tee $OUT/kcheck.txt | grep -E "^seed|gptq [2348]b|exl2 |decode|graph|threw|timing qmatrix|checks,|FAIL"
