#!/usr/bin/env bash
# GPU-host check of issue 4's memory goal (after scripts/gpu-pack.sh and scripts/gpu/pack-data.sh): the full
# Llama-2-7B-shaped synth (32 layers, hidden 4096, intermediate 11008), 128 x 2048 calibration tokens, 4-bit g128
# act-order, converted with a 2 GiB Java heap (QTOOL_JAVA_OPTS; the heap is what grows with the layer size). Reports the
# time per stage, peak host RSS (/usr/bin/time) and peak GPU memory (nvidia-smi every 0.5 s); PASS when the RSS is
# at most 3 GB. About 3 minutes on an H100 (synth 30 s, convert about 2 minutes).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-memory; mkdir -p $W
HEAP=${HEAP:--Xmx2g} LAYERS=${LAYERS:-32}
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }

[ -d $W/l7b-$LAYERS ] || bash $G/run.sh synth --out $W/l7b-$LAYERS --hidden 4096 --layers $LAYERS --heads 32 --intermediate 11008 --vocab 32000 \
  --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
rm -f $W/gpumem.txt
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $W/gpumem.txt; sleep 0.5; done ) & mon=$!
QTOOL_JAVA_OPTS="$HEAP" /usr/bin/time -v bash $G/run.sh convert --format gptq -i $W/l7b-$LAYERS -o $W/q -nr -c $D/data/wiki.test.raw \
  -r 128 -l 2048 --bits 4 --group-size 128 --act-order --device cuda --json > $W/q.json 2> $W/q.err
rc=$?
kill $mon
[ $rc = 0 ] || { grep -v '^\s' $W/q.err | tail -3; echo "FAIL: convert exited $rc"; exit 1; }
rss=$(grep 'Maximum resident' $W/q.err | awk '{printf "%.2f", $6/1e6}')
gpu=$(sort -n $W/gpumem.txt | tail -1 | awk '{printf "%.1f", $1/1024}')
{
  echo "7B-shaped, $LAYERS layers, 128x2048, 4-bit g128 act-order, $HEAP: $(jget $W/q.json "round(d['seconds_total'],1), 's', {k: round(v,1) for k,v in d['seconds_per_stage'].items()}")"
  echo "  relative error per linear: $(jget $W/q.json "'mean %.4g, max %.4g' % (sum(d['relative_errors'].values())/len(d['relative_errors']), max(d['relative_errors'].values()))")"
  python3 -c "import sys; r=float('$rss'); print(('PASS' if r <= 3.0 else 'FAIL') + f': peak host RSS {r:.2f} GB (goal <= 3 GB), peak GPU memory $gpu GiB')"
} | tee "$OUT"/summary-gptq-memory.txt
