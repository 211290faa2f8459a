#!/usr/bin/env bash
# The variants of qt_qmatrix_gemv (QTOOL_QMATRIX_VARIANT 0..7, native/src/qgemm.cu's header) side by side on the GPU
# host, in well under a minute: test_kernels checks every variant against the double product (rows 1/2/3/8, F32/F16/+=,
# every width, mixes, perm), then times each at batch 1 on 4-bit GPTQ g128 1x4096->11008, 1x11008->4096, 1x4096->4096,
# 1x4096->32000 and a 7B-shaped EXL2 mix (2..8-bit units, 4.125 bits on average) with its perm: one row per variant and
# shape (µs, GB/s, % of the measured copy bandwidth). Needs only .gpu's libqtool.so.xz and test_kernels.xz
# (./scripts/gpu-pack.sh); run from the checkout: bash scripts/gpu/gemv-variants.sh. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=/tmp/gemv-variants; mkdir -p $G
for f in libqtool.so test_kernels; do
  python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" .gpu/$f.xz $G/$f
  chmod +x $G/$f
done
tk() { LD_LIBRARY_PATH=$G $G/test_kernels "$@"; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
tk --seed ${SEED:-7} --no-bench --filter qmatrix > $OUT/gemv-variants-check.txt 2>&1
echo "test_kernels --filter qmatrix (all variants): exit $?"
grep -E "FAIL|checks," $OUT/gemv-variants-check.txt | head -20
# The largest F32 error of each variant over all its checks (limits 1e-3, and 1e-2 for the half2 variants 1, 4, 5, 7).
awk '/^qmatrix .* gemv .* F32/{v="v0"; for(i=1;i<=NF;i++) if($i ~ /^v[1-7]$/) v=$i; e=$(NF-2)+0; if(e>worst[v]) worst[v]=e}
     END{for(v in worst) printf "  worst gemv error %s: %.2e\n", v, worst[v]}' $OUT/gemv-variants-check.txt | sort
tk --bench-only --bench qvariants > $OUT/gemv-variants-bench.txt 2>&1
echo "test_kernels --bench qvariants: exit $?"
grep -E "device copy|qmatrix variant|failed" $OUT/gemv-variants-bench.txt
