#!/usr/bin/env bash
# GPU-host check of qtool's EXL2 tensors against ExLlamaV2 0.3.2, run after scripts/gpu-pack.sh and
# scripts/gpu/pack-data.sh, with the wheel carried in .gpu/peers/ (cp ../shared/peers/exllamav2/*.whl .gpu/peers/):
#   bash scripts/gpu/checks-exl2.sh
# 1. CudaBackendCheck (includes EXL2 GPU vs CPU).  2. ExLlamaV2's kernels read qtool-packed tensors (JIT build of
# its extension: about 3 minutes the first time on a machine).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; W=/tmp/qtool-exl2; mkdir -p $W
JAVA=/tmp/qtool-jre/bin/java
[ -x $JAVA ] || bash $G/run.sh --version > /dev/null
$JAVA --enable-native-access=ALL-UNNAMED -cp $G/qtool.jar:$G/checks qtool.backend.CudaBackendCheck 7 --no-bench | tee $OUT/kcheck.txt | grep -E "exl2|checks"
$JAVA -cp $G/qtool.jar:$G/checks qtool.format.exl2.Exl2TensorDump $W/dump | tail -1
python3 -m pip install -q --no-index --no-deps --target /tmp/site $G/peers/exllamav2-0.3.2-py3-none-any.whl
mkdir -p /tmp/shim/fastparquet && touch /tmp/shim/fastparquet/__init__.py
export PYTHONPATH=/tmp/site:/tmp/shim TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
python3 scripts/gpu/exl2_tensor_check.py $W/dump --adaptive | tee $OUT/exl2_tensor_check.txt
