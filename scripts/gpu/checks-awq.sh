#!/usr/bin/env bash
# GPU-host checks of `qtool convert --format awq` and `--awq-scale` (after scripts/gpu-pack.sh and scripts/gpu/pack-data.sh):
#   1. a synth model whose shapes the GEMM layout packs (no grouped-query attention, so v_proj→o_proj is scaled too),
#      converted on the GPU, read by scripts/gpu/awq_independent_check.py (AutoAWQ's unpacking in PyTorch) into
#      transformers: its logits against qtool's on the same checkpoint (expect rel_l2_error ~1e-6, argmax 1.0);
#   2. stories260K, 4-bit g32, 32 x 256 tokens of wiki.test.raw: calibration and wiki ppl of AWQ, GPTQ asym, and GPTQ
#      asym with --awq-scale (expect AWQ within a few % of GPTQ; --awq-scale not worse than GPTQ alone);
#   3. Llama-2-7B-shaped layers (hidden 4096, intermediate 11008), 2 layers, 32 x 512 tokens, AWQ 4-bit g128: seconds
#      per stage (the clip search runs on the GPU: qt_awq_clip_search).
# About 3-5 minutes in all.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-awq; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
summary=$OUT/summary-awq.txt; : > $summary
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
CAL="-c $D/data/wiki.test.raw"

# 1. independent reader
Q synth --out $W/sy --hidden 1024 --layers 2 --heads 16 --kv-heads 16 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 --seed 3 2>/dev/null
Q convert --format awq -i $W/sy -o $W/sy-awq -nr $CAL -r 16 -l 512 --w-bit 4 --q-group-size 128 --device cuda --json > $W/sy.json 2> $W/sy.err || tail -3 $W/sy.err
row "synth AWQ g128 convert (cuda): seconds, stages" "$(jget $W/sy.json "round(d['seconds_total'],1), d['seconds_per_stage']")"
ids=$(python3 -c "import random;r=random.Random(9);print(','.join(str(r.randrange(32000)) for _ in range(64)))")
Q logits -m $W/sy-awq/out --ids $ids --out $W/l.bin --fp32 --device cuda 2>/dev/null
row "independent AWQ reader (AutoAWQ unpacking) vs qtool logits" "$(python3 scripts/gpu/awq_independent_check.py $W/sy-awq/out --logits $ids $W/l.bin 2>&1 | tail -1)"

# 2. stories260K: AWQ vs GPTQ vs GPTQ + --awq-scale, same calibration
S=$D/models/stories260K
for v in "awq --q-group-size 32" "gptq --asym --group-size 32" "gptq --asym --group-size 32 --awq-scale"; do
  n=$(echo $v | tr -d ' -')
  Q convert --format $v -i $S -o $W/st-$n -nr $CAL -r 32 -l 256 --device cuda --json > $W/st-$n.json 2> $W/st-$n.err || tail -3 $W/st-$n.err
  Q ppl -m $W/st-$n/out -d $D/data/wiki.test.raw --ctx 256 --windows 32 --json --device cuda > $W/p-$n.json 2>/dev/null
  row "stories260K $v: cal ppl (without scale), wiki ppl" "$(jget $W/st-$n.json "round(d['calibration_ppl'],3), d.get('calibration_ppl_without_awq_scale')") $(jget $W/p-$n.json "round(d['ppl'],3)")"
done
Q ppl -m $S -d $D/data/wiki.test.raw --ctx 256 --windows 32 --json --device cuda > $W/p0.json 2>/dev/null
row "stories260K fp wiki ppl" "$(jget $W/p0.json "round(d['ppl'],3)")"

# 3. speed on 7B-shaped layers
Q synth --out $W/l7 --hidden 4096 --layers 2 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
Q convert --format awq -i $W/l7 -o $W/l7q -nr $CAL -r 32 -l 512 --device cuda --json > $W/l7.json 2> $W/l7.err || tail -3 $W/l7.err
row "7B-shaped, 2 layers, 32x512, AWQ g128: seconds, stages" "$(jget $W/l7.json "round(d['seconds_total'],1), d['seconds_per_stage']")"
echo; echo "==== summary"; cat $summary
