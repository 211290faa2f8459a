#!/usr/bin/env bash
# Speed figures on the GPU host after scripts/gpu-pack.sh: prefill of a Llama-2-7B-shaped model (qtool; PyTorch with
# --torch), GPTQ conversion of 7B-shaped layers, plus the quick correctness checks that guard the fast paths.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-speed; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
summary=$OUT/summary-speed.txt; : > $summary
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

Q generate -m $D/models/stories260K -p "Once upon a time" -n 196 --greedy --device cuda > $W/gen.txt 2> $W/gen.err
cmp -s $W/gen.txt $D/models/stories260K-llama2c/expected_greedy_200tok.txt && r=PASS || r=FAIL
row "stories260K greedy 200 tokens, cuda fp16" "$r $(tail -1 $W/gen.err)"
Q synth --out $W/gqa --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 --seed 3 2>/dev/null
ids=$(python3 -c "import random;r=random.Random(5);print(','.join(str(r.randrange(32000)) for _ in range(96)))")
Q logits -m $W/gqa --ids $ids --out $W/l16.bin --device cuda 2>/dev/null
Q logits -m $W/gqa --ids $ids --out $W/l32.bin --device cuda --fp32 2>/dev/null
python3 scripts/gpu/reference.py logits $W/gqa $ids $W/l16.bin $W/l32.bin > $W/lg.txt 2>/dev/null
row "logits synth GQA vs transformers fp32: fp16 path, fp32 path" "$(grep -o 'error [0-9.e+-]*' $W/lg.txt | tr '\n' ' ')"

Q synth --out $W/l7b --hidden 4096 --layers 32 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
for b in 1 16; do
  Q ppl -m $W/l7b -d $D/data/wiki.test.raw --ctx 2048 --windows $((b * 3)) --batch $b --json --device cuda 2>/dev/null > $W/ppl.json
  row "prefill 7B ${b}x2048 qtool (ppl loop incl. lm_head+CE)" "$(jget $W/ppl.json "round(d['tokens_per_second']),'tok/s'")"
  if [ "${1:-}" = "--torch" ]; then
    row "prefill 7B ${b}x2048 transformers fp16 sdpa" "$(python3 scripts/gpu/reference.py prefill $W/l7b $b 2048 2>/dev/null | python3 -c "import json,sys;print(round(json.loads(sys.stdin.read())['tokens_per_second']),'tok/s')")"
  fi
done
Q synth --out $W/l7 --hidden 4096 --layers 4 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $W/gpumem.txt; sleep 0.5; done ) & mon=$!
/usr/bin/time -v bash $G/run.sh convert --format gptq -i $W/l7 -o $W/l7q -nr -c $D/data/wiki.test.raw -r 128 -l 2048 --bits 4 \
  --group-size 128 --act-order --device cuda --json > $W/l7.json 2> $W/l7.err
kill $mon
grep "qtool:" $W/l7.err | head -3
row "7B-shaped, 4 layers, 128x2048, 4-bit g128 act-order: qtool" "$(jget $W/l7.json "round(d['seconds_total'],1), 's', {k: round(v,1) for k,v in d['seconds_per_stage'].items()}")"
row "  peak host RSS (GB), peak GPU memory (GiB)" "$(grep 'Maximum resident' $W/l7.err | awk '{printf "%.2f", $6/1e6}') $(sort -n $W/gpumem.txt | tail -1 | awk '{printf "%.1f", $1/1024}')"
echo; echo "==== summary"; cat $summary
