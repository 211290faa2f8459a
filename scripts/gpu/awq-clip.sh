#!/usr/bin/env bash
# qt_awq_clip_search (native/src/awq.cu) on the GPU host, in about a minute: test_kernels checks the kernel's choice of
# clip range for every row and group against a double-precision host search (in 96/g32, in 200/g64 with a ragged last
# group, in 576/g128; zero point on/off, two-sided on/off; each range must be a candidate within 1e-4 of the best
# objective), then times it on Llama-2-7B's 4096->11008 and 11008->4096 linears at g128 (expect tens of ms each;
# the host search took minutes). Needs only .gpu's libqtool.so.xz and test_kernels.xz (./scripts/gpu-pack.sh); where
# .gpu/checks holds the test classes (scripts/gpu/prefill-pack.sh), also CudaBackendCheck's awqClip rows (the Java
# side). Run from the checkout: bash scripts/gpu/awq-clip.sh. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=/tmp/awq-clip; mkdir -p $G
for f in libqtool.so test_kernels; do
  python3 -c "import lzma,shutil,sys;shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],'wb'))" .gpu/$f.xz $G/$f
  chmod +x $G/$f
done
tk() { LD_LIBRARY_PATH=$G $G/test_kernels "$@"; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
tk --seed ${SEED:-7} --no-bench --filter awqclip > $OUT/awq-clip-check.txt 2>&1
echo "test_kernels --filter awqclip: exit $?"
grep -E "^awqclip|checks," $OUT/awq-clip-check.txt
tk --bench-only --bench awqclip > $OUT/awq-clip-bench.txt 2>&1
echo "test_kernels --bench awqclip: exit $?"
grep -E "awqclip|failed" $OUT/awq-clip-bench.txt
if [ -d .gpu/checks ]; then
  bash .gpu/run.sh --version >/dev/null 2>&1  # unpacks the runtime
  QTOOL_LIB=$G/libqtool.so /tmp/qtool-jre/bin/java -cp .gpu/qtool.jar:.gpu/checks qtool.backend.CudaBackendCheck 7 --no-bench \
    > $OUT/awq-clip-java.txt 2>&1
  grep -E "awqClip|java CudaBackend" $OUT/awq-clip-java.txt
fi
