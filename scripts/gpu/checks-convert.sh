#!/usr/bin/env bash
# GPU-host checks of `qtool convert --format gptq` (after scripts/gpu-pack.sh and scripts/gpu/pack-data.sh; IST-DASLab/gptq's
# gptq.py and quant.py in .gpu/ist — a public checkout, never committed):
#   1. stories260K, 4-bit g32 act-order asym, damp 0.01, 128 x 512 calibration-mix tokens: ppl (ctx 512) of qtool's
#      checkpoint vs IST-DASLab/gptq's pipeline on the same tokens;
#   2. the checkpoint read by an independent unpacker (scripts/gpu/gptq_load_check.py) into transformers: logits agree;
#   3. Llama-2-7B-shaped layers (hidden 4096, intermediate 11008), 128 x 2048 tokens, 4-bit g128: time per layer,
#      qtool vs IST-DASLab/gptq, peak host RSS and GPU memory.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-convert; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
summary=$OUT/summary-convert.txt; : > $summary
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

# 1. stories260K against the reference
S=$D/models/stories260K
Q convert --format gptq -i $S -o $W/st -nr -c $D/data/calibration-mix.parquet -r 128 -l 512 --bits 4 --group-size 32 --act-order --asym \
  --damp 0.01 --checkpoint-format gptq_v2 --device cuda --json > $W/st.json 2> $W/st.err; tail -2 $W/st.err
row "stories260K convert (cuda), seconds" "$(jget $W/st.json "round(d['seconds_total'],1), d['seconds_per_stage']")"
Q tokenize -m $S -f $D/data/wiki.test.raw --ids > $W/ids.json 2>/dev/null
Q ppl -m $W/st/out -d $D/data/wiki.test.raw --ctx 512 --json --device cuda --fp32 > $W/ppl.json 2>/dev/null
row "stories260K GPTQ ppl ctx 512, qtool checkpoint" "$(jget $W/ppl.json "round(d['ppl'],4), d['windows']")"
Q ppl -m $S -d $D/data/wiki.test.raw --ctx 512 --json --device cuda --fp32 > $W/ppl0.json 2>/dev/null
row "stories260K fp32 ppl ctx 512" "$(jget $W/ppl0.json "round(d['ppl'],4)")"
python3 scripts/gpu/gptq_pipeline_reference.py $G/ist $S $W/st/calibration.i32 128 512 $W/ids.json 512 --bits 4 --group-size 32 \
  --asym --act-order --damp 0.01 --dtype float32 > $W/ref.json 2> $W/ref.err || tail -5 $W/ref.err
row "stories260K GPTQ ppl ctx 512, IST-DASLab/gptq (same tokens)" "$(jget $W/ref.json "round(d['ppl'],4), round(d['seconds'],1), 's'")"

# 2. independent reader: a packable synth model converted, then read by gptq_load_check.py
Q synth --out $W/sy --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 --seed 3 2>/dev/null
for fmt in gptq gptq_v2; do for b in 3 4 8; do
  Q convert --format gptq -i $W/sy -o $W/sy-$fmt-$b -nr -c $D/data/wiki.test.raw -r 16 -l 512 --bits $b --group-size 128 --act-order \
    --asym --checkpoint-format $fmt --device cuda > /dev/null 2>&1
  ids=$(python3 -c "import random;r=random.Random(9);print(','.join(str(r.randrange(32000)) for _ in range(64)))")
  Q logits -m $W/sy-$fmt-$b/out --ids $ids --out $W/l.bin --fp32 --device cuda 2>/dev/null
  row "independent GPTQ reader vs qtool logits, $fmt $b-bit" "$(python3 scripts/gpu/gptq_load_check.py $W/sy-$fmt-$b/out $ids $W/l.bin 2>&1 | tail -1)"
done; done

# 3. Llama-2-7B-shaped layers: qtool vs the reference, per layer
Q synth --out $W/l7 --hidden 4096 --layers 4 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $W/gpumem.txt; sleep 0.5; done ) & mon=$!
/usr/bin/time -v bash $G/run.sh convert --format gptq -i $W/l7 -o $W/l7q -nr -c $D/data/wiki.test.raw -r 128 -l 2048 --bits 4 \
  --group-size 128 --act-order --device cuda --json > $W/l7.json 2> $W/l7.err
kill $mon
row "7B-shaped, 4 layers, 128x2048, 4-bit g128 act-order: qtool" "$(jget $W/l7.json "round(d['seconds_total'],1), 's', d['seconds_per_stage']")"
row "  peak host RSS (GB), peak GPU memory (GiB)" "$(grep 'Maximum resident' $W/l7.err | awk '{printf "%.2f", $6/1e6}') $(sort -n $W/gpumem.txt | tail -1 | awk '{printf "%.1f", $1/1024}')"
Q tokenize -m $W/l7 -f $D/data/wiki.test.raw --ids > $W/ids7.json 2>/dev/null
python3 scripts/gpu/gptq_pipeline_reference.py $G/ist $W/l7 $W/l7q/calibration.i32 128 2048 $W/ids7.json 2048 --bits 4 --group-size 128 \
  --act-order --windows 1 > $W/ref7.json 2> $W/ref7.err || tail -5 $W/ref7.err
row "7B-shaped, 4 layers, 128x2048, 4-bit g128 act-order: IST gptq" "$(jget $W/ref7.json "round(d['seconds'],1), 's (quantization only)'")"
echo; echo "==== summary"; cat $summary
