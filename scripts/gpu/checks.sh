#!/usr/bin/env bash
# GPU-host checks for the foundation and the runtime, run by the device tool after scripts/gpu-pack.sh and
# scripts/gpu/pack-data.sh:  bash scripts/gpu/checks.sh   (writes its log and a summary table under $OUT).
# Reference figures come from transformers (scripts/gpu/reference.py) on the same GPU.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-checks; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
JAVA=/tmp/qtool-jre/bin/java
summary=$OUT/summary.txt; : > $summary
row() { printf '%-58s %s\n' "$1" "$2" | tee -a $summary; }
py() { PYTHONUNBUFFERED=1 python3 scripts/gpu/reference.py "$@"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
Q --version
Q device --bench --device cuda | tee $W/device.txt
row "device copy bandwidth" "$(grep -o '[0-9.]* GB/s' $W/device.txt | tail -1)"
$JAVA -cp $G/qtool.jar:$G/checks qtool.backend.CudaBackendCheck 7 | tee $W/kcheck.txt | tail -3
row "CudaBackend kernel checks" "$(tail -1 $W/kcheck.txt)"

# stories260K greedy, CUDA fp32 and fp16 paths, against llama2.c's expected text
for p in "" "--fp32"; do
  Q generate -m $D/models/stories260K -p "Once upon a time" -n 196 --greedy --device cuda $p > $W/gen.txt 2> $W/gen.err
  if cmp -s $W/gen.txt $D/models/stories260K-llama2c/expected_greedy_200tok.txt; then r=PASS; else r=FAIL; fi
  row "stories260K greedy 200 tokens, cuda ${p:-fp16}" "$r $(tail -1 $W/gen.err)"
done

# tokenizer ids against the HF tokenizers library over all of wikitext-2 test
python3 scripts/gpu/reference_tokenize.py --shared $D > $W/tok.txt 2>&1; row "tokenizers vs HF tokenizers" "$(grep -c MATCH $W/tok.txt) MATCH, exit $?"
cat $W/tok.txt

# logits and ppl against transformers fp32: stories260K, a synth GQA Llama, a synth Qwen2 with q/k/v bias
Q synth --out $W/gqa --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype f16 --seed 3
Q synth --out $W/qwen --arch qwen2 --hidden 896 --layers 4 --heads 14 --kv-heads 2 --intermediate 2432 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype bf16 --tie --seed 4
for m in $D/models/stories260K $W/gqa $W/qwen; do
  ids=$(python3 -c "import random,json;c=json.load(open('$m/config.json'));r=random.Random(5);print(','.join(str(r.randrange(c['vocab_size'])) for _ in range(96)))")
  Q logits -m $m --ids $ids --out $W/l32.bin --fp32 --device cuda 2>/dev/null
  Q logits -m $m --ids $ids --out $W/l16.bin --device cuda 2>/dev/null
  Q logits -m $m --ids $ids --out $W/lcpu.bin --device cpu 2>/dev/null
  py logits $m $ids $W/l32.bin $W/l16.bin $W/lcpu.bin | tee $W/lg.txt
  n=$(basename $m)
  row "logits $n cuda fp32 (goal < 1e-3)" "$(sed -n 1p $W/lg.txt | grep -o 'error [0-9.e+-]*')"
  row "logits $n cuda fp16 (goal < 1e-2)" "$(sed -n 2p $W/lg.txt | grep -o 'error [0-9.e+-]*')"
  row "logits $n cpu fp32 (goal < 1e-3)" "$(sed -n 3p $W/lg.txt | grep -o 'error [0-9.e+-]*')"
  Q tokenize -m $m -f $D/data/wiki.test.raw --ids > $W/ids.json 2>/dev/null
  for p in "--fp32" ""; do
    Q ppl -m $m -d $D/data/wiki.test.raw --ctx 512 --windows 8 --json --device cuda $p 2>/dev/null > $W/ppl.json
    row "ppl $n ctx 512 x 8 windows, cuda ${p:-fp16}" "$(python3 -c "import json;r=json.load(open('$W/ppl.json'));print(round(r['ppl'],4), round(r['tokens_per_second']),'tok/s')")"
  done
  Q ppl -m $m -d $D/data/wiki.test.raw --ctx 512 --windows 8 --json --device cpu 2>/dev/null > $W/ppl.json
  row "ppl $n ctx 512 x 8 windows, cpu" "$(python3 -c "import json;r=json.load(open('$W/ppl.json'));print(round(r['ppl'],4), round(r['tokens_per_second']),'tok/s')")"
  row "ppl $n ctx 512 x 8 windows, transformers fp32" "$(py ppl $m $W/ids.json 512 8 | python3 -c "import json,sys;print(round(json.loads(sys.stdin.read())['ppl'],4))")"
done
Q ppl -m $D/models/stories260K -d $D/data/wiki.test.raw --ctx 512 --json --device cuda 2>/dev/null > $W/ppl.json
row "ppl stories260K all of wiki.test.raw ctx 512, cuda fp16" "$(python3 -c "import json;r=json.load(open('$W/ppl.json'));print(round(r['ppl'],4), r['windows'],'windows', round(r['seconds'],2),'s')")"

# prefill throughput on a Llama-2-7B-shaped synth model: qtool vs transformers (fp16, sdpa), same weights
t0=$(date +%s); Q synth --out $W/l7b --hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 --dtype f16 -ss 0
row "synth Llama-2-7B shape (13.5 GB)" "$(( $(date +%s) - t0 )) s"
for b in 1 16; do
  Q ppl -m $W/l7b -d $D/data/wiki.test.raw --ctx 2048 --windows $((b * 3)) --batch $b --json --device cuda 2>/dev/null > $W/ppl.json
  row "prefill 7B ${b}x2048 qtool (ppl loop incl. lm_head+CE)" "$(python3 -c "import json;r=json.load(open('$W/ppl.json'));print(round(r['tokens_per_second']),'tok/s')")"
  row "prefill 7B ${b}x2048 transformers fp16 sdpa" "$(py prefill $W/l7b $b 2048 | python3 -c "import json,sys;print(round(json.loads(sys.stdin.read())['tokens_per_second']),'tok/s')")"
done
echo; echo "==== summary"; cat $summary
