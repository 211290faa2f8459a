#!/usr/bin/env bash
# GPU-host check of mixed-bit GPTQ (convert --format gptq --candidate-bits; after scripts/gpu-pack.sh and
# scripts/gpu/pack-data.sh):
#  1. stories260K, candidates 2 4 8, -b 8.5, 16 x 256 tokens of calibration-mix, converted on the GPU and on the host's
#     CPU: the two plans (each linear's width) and calibration perplexities side by side, and `qtool ppl` of the GPU
#     result on 8 windows of 256 of wikitext-2;
#  2. a Llama-2-7B-shaped synth cut to 4 layers, 128 x 2048 tokens: candidates 2 3 4 at the default target (uniform
#     3-bit's bits per weight) against uniform --bits 3, seconds per stage: what the measurement adds to plain GPTQ.
# About 2 minutes on an H100. PASS when every convert finishes within its budget, the GPU and CPU plans give at least
# 90% of the linears the same width (the GPU measures in fp16, so near-ties may flip) and their calibration
# perplexities are within 2%.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-mixed; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
last() { tail -1 "$1"; }

S=$D/models/stories260K
for dev in cuda cpu; do
  Q convert --format gptq -i $S -o $W/s-$dev -nr -c $D/data/calibration-mix.parquet -r 16 -l 256 --group-size 32 \
    --candidate-bits 2 4 8 -b 8.5 --device $dev --json > $W/s-$dev.json 2> $W/s-$dev.err || { tail -3 $W/s-$dev.err; echo "FAIL: convert on $dev"; exit 1; }
done
Q ppl -m $W/s-cuda/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 256 --windows 8 --device cuda --json > $W/s-ppl.json 2>/dev/null
Q ppl -m $S -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 256 --windows 8 --device cuda --json > $W/s-ppl-fp.json 2>/dev/null

[ -d $W/l7b ] || Q synth --out $W/l7b --hidden 4096 --layers 4 --heads 32 --intermediate 11008 --vocab 32000 --tokenizer $D/tokenizers/llama2 -ss 0 2>/dev/null
C="-c $D/data/wiki.test.raw -r 128 -l 2048 --group-size 128 --device cuda --json"
Q convert --format gptq -i $W/l7b -o $W/u3 -nr $C --bits 3 > $W/u3.json 2> $W/u3.err || { tail -3 $W/u3.err; echo "FAIL: uniform convert"; exit 1; }
Q convert --format gptq -i $W/l7b -o $W/m3 -nr $C --candidate-bits 2 3 4 > $W/m3.json 2> $W/m3.err || { tail -3 $W/m3.err; echo "FAIL: mixed convert"; exit 1; }

python3 - "$W" <<'EOF' | tee "$OUT"/summary-gptq-mixed.txt
import json, sys
w = sys.argv[1]
def load(name):
    return json.loads(open(f"{w}/{name}").read().strip().splitlines()[-1])
g, c = load("s-cuda.json"), load("s-cpu.json")
lg, lc = g["mixed_bits"]["linears"], c["mixed_bits"]["linears"]
same = sum(lg[k] == lc[k] for k in lg) / len(lg)
ppl_rel = abs(g["calibration_ppl"] / c["calibration_ppl"] - 1)
print(f"stories260K 2/4/8 at -b 8.5: GPU {g['bits_per_weight']:.4f} bpw {g['mixed_bits']['linears_per_width']}, calibration ppl {g['calibration_ppl']:.3f}; "
      f"CPU {c['bits_per_weight']:.4f} bpw {c['mixed_bits']['linears_per_width']}, calibration ppl {c['calibration_ppl']:.3f}; same width for {same:.0%} of linears")
print(f"  wikitext-2 ppl (8 x 256): mixed {load('s-ppl.json')['ppl']:.3f}, fp {load('s-ppl-fp.json')['ppl']:.3f}")
u, m = load("u3.json"), load("m3.json")
fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d["seconds_per_stage"].items())
print(f"7B-shaped, 4 layers, 128 x 2048: uniform 3-bit {u['bits_per_weight']:.4f} bpw in {u['seconds_total']:.1f} s ({fmt(u)})")
print(f"  mixed 2/3/4 {m['bits_per_weight']:.4f} bpw {m['mixed_bits']['linears_per_width']} in {m['seconds_total']:.1f} s ({fmt(m)}); "
      f"predicted error {m['mixed_bits']['predicted_error']:.4f}")
ok = (same >= 0.9 and ppl_rel <= 0.02 and g["bits_per_weight"] <= 8.5 + 1e-9 and c["bits_per_weight"] <= 8.5 + 1e-9
      and m["bits_per_weight"] <= u["bits_per_weight"] + 1e-9)
print(("PASS" if ok else "FAIL") + f": plans agree on {same:.0%} of linears (goal >= 90%), calibration ppl GPU vs CPU {ppl_rel:.2%} apart (goal <= 2%), budgets kept")
EOF
