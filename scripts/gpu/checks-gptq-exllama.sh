#!/usr/bin/env bash
# GPU-host check of issue 4's format criterion with a real GPTQ loader (after scripts/gpu-pack.sh and
# scripts/gpu/pack-data.sh, which puts ExLlamaV2's wheel from ../shared/peers in .gpu/peers): a synth Llama (hidden 1024,
# GQA) converted by qtool to 4-bit g128 sym GPTQ (v1 zero points, what ExLlamaV2 reads), with and without act-order,
# loaded by ExLlamaV2 0.3.2; its logits on 64 fixed tokens against `qtool logits` on the same directory. ExLlamaV2 is
# installed and patched by scripts/gpu/exllamav2-setup.sh; its extension JIT-compiles once (about 3 minutes), so the whole
# check takes about 4 minutes on an H100. Prints one JSON line per checkpoint and a PASS/FAIL line.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu; D=$G/data; W=/tmp/qtool-exllama; mkdir -p $W
Q() { bash $G/run.sh "$@"; }
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1

source scripts/gpu/exllamav2-setup.sh  # installs and patches the wheel, JIT-builds the extension once

Q synth --out $W/sy --hidden 1024 --layers 4 --heads 16 --kv-heads 4 --intermediate 2816 --vocab 32000 --tokenizer $D/tokenizers/llama2 \
  --seed 3 2>/dev/null
ids=$(python3 -c "import random;r=random.Random(9);print(','.join(str(r.randrange(32000)) for _ in range(64)))")
args=()
for order in act-order no-act-order; do
  flag=$([ $order = act-order ] && echo --act-order)
  Q convert --format gptq -i $W/sy -o $W/$order -nr -c $D/data/wiki.test.raw -r 16 -l 512 --bits 4 --group-size 128 --sym $flag \
    --checkpoint-format gptq --device cuda > /dev/null 2> $W/$order.err || { tail -3 $W/$order.err; echo "FAIL: convert $order"; exit 1; }
  Q logits -m $W/$order/out --ids $ids --out $W/$order.f32 --fp32 --device cuda 2>/dev/null
  args+=($W/$order/out $W/$order.f32)
done
python3 scripts/gpu/gptq_exllama_check.py $ids "${args[@]}" 2> $W/exllama.err | tee "$OUT"/summary-gptq-exllama.txt
[ ${PIPESTATUS[0]} = 0 ] || tail -5 $W/exllama.err
