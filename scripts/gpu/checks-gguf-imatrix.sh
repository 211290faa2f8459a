#!/usr/bin/env bash
# GPU-host check of `gguf export --imatrix-from-calibration` on CUDA (issue 7: the importance "computed on the GPU"):
#   1. the importance (diag(XᵀX)/n per linear, ROWS x LEN calibration-mix tokens) computed with --device cuda and with
#      --device cpu, both saved with --save-imatrix; the two files must agree up to float rounding (CUDA runs the
#      model in fp16, the CPU in fp32): per entry relative L2 difference < 1e-2, printed with the worst entry;
#   2. Q4_0 exports without importance, with CUDA's and with the CPU's: qtool ppl (--protocol llama.cpp, ctx 512, 10
#      windows of wiki.test.raw, CUDA) must be lower with importance than without. On SmolLM2, expect about 32.9
#      without and 29.8 with (measured on the CPU here; llama-perplexity: 33.01 and 29.93, see the README).
# The model: SmolLM2-135M as `scripts/gpu/refs-smollm2.sh gguf PART...` leaves it imported in /tmp/k/smol (the qtool
# pack in /tmp/k/gpu), else stories260K from .gpu/data (after scripts/gpu-pack.sh and scripts/gpu/pack-data.sh).
# The two imatrix files come back in $OUT: on the machine without a GPU, llama-perplexity then measures what they do,
#   scripts/gguf-agreement.sh --types "q4_0 q4_k_m" --imatrix imatrix-smollm2-135m-cuda.dat   (and without --imatrix).
# About a minute on the H100 for SmolLM2 (ROWS=32, LEN=512; the CPU pass takes most of it). A dry run without a GPU:
#   QTOOL=scripts/qtool DATA=../shared MODEL=../shared/models/stories260K DEVICES=cpu PPL_DEVICE=cpu OUT=/tmp/o bash THIS
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K=/tmp/k; G=.gpu; [ -f $K/gpu/run.sh ] && G=$K/gpu
D=${DATA:-$G/data}; W=/tmp/qtool-gguf-imatrix; rm -rf $W; mkdir -p $W
Q() { ${QTOOL:-bash $G/run.sh} "$@"; }
S=${MODEL:-$K/smol}
[ -f $S/config.json ] || S=$D/models/stories260K
name=$(basename $S); [ $name = smol ] && name=smollm2-135m
R=${ROWS:-32} L=${LEN:-512}; cal=$D/data/calibration-mix.parquet
summary=$OUT/summary-gguf-imatrix.txt; : > $summary
row() { printf '%-62s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }

row "model" "$S"
for dev in ${DEVICES:-cuda cpu}; do
  Q gguf export -i $S -o $W/$dev.gguf -t q4_0 --imatrix-from-calibration $cal -r $R -l $L --device $dev \
    --save-imatrix $OUT/imatrix-$name-$dev.dat > $W/$dev.out 2> $W/$dev.err || tail -3 $W/$dev.err
  row "importance on $dev" "$(grep -o 'importance of .*' $W/$dev.err)"
done
Q gguf export -i $S -o $W/none.gguf -t q4_0 > /dev/null 2>&1

# 1. the two imatrix files (legacy .dat: i32 n; per entry i32 len, name, i32 ncall, i32 nval, floats; a trailer)
devs=(${DEVICES:-cuda cpu})
python3 - $OUT/imatrix-$name-${devs[0]}.dat $OUT/imatrix-$name-${devs[-1]}.dat <<'PY' | tee -a $summary
import math, struct, sys
def read(path):
    b = open(path, 'rb').read(); o = 4; out = {}
    for _ in range(struct.unpack_from('<i', b, 0)[0]):
        n, = struct.unpack_from('<i', b, o); name = b[o + 4:o + 4 + n].decode(); o += 4 + n
        ncall, nval = struct.unpack_from('<ii', b, o); o += 8
        out[name] = [v / max(ncall, 1) for v in struct.unpack_from('<%df' % nval, b, o)]; o += 4 * nval
    return out
try:
    a, c = read(sys.argv[1]), read(sys.argv[2])
except OSError as e:
    print('imatrix cuda vs cpu: FAIL (%s)' % e); sys.exit()
if a.keys() != c.keys():
    print('imatrix cuda vs cpu: FAIL (entries differ: %d vs %d)' % (len(a), len(c))); sys.exit()
worst, wname, maxel = 0.0, '', 0.0
for k in a:
    x, y = a[k], c[k]
    d = math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y)) / max(sum(q * q for q in y), 1e-30))
    if d > worst: worst, wname = d, k
    maxel = max(maxel, max(abs(p - q) / max(abs(q), 1e-12) for p, q in zip(x, y)))
print('%-62s %s' % ('imatrix cuda vs cpu, %d entries (goal: rel. L2 < 1e-2)' % len(a),
      '%s worst rel. L2 %.2e (%s), max elementwise rel. %.2e' % ('PASS' if worst < 1e-2 else 'FAIL', worst, wname, maxel)))
PY

# 2. what the importance buys, under llama-perplexity's protocol (qtool's evaluation on CUDA)
for f in none cuda cpu; do
  Q ppl -m $W/$f.gguf -d $D/data/wiki.test.raw --ctx 512 --windows 10 --protocol llama.cpp --device ${PPL_DEVICE:-cuda} --json > $W/$f.ppl 2>/dev/null
done
p() { jget $W/$1.ppl "round(d['ppl'],4)" 2>/dev/null || echo "-"; }
verdict=$(python3 -c "import sys;n,a,b=map(float,sys.argv[1:]);print('PASS' if a<n and b<n else 'FAIL')" "$(p none)" "$(p cuda)" "$(p cpu)" 2>/dev/null || echo FAIL)
row "Q4_0 ppl (llama.cpp protocol, 10 x 512): none / cuda / cpu" "$verdict $(p none) / $(p cuda) / $(p cpu)"
