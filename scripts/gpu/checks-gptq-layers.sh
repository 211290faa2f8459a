#!/usr/bin/env bash
# GPU-host check of issue 4's per-layer criterion (after scripts/gpu-pack.sh and scripts/gpu/pack-data.sh, with
# IST-DASLab/gptq's gptq.py and quant.py in .gpu/ist — a public checkout, never committed): the same synth Llama and the
# same calibration tokens, 4-bit group 128 with act-order, through qtool's pipeline and IST-DASLab/gptq's; per linear the
# relative reconstruction error ||WX - QX||^2 / ||WX||^2 on its calibration inputs must be within 2% of the reference's.
# Prints a table of the largest differences and one PASS/FAIL line. About 1 minute on an H100.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-layers; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
ROWS=${ROWS:-128} LEN=${LEN:-512}

Q synth --out $W/sy --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 \
  --seed 3 2>/dev/null
Q convert --format gptq -i $W/sy -o $W/q -nr -c $D/data/wiki.test.raw -r $ROWS -l $LEN --bits 4 --group-size 128 --act-order --damp 0.01 \
  --device cuda --json > $W/q.json 2> $W/q.err || { tail -3 $W/q.err; echo "FAIL: qtool convert"; exit 1; }
Q tokenize -m $W/sy -f $D/data/wiki.test.raw --ids > $W/ids.json 2>/dev/null
python3 scripts/gpu/gptq_pipeline_reference.py $G/ist $W/sy $W/q/calibration.i32 $ROWS $LEN $W/ids.json 512 --bits 4 --group-size 128 \
  --act-order --damp 0.01 --windows 8 > $W/ref.json 2> $W/ref.err || { tail -5 $W/ref.err; echo "FAIL: reference"; exit 1; }
Q ppl -m $W/q/out -d $D/data/wiki.test.raw --ctx 512 --windows 8 --json --device cuda > $W/ppl.json 2>/dev/null
python3 -c "import json;q=json.loads(open('$W/ppl.json').read().strip().splitlines()[-1]);r=json.loads(open('$W/ref.json').read().strip().splitlines()[-1]);print(f\"ppl ctx 512, 8 windows: qtool checkpoint {q['ppl']:.4f}, reference pipeline {r['ppl']:.4f}\")"
cp $W/q.json $W/ref.json "$OUT"/
python3 scripts/gpu/compare_layer_errors.py $W/q.json $W/ref.json | tee "$OUT"/summary-gptq-layers.txt
