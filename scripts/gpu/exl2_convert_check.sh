#!/usr/bin/env bash
# GPU-host check of `qtool convert` (EXL2) on SmolLM2-135M, beside ExLlamaV2 0.3.2 (issues 5 and 11). Needs, in .gpu/:
#   - scripts/gpu-pack.sh and scripts/gpu/pack-data.sh done, plus (ignored, never committed) in .gpu/data:
#       models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf  (98 MB: ship it in two runs, `split -b 48M` here and `cat` there),
#       data/calibration-mix.parquet, data/wikitext-2-raw-v1_test.parquet (from ../shared/data);
#   - .gpu/peers/exllamav2-0.3.2-py3-none-any.whl (../shared/peers/exllamav2; installed and patched as its README says).
# Prints a table: for BPW in $BPWS (default "4.0"): qtool convert time and calibration ppl, `qtool ppl` (ctx 2048) of its output,
# ExLlamaV2's ppl of qtool's output (same protocol), and ExLlamaV2's own convert (time, ppl of its output).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-exl2; mkdir -p $W
BPWS=${BPWS:-4.0}
Q() { bash $G/run.sh "$@"; }
summary=$OUT/summary-exl2.txt; : > $summary
row() { printf '%-58s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
CAL=$D/data/calibration-mix.parquet; WIKI=$D/data/wikitext-2-raw-v1_test.parquet

# SmolLM2 as an fp16 HF directory
Q gguf import -i $D/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf -o $W/hf --dtype float16 > /dev/null 2>&1
cp $D/models/smollm2-135m/{tokenizer.json,tokenizer_config.json} $W/hf/ 2>/dev/null
Q ppl -m $W/hf -d $WIKI --ctx 2048 --json --device cuda > $W/ppl-fp16.json 2>/dev/null
row "SmolLM2-135M fp16, qtool ppl ctx 2048" "$(jget $W/ppl-fp16.json "round(d['ppl'],4)")"

# ExLlamaV2 0.3.2 (patched per ../shared/peers/README.md)
python3 -m pip install -q --no-index --no-deps --target /tmp/site $G/peers/exllamav2-0.3.2-py3-none-any.whl
mkdir -p /tmp/shim/fastparquet && touch /tmp/shim/fastparquet/__init__.py
sed -i 's/engine = "fastparquet"/engine = "pyarrow"/' /tmp/site/exllamav2/conversion/tokenize.py
sed -i 's/^\(\s*\)has_lower_right_sdpa = True/\1has_lower_right_sdpa = False/' /tmp/site/exllamav2/attn.py
export PYTHONPATH=/tmp/site:/tmp/shim TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
python3 -c "import exllamav2" > /dev/null 2>&1   # JIT-compiles the extension once (minutes), outside the timings

# GPTQ-protocol perplexity of an EXL2 directory under ExLlamaV2 (windows of 2048, tokens 2..2048 of each scored)
cat > $W/exl2_ppl.py <<'PY'
import sys, json, math, torch, pyarrow.parquet as pq
from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Cache, ExLlamaV2Tokenizer
d, data, ctx = sys.argv[1], sys.argv[2], 2048
cfg = ExLlamaV2Config(d); cfg.max_seq_len = ctx; m = ExLlamaV2(cfg); m.load(); cache = ExLlamaV2Cache(m, max_seq_len = ctx)
tok = ExLlamaV2Tokenizer(cfg)
ids = tok.encode("\n\n".join(pq.read_table(data).column("text").to_pylist()), add_bos = True)[0]
nll, n = 0.0, 0
for w in range(ids.shape[0] // ctx):
    x = ids[w * ctx:(w + 1) * ctx].unsqueeze(0)
    cache.current_seq_len = 0
    logits = m.forward(x, cache).float()[0, :-1]
    nll += torch.nn.functional.cross_entropy(logits, x[0, 1:].cuda(), reduction = "sum").item(); n += ctx - 1
print(json.dumps({"ppl": math.exp(nll / n), "windows": ids.shape[0] // ctx}))
PY

for B in $BPWS; do
  Q convert -i $W/hf -o $W/q$B -nr -c $CAL -b $B --device cuda --json > $W/q$B.json 2> $W/q$B.err; tail -3 $W/q$B.err
  row "qtool convert $B bpw: seconds (stages), achieved bpw" "$(jget $W/q$B.json "round(d['seconds_total'],1), round(d['bits_per_weight'],4), d['seconds_per_stage']")"
  row "qtool $B bpw: calibration perplexity (quant)" "$(jget $W/q$B.json "round(d['calibration_ppl'],4)")"
  Q ppl -m $W/q$B/out -d $WIKI --ctx 2048 --json --device cuda > $W/qp$B.json 2>/dev/null
  row "qtool $B bpw output: qtool ppl ctx 2048" "$(jget $W/qp$B.json "round(d['ppl'],4)")"
  python3 $W/exl2_ppl.py $W/q$B/out $WIKI > $W/qe$B.json 2> $W/qe$B.err || tail -5 $W/qe$B.err
  row "qtool $B bpw output: ExLlamaV2 ppl ctx 2048 (must be within 1%)" "$(jget $W/qe$B.json "round(d['ppl'],4)")"
  # qtool reads ExLlamaV2's measurement and ExLlamaV2 reads qtool's (round trip)
  t0=$(date +%s.%N)
  python3 -m exllamav2.conversion.convert_exl2 -i $W/hf -o $W/e$B -nr -b $B -cf $W/e$B-out -c $CAL > $W/e$B.log 2>&1 || tail -5 $W/e$B.log
  row "ExLlamaV2 convert $B bpw: seconds" "$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")"
  grep "calibration perplexity" $W/e$B.log | tail -1 | sed 's/^/  ExLlamaV2: /' | tee -a $summary
  python3 $W/exl2_ppl.py $W/e$B-out $WIKI > $W/ee$B.json 2>/dev/null
  row "ExLlamaV2 $B bpw output: ExLlamaV2 ppl ctx 2048" "$(jget $W/ee$B.json "round(d['ppl'],4)")"
  Q convert -i $W/hf -o $W/m$B -nr -c $CAL -b $B -m $W/e$B/measurement.json --device cuda --json > $W/m$B.json 2> $W/m$B.err
  row "qtool with ExLlamaV2's measurement (-m): exit, bpw" "$? $(jget $W/m$B.json "round(d['bits_per_weight'],4)" 2>/dev/null)"
  python3 -m exllamav2.conversion.convert_exl2 -i $W/hf -o $W/r$B -nr -b $B -m $W/q$B/measurement.json -cf $W/r$B-out -c $CAL > $W/r$B.log 2>&1
  row "ExLlamaV2 with qtool's measurement (-m): exit" "$?"
done
echo; echo "==== summary"; cat $summary
