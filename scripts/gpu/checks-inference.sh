#!/usr/bin/env bash
# Quantized inference on the GPU host (issue 6), in steps that each fit one device call of a warm machine (state in
# /tmp/k, the .gpu pack copied to /tmp/k/gpu on first use):
#   checks-inference.sh kernels   test_kernels: qt_qmatrix GEMV/dequant, decode attention, graph replay (+ their timings);
#                                 CudaBackendCheck --quantized (the Java backend's QMATRIX products, decodeAttention, graphs)
#   checks-inference.sh speed     (carry .gpu-bench: benchmarks.jar, ExLlamaV2's wheel) Llama-2-7B-shaped random EXL2 at 4.0 bpw: ExLlamaV2 0.3.2's batch-1 decode speed beside
#                                 `qtool generate` (speed-exllamav2.sh, QuantBench included), then --gpu-mem 2 (offload)
#   checks-inference.sh decode    the same 7B-shaped model through qtool alone (two runs of 256 tokens), and --gpu-mem 2
#   checks-inference.sh smollm2   SmolLM2-135M (refs-smollm2.sh gguf must have imported it): GPTQ 4-bit g128 act-order and
#                                 EXL2 4.0 bpw conversions; for each, ppl ctx 2048 through the quantized kernels and through
#                                 dequantized fp16 copies (--dequantize), generation speed both ways, greedy ids compared
# Run from the checkout with .gpu made by ./scripts/gpu-pack.sh && scripts/gpu/pack-data.sh. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K=/tmp/k; W=$K/work; mkdir -p $W
[ -d .gpu ] && { mkdir -p $K/gpu; cp -r .gpu/. $K/gpu/; }  # a later call of a warm machine may carry no pack
G=$K/gpu; D=$G/data
Q() { bash $G/run.sh "$@"; }
Q --version > /dev/null  # unpacks the runtime, libqtool.so and test_kernels
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
summary=$OUT/summary-inference.txt
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }

case "$1" in
kernels)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  tk() { LD_LIBRARY_PATH=$G $G/test_kernels "$@"; }
  for f in qmatrix decode graph; do
    tk --seed ${SEED:-7} --no-bench --filter $f > $OUT/tk-$f.txt 2>&1; echo "test_kernels --filter $f: exit $?"
    grep -E "FAIL|checks," $OUT/tk-$f.txt | head -20
  done
  for f in qmatrix decode; do tk --bench-only --bench $f > $OUT/tk-bench-$f.txt 2>&1; sed -n '/^Timings/,$p' $OUT/tk-bench-$f.txt | head -40; done
  /tmp/qtool-jre/bin/java --enable-native-access=ALL-UNNAMED -cp $G/qtool.jar:$G/checks qtool.backend.CudaBackendCheck 7 --quantized \
    > $OUT/kcheck.txt 2>&1
  grep -E "FAIL|threw|timing qmatrix|checks," $OUT/kcheck.txt | head -40 ;;
speed)
  cp .gpu-bench/benchmarks.jar $G/ 2>/dev/null  # carried apart: .gpu-bench (benchmarks.jar, ExLlamaV2's wheel)
  export QTOOL_PEERS=$PWD/.gpu-bench
  sed "s#^G=.gpu#G=$G#" scripts/gpu/speed-exllamav2.sh > $K/speed.sh
  bash $K/speed.sh
  M=/tmp/qtool-speed/llama2-7b-exl2-4.0
  prompt="The history of the city begins with a small settlement on the river"
  Q generate -m $M -p "$prompt" -n 64 --greedy --json --ignore-eos --device cuda --gpu-mem 2 > $W/offload.json 2> $W/offload.err \
    || tail -3 $W/offload.err
  row "7B-shaped EXL2 4.0, --gpu-mem 2 (offload)" "$(grep -h 'gpu-mem' $W/offload.err | tail -1); $(grep -h '^prefill' $W/offload.err | tail -1)" ;;
decode)
  M=/tmp/qtool-speed/llama2-7b-exl2-4.0
  [ -f $M/config.json ] || Q synth --out $M --hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000 --format exl2 --bpw 4.0 \
    --tokenizer $D/tokenizers/llama2 2>&1 | tr '\r' '\n' | tail -1
  prompt="The history of the city begins with a small settlement on the river"
  for i in 1 2; do
    Q generate -m $M -p "$prompt" -n 256 --greedy --ignore-eos --json --device cuda > $W/decode$i.json 2> $W/decode$i.err || tail -3 $W/decode$i.err
    row "7B-shaped EXL2 4.0 bpw, batch-1 decode, run $i" "$(grep -h '^prefill' $W/decode$i.err | tail -1)"
  done
  Q generate -m $M -p "$prompt" -n 64 --greedy --ignore-eos --json --device cuda --gpu-mem 2 > $W/offload.json 2> $W/offload.err \
    || tail -3 $W/offload.err
  row "7B-shaped EXL2 4.0, --gpu-mem 2 (offload)" "$(grep -h 'gpu-mem' $W/offload.err | tail -1); $(grep -h '^prefill' $W/offload.err | tail -1)" ;;
smollm2)
  S=$K/smol; cal=$K/cal.parquet
  [ -f $S/config.json ] || { echo "smollm2: import it first (refs-smollm2.sh gguf)"; exit 1; }
  [ -f $cal ] || cp ${CAL:-.gpu-gguf/calibration-mix.parquet} $cal
  [ -d $W/sg4/out ] || Q convert --format gptq -i $S -o $W/sg4 -nr -c $cal -r 128 -l 2048 --bits 4 --group-size 128 --act-order --asym \
    --device cuda > /dev/null 2> $W/sg4.err || tail -3 $W/sg4.err
  [ -f $W/se4/out/config.json ] || Q convert -i $S -o $W/se4 -nr -c $cal -b 4.0 --device cuda > /dev/null 2> $W/se4.err || tail -3 $W/se4.err
  for m in sg4 se4; do
    for mode in kernels dequantize; do
      flag=""; [ $mode = dequantize ] && flag=--dequantize
      Q ppl -m $W/$m/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda $flag > $W/$m.$mode.ppl.json 2> $W/$m.$mode.err \
        || tail -3 $W/$m.$mode.err
      Q generate -m $W/$m/out -p "The capital of France is" -n 128 --greedy --ignore-eos --json --device cuda $flag > $W/$m.$mode.gen.json \
        2> $W/$m.$mode.gen.err || tail -3 $W/$m.$mode.gen.err
      row "SmolLM2 $m through $mode" "ppl $(jget $W/$m.$mode.ppl.json "round(d['ppl'],4)") ($(jget $W/$m.$mode.ppl.json "round(d['tokens_per_second'])") tok/s), decode $(jget $W/$m.$mode.gen.json "round(d['decode_tokens_per_second'],1)") tok/s [$(jget $W/$m.$mode.gen.json "d['mode']")]"
    done
    python3 - $W/$m.kernels.gen.json $W/$m.dequantize.gen.json $W/$m.kernels.ppl.json $W/$m.dequantize.ppl.json <<'PY' | tee -a $summary
import json, sys
k, d = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
pk, pd = (json.loads(open(p).read().strip().splitlines()[-1])["ppl"] for p in sys.argv[3:5])
same = next((i for i, (a, b) in enumerate(zip(k["ids"], d["ids"])) if a != b), len(k["ids"]))
print(f"  ppl kernels/dequantized - 1 = {pk / pd - 1:+.5f}; greedy ids equal for the first {same} of {len(k['ids'])}")
PY
  done ;;
*) echo "usage: checks-inference.sh kernels|speed|decode|smollm2"; exit 2 ;;
esac
