#!/usr/bin/env bash
# Prefill speed and accuracy on the GPU host, from what scripts/gpu/prefill-pack.sh put in .gpu/prefill:
#   bash .gpu/prefill/prefill-bench.sh [SECTION...]     sections: kernels java small 7b torch (default: all)
#   kernels  test_kernels: every kernel check, then attention and 7B-layer timings (BENCH_LINEAR=1: GEMM shapes too)
#   java     CudaBackendCheck (the Java side of the CUDA backend)
#   small    stories260K greedy (fp16, fp32) against llama2.c; logits of stories260K, a synth GQA Llama (f16) and a
#            synth Qwen2 (bf16) against transformers fp32 (cuda fp32, cuda fp16, cpu)
#   7b       synth Llama-2-7B shape; qtool ppl --ctx 2048 at batch 1 and 16 (the checks.sh window counts, and more)
#   torch    transformers fp16 sdpa prefill at 1x2048 and 16x2048 (PROFILE=1: a profiler breakdown of 1x2048 too)
# Log and summary under $OUT. Needs .gpu/runtime.tgz and .gpu/data (scripts/gpu-pack.sh, scripts/gpu/pack-data.sh).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
P=.gpu/prefill; D=.gpu/data; W=/tmp/qtool-prefill; mkdir -p $W
sections="${*:-kernels java small 7b torch}"
has() { [[ " $sections " == *" $1 "* ]]; }
[ -x /tmp/qtool-jre/bin/java ] || tar -C /tmp -xzf .gpu/runtime.tgz
JAVA="/tmp/qtool-jre/bin/java --enable-native-access=ALL-UNNAMED"
export QTOOL_LIB=$PWD/$P/libqtool.so PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
Q() { $JAVA -Xmx32g -jar $P/qtool.jar "$@"; }
py() { python3 $P/reference.py "$@"; }
summary=$OUT/summary.txt; touch $summary
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
tps() { python3 -c "import json;r=json.load(open('$1'));print(round(r['tokens_per_second']),'tok/s', round(r['seconds'],2),'s', 'ppl',round(r['ppl'],3))"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader

if has kernels; then
  LD_LIBRARY_PATH=$P $P/test_kernels --seed ${SEED:-12} --bench attention > $OUT/kernels.txt 2>&1; rc=$?
  grep -E "FAIL|checks," $OUT/kernels.txt
  sed -n '/^Timings/,$p' $OUT/kernels.txt
  row "test_kernels (exit $rc)" "$(grep 'checks,' $OUT/kernels.txt)"
  # The other prefill attention shape (two 16-row m-tiles per warp, 32-key tiles): its checks and timings.
  QTOOL_ATTN_MTILES=2 LD_LIBRARY_PATH=$P $P/test_kernels --seed $(( ${SEED:-12} + 1 )) --filter attention --bench attention > $OUT/kernels-mt2.txt 2>&1; rc=$?
  grep -E "FAIL" $OUT/kernels-mt2.txt; grep "F16 prefill" $OUT/kernels-mt2.txt | sed 's/^/two m-tiles: /'
  row "test_kernels attention, QTOOL_ATTN_MTILES=2 (exit $rc)" "$(grep 'checks,' $OUT/kernels-mt2.txt)"
  LD_LIBRARY_PATH=$P $P/test_kernels --bench-only --bench layer 2>&1 | tee -a $OUT/kernels.txt | grep -v "^device\|^cuBLAS\|^cuSOLVER\|^seed"
  [ -n "${BENCH_LINEAR:-}" ] && LD_LIBRARY_PATH=$P $P/test_kernels --bench-only --bench linear 2>&1 | tee -a $OUT/kernels.txt | grep linear
fi

if has java; then
  $JAVA -cp $P/qtool.jar:$P/checks qtool.backend.CudaBackendCheck 7 > $W/kcheck.txt 2>&1
  grep FAIL $W/kcheck.txt; cp $W/kcheck.txt $OUT/
  row "CudaBackendCheck" "$(tail -1 $W/kcheck.txt)"
fi

if has small; then
  for p in "" "--fp32"; do
    Q generate -m $D/models/stories260K -p "Once upon a time" -n 196 --greedy --device cuda $p > $W/gen.txt 2> $W/gen.err
    if cmp -s $W/gen.txt $D/models/stories260K-llama2c/expected_greedy_200tok.txt; then r=PASS; else r=FAIL; fi
    row "stories260K greedy 200 tokens, cuda ${p:-fp16}" "$r $(tail -1 $W/gen.err)"
  done
  Q synth --out $W/gqa --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype f16 --seed 3 >/dev/null 2>&1
  Q synth --out $W/qwen --arch qwen2 --hidden 896 --layers 4 --heads 14 --kv-heads 2 --intermediate 2432 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype bf16 --tie --seed 4 >/dev/null 2>&1
  for m in $D/models/stories260K $W/gqa $W/qwen; do
    ids=$(python3 -c "import random,json;c=json.load(open('$m/config.json'));r=random.Random(5);print(','.join(str(r.randrange(c['vocab_size'])) for _ in range(96)))")
    Q logits -m $m --ids $ids --out $W/l32.bin --fp32 --device cuda 2>/dev/null
    Q logits -m $m --ids $ids --out $W/l16.bin --device cuda 2>/dev/null
    Q logits -m $m --ids $ids --out $W/lcpu.bin --device cpu 2>/dev/null
    py logits $m $ids $W/l32.bin $W/l16.bin $W/lcpu.bin > $W/lg.txt 2>&1
    n=$(basename $m)
    for d in "l32 cuda fp32 (goal < 1e-3)" "l16 cuda fp16 (goal < 1e-2)" "lcpu cpu fp32 (goal < 1e-3)"; do
      set -- $d
      row "logits $n ${d#* }" "$(grep "$1.bin" $W/lg.txt | grep -o 'error [0-9.e+-]*, argmax agreement [0-9.]*')"
    done
    python3 - $W/l16.bin $W/lcpu.bin <<'PY' | tee -a $summary
import sys, numpy as np
a, b = (np.fromfile(f, dtype="<f4").astype(np.float64) for f in sys.argv[1:3])
print(f"{'  cuda fp16 vs cpu fp32':62s} rel L2 {np.linalg.norm(a - b) / np.linalg.norm(b):.3e}")
PY
  done
  Q ppl -m $D/models/stories260K -d $D/data/wiki.test.raw --ctx 512 --windows 8 --json --device cuda 2>/dev/null > $W/ppl.json
  row "ppl stories260K ctx 512 x 8, cuda fp16" "$(tps $W/ppl.json)"
  Q ppl -m $D/models/stories260K -d $D/data/wiki.test.raw --ctx 512 --windows 8 --json --device cuda --fp32 2>/dev/null > $W/ppl.json
  row "ppl stories260K ctx 512 x 8, cuda fp32" "$(tps $W/ppl.json)"
fi

if has 7b; then
  if [ ! -f $W/l7b/config.json ]; then
    t0=$(date +%s); Q synth --out $W/l7b --hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype f16 -ss 0 >/dev/null 2>&1
    row "synth Llama-2-7B shape" "$(( $(date +%s) - t0 )) s"
  fi
  for spec in ${PPL_SPECS:-1x3 1x12 16x48 16x96}; do
    set -- ${spec/x/ }
    Q ppl -m $W/l7b -d $D/data/wiki.test.raw --ctx 2048 --windows $2 --batch $1 --json --device cuda 2>$W/ppl.err > $W/ppl.json
    row "prefill 7B ${1}x2048 qtool ppl, $2 windows (incl. warm-up)" "$(tps $W/ppl.json || tail -3 $W/ppl.err)"
  done
  for spec in "1 8 1" "16 4 1" "1 8 2" "16 4 2"; do
    set -- $spec
    QTOOL_ATTN_MTILES=$3 $JAVA -Xmx32g -cp $P/qtool.jar:$P/checks qtool.model.PrefillTiming $W/l7b $1 2048 $2 > $W/timing.txt 2>&1
    echo "QTOOL_ATTN_MTILES=$3" >> $OUT/timing.txt; cat $W/timing.txt >> $OUT/timing.txt
    row "PrefillTiming ${1}x2048, $2 passes, m-tiles $3" "$(tail -1 $W/timing.txt)"
  done
fi

if has torch; then
  for b in 1 16; do
    row "prefill 7B ${b}x2048 transformers fp16 sdpa" "$(py prefill $W/l7b $b 2048 | python3 -c "import json,sys;r=json.loads(sys.stdin.read());print(round(r['tokens_per_second']),'tok/s', round(r['seconds']*1000,1),'ms')")"
  done
  if [ -n "${PROFILE:-}" ]; then
    python3 $P/prefill_profile.py $W/l7b 1 2048 > $OUT/torch-profile.txt 2>&1
    cat $OUT/torch-profile.txt | tail -14
    row "transformers 1x2048 profile" "$(tail -1 $OUT/torch-profile.txt)"
  fi
fi
echo; echo "==== summary"; cat $summary
