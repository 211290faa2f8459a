#!/usr/bin/env bash
# Decode speed of qtool against ExLlamaV2 0.3.2 on the same Llama-2-7B-shaped EXL2 model, plus the quantized-kernel
# benchmarks. On the GPU host, from the checkout with .gpu/ made by ./scripts/gpu-pack.sh && scripts/gpu/pack-data.sh
# (the Llama-2 tokenizer, ExLlamaV2's wheel, benchmarks.jar):
#   1. ExLlamaV2 installed, patched and JIT-built (scripts/gpu/exllamav2-setup.sh; about 150 s the first time);
#   2. `qtool synth --format exl2 --bpw 4.0`: hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000, random
#      codes (no fp16 model, no calibration), the Llama-2 tokenizer;
#   3. ExLlamaV2's batch-1 decode speed (scripts/gpu/exllamav2_speed.py: its test_inference.py speed test, which the
#      wheel lacks): 128 prompt tokens, then 128 tokens one at a time;
#   4. `qtool generate` on the same directory, 128 greedy tokens (--json when this build has it, else its stderr line);
#   5. `java -jar benchmarks.jar QuantBench` with the pack's runtime (QUANTBENCH_ARGS narrows it, e.g.
#      "-p weights=gptq4,exl2 -p shape=4096x11008"), its tables only.
# About 5–6 minutes in all on an H100. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-speed; M=$W/llama2-7b-exl2-4.0
Q() { bash $G/run.sh "$@"; }
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1

source scripts/gpu/exllamav2-setup.sh

if [ ! -f $M/config.json ]; then
  rm -rf $M; mkdir -p $W
  t0=$(date +%s%N)
  Q synth --out $M --hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000 --format exl2 --bpw 4.0 \
    --tokenizer $D/tokenizers/llama2 2> $OUT/synth.err || { tail -3 $OUT/synth.err; echo "FAIL: synth"; exit 1; }
  echo "synth: $(tail -1 $OUT/synth.err | tr '\r' '\n' | tail -1) ($(( ($(date +%s%N) - t0) / 1000000 )) ms with the JVM)"
fi
du -sh $M | sed 's/^/model size: /'

exl=$(python3 scripts/gpu/exllamav2_speed.py $M 128 128 2> $OUT/exllamav2.err | tail -1)
[ -n "$exl" ] || { tail -5 $OUT/exllamav2.err; echo "FAIL: ExLlamaV2 speed test"; }
echo "exllamav2: $exl"

prompt="The history of the city begins with a small settlement on the river, where traders from the north met farmers from the valley"
Q generate -m $M -p "$prompt" -n 128 --greedy --json --device cuda > $OUT/generate.out 2> $OUT/generate.err
if [ $? = 2 ] && grep -q "json" $OUT/generate.err; then  # a build without --json: its stderr speed line
  Q generate -m $M -p "$prompt" -n 128 --greedy --device cuda > $OUT/generate.out 2> $OUT/generate.err
fi
q=$( (grep -h '^{' $OUT/generate.out; grep -h "decode" $OUT/generate.err) | tail -1)
[ -n "$q" ] || { tail -5 $OUT/generate.err; echo "FAIL: qtool generate"; }
echo "qtool: $q"

# decode tokens/s from a JSON line (the first key with "decode" and "per_s"/"tps"/"per_second") or qtool's stderr line
tps() { python3 -c '
import json, re, sys
s = sys.argv[1]
try:
    d = json.loads(s)
    flat = {}
    def walk(o, k=""):
        if isinstance(o, dict):
            for kk, v in o.items(): walk(v, k + "." + kk)
        elif isinstance(o, (int, float)): flat[k] = o
    walk(d)
    print(next(v for k, v in flat.items() if "decode" in k and re.search("per_s|tps|per_second", k)))
except Exception:
    m = re.search(r"decode \d+ tokens, ([0-9.]+) tokens/s", s)
    print(m.group(1) if m else "?")' "$1"; }
printf "\n%-10s %s\n%-10s %s\n" "decode t/s" "qtool $(tps "$q")" "" "ExLlamaV2 $(tps "$exl")" | tee $OUT/summary-speed.txt

QTOOL_LIB=$(cd $G && pwd)/libqtool.so /tmp/qtool-jre/bin/java -jar $G/benchmarks.jar QuantBench ${QUANTBENCH_ARGS:-} > $OUT/quantbench.txt 2>&1
grep -E "^QuantBench|^  +(batch|[0-9]+ \|)|no GPU|Exception|^QuantBench\.gemv" $OUT/quantbench.txt | tee -a $OUT/summary-speed.txt
