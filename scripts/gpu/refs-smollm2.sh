#!/usr/bin/env bash
# Reference figures on the GPU host for issue 11 item 5 (SmolLM2-135M quantized), in steps that each fit one
# device call; state is kept in /tmp/k between the calls of one warm machine:
#   refs-smollm2.sh gguf PART...   append carried pieces of SmolLM2-135M-Instruct.Q4_1.gguf (split here, as one
#                                  call carries at most 64 MiB), import it to an fp16 HF dir once complete
#   refs-smollm2.sh gptq           qtool GPTQ (3 settings) and IST-DASLab/gptq on the same calibration tokens: ppl ctx 2048
#   refs-smollm2.sh awq            qtool AWQ g128 (its search and AutoAWQ's), GPTQ asym g128 with and without --awq-scale
#   refs-smollm2.sh exl2ref BPW... ExLlamaV2 0.3.2's own convert (one measurement, reused) and its ppl per bpw
#   refs-smollm2.sh exl2 BPW...    qtool's EXL2 convert (the first BPW measures, the others reuse qtool's measurement.json),
#                                  qtool ppl, and ExLlamaV2 0.3.2 loading qtool's output (its own ppl on the same ids)
#   refs-smollm2.sh exl2x BPW...   qtool's EXL2 convert from ExLlamaV2's measurement.json (-m), and its ppl
#   refs-smollm2.sh exl2awq BPW... qtool's EXL2 convert with --awq-scale (the first BPW scales and measures), ppl
#   refs-smollm2.sh exl2rt         ExLlamaV2 converting with qtool's measurement.json (-m) of a small synth model
#   refs-smollm2.sh gptqlayers Q R per-linear relative error of qtool's GPTQ (flags Q) and IST-DASLab/gptq's (flags R)
#   refs-smollm2.sh fixture        golden EXL2 tensors from ExLlamaV2 for a small synth model (→ $OUT)
# Needs .gpu from scripts/gpu-pack.sh + scripts/gpu/pack-data.sh copied to /tmp/k/gpu, and for exl2ref/fixture
# scripts/gpu/exllamav2-setup.sh run once.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K=/tmp/k; D=$K/gpu/data; W=$K/work; mkdir -p $W
Q() { bash $K/gpu/run.sh "$@"; }
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
summary=$OUT/summary-refs.txt
row() { printf '%-58s %s\n' "$1" "$2" | tee -a $summary; }
jget() { python3 -c "import json,sys;d=json.loads(open('$1').read().strip().splitlines()[-1]);print($2)"; }
S=$K/smol
cal=$D/data/calibration-mix.parquet
text_ids() { # wikitext-2 test rows joined with "\n\n", tokenized by qtool (the ids qtool ppl scores)
  [ -f $W/wt2.ids.json ] && return
  python3 -c "import pyarrow.parquet as pq;t=pq.read_table('$D/data/wikitext-2-raw-v1_test.parquet');open('$W/wt2.txt','w').write('\n\n'.join(t.column('text').to_pylist()))"
  Q tokenize -m $S -f $W/wt2.txt --ids > $W/wt2.ids.json 2>/dev/null
}
cal1() { # ExLlamaV2 joins every parquet column: give it the text column alone
  [ -f $W/cal-text.parquet ] || python3 -c "import pyarrow.parquet as pq;pq.write_table(pq.read_table('$cal',columns=['text']),'$W/cal-text.parquet')"
}
case "$1" in
gguf)
  shift; cat "$@" >> $K/smol.gguf
  if [ "$(stat -c %s $K/smol.gguf)" = "${GGUF_BYTES:-0}" ]; then
    Q gguf import -i $K/smol.gguf -o $S --dtype float16 2>&1 | tail -1
    cp $K/smollm2-135m/{tokenizer.json,tokenizer_config.json} $S/
    du -sh $S
  else echo "have $(stat -c %s $K/smol.gguf) of ${GGUF_BYTES:-?} bytes"; fi ;;
gptq)
  # GPTQ_SETTINGS (one per line) picks the settings; QTOOL_EXTRA adds flags to qtool's conversions (e.g. --mse);
  # NO_REF=1 skips IST-DASLab/gptq
  text_ids
  [ -f $W/ppl-fp16.json ] || Q ppl -m $S -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/ppl-fp16.json 2>/dev/null
  row "SmolLM2 fp16 (imported) ppl ctx 2048, qtool" "$(jget $W/ppl-fp16.json "round(d['ppl'],4)")"
  while read -r s; do
    [ -n "$s" ] || continue
    set -- $s; b=$1; shift; tag="$b-bit g128 $*"; n=g$b$(echo "$* ${QTOOL_EXTRA:-}" | tr -d ' -')
    t0=$(date +%s.%N)
    Q convert --format gptq -i $S -o $W/$n -nr -c $cal -r 128 -l 2048 --bits $b --group-size 128 $* ${QTOOL_EXTRA:-} --damp 0.01 --device cuda --json > $W/$n.json 2> $W/$n.err || tail -3 $W/$n.err
    t1=$(date +%s.%N)
    Q ppl -m $W/$n/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/$n.ppl.json 2>/dev/null
    row "qtool GPTQ $tag ${QTOOL_EXTRA:-}" "ppl $(jget $W/$n.ppl.json "round(d['ppl'],4)"), $(du -b $W/$n/out/*.safetensors | awk '{s+=$1} END {printf "%.1f MB", s/1e6}'), $(python3 -c "print(round($t1-$t0,1))") s wall ($(jget $W/$n.json "round(d['seconds_total'],1)") s in-job)"
    [ "${NO_REF:-0}" = 1 ] && continue
    ref=""; for f in $*; do case $f in --asym) ref="$ref --asym";; --act-order) ref="$ref --act-order";; esac; done
    python3 scripts/gpu/gptq_pipeline_reference.py $K/gpu/ist $S $W/$n/calibration.i32 128 2048 $W/wt2.ids.json 2048 --bits $b \
      --group-size 128 $ref --damp 0.01 > $W/$n.ref.json 2> $W/$n.ref.err || tail -3 $W/$n.ref.err
    row "IST-DASLab/gptq $tag (same tokens)" "ppl $(jget $W/$n.ref.json "round(d['ppl'],4)"), $(jget $W/$n.ref.json "round(d['seconds'],1)") s quantization"
  done <<< "${GPTQ_SETTINGS:-4 --act-order --asym
4 --sym
3 --act-order --asym}" ;;
awq)
  # AWQ 4-bit g128 (qtool's search and AutoAWQ's exact one) beside GPTQ 4-bit g128 asym and GPTQ + --awq-scale, same
  # calibration (128 x 2048 tokens of the calibration mix); ppl ctx 2048
  # AWQ_VARIANTS (one per line) picks some of them
  text_ids
  while read -r v; do
    [ -n "$v" ] || continue
    n=a$(echo "$v" | tr -d ' -')
    t0=$(date +%s.%N)
    Q convert --format $v -i $S -o $W/$n -nr -c $cal -r 128 -l 2048 --group-size 128 --device cuda --json > $W/$n.json 2> $W/$n.err || tail -3 $W/$n.err
    t1=$(date +%s.%N)
    Q ppl -m $W/$n/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/$n.ppl.json 2>/dev/null
    row "qtool $v 4-bit g128" "ppl $(jget $W/$n.ppl.json "round(d['ppl'],4)"), cal ppl $(jget $W/$n.json "round(d['calibration_ppl'],3), d.get('calibration_ppl_without_awq_scale')"), $(python3 -c "print(round($t1-$t0,1))") s, stages $(jget $W/$n.json "{k: round(v, 1) for k, v in d['seconds_per_stage'].items()}")"
    if [ -d $W/$n/without-awq/out ]; then
      Q ppl -m $W/$n/without-awq/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/$n.plain.ppl.json 2>/dev/null
      row "  the same without --awq-scale (WORK/without-awq)" "ppl $(jget $W/$n.plain.ppl.json "round(d['ppl'],4)")"
    fi
  done <<< "${AWQ_VARIANTS:-awq
awq --autoawq-exact
gptq --asym
gptq --asym --awq-scale}" ;;
exl2ref)
  shift; source scripts/gpu/exllamav2-setup.sh >/dev/null; text_ids; cal1
  if [ ! -f $W/exl2-measurement.json ]; then
    t0=$(date +%s)
    python3 -m exllamav2.conversion.convert_exl2 -i $S -o $W/exm -nr -om $W/exl2-measurement.json -c $W/cal-text.parquet > $W/exm.log 2>&1 || tail -5 $W/exm.log
    row "ExLlamaV2 measurement pass" "$(( $(date +%s) - t0 )) s"
    cp $W/exl2-measurement.json $OUT/smollm2-exllamav2-measurement.json
  fi
  for b in "$@"; do
    t0=$(date +%s)
    python3 -m exllamav2.conversion.convert_exl2 -i $S -o $W/ex$b -nr -m $W/exl2-measurement.json -b $b -cf $W/ex$b-out -c $W/cal-text.parquet > $W/ex$b.log 2>&1 || tail -5 $W/ex$b.log
    t=$(( $(date +%s) - t0 ))
    python3 scripts/gpu/exl2_ppl.py $W/ex$b-out $W/wt2.ids.json 2048 > $W/ex$b.ppl.json 2> $W/ex$b.ppl.err || tail -3 $W/ex$b.ppl.err
    row "ExLlamaV2 EXL2 $b bpw (its own ppl)" "ppl $(jget $W/ex$b.ppl.json "round(d['ppl'],4)"), $(du -b $W/ex$b-out/*.safetensors | awk '{s+=$1} END {printf "%.1f MB", s/1e6}'), quantization $t s (+ measurement), cal ppl: $(grep -i 'calibration perplexity' $W/ex$b.log | tail -1)"
    cp $W/ex$b.log $OUT/ 2>/dev/null
  done ;;
exl2)
  shift; source scripts/gpu/exllamav2-setup.sh >/dev/null; text_ids
  for b in "$@"; do
    m=""; [ -f $W/q-measurement.json ] && m="-m $W/q-measurement.json"
    t0=$(date +%s.%N)
    [ -f $W/q$b/out/config.json ] || Q convert -i $S -o $W/q$b -nr -c $cal -b $b $m --device cuda --json > $W/q$b.json 2> $W/q$b.err || tail -3 $W/q$b.err
    t1=$(date +%s.%N)
    [ -f $W/q-measurement.json ] || cp $W/q$b/measurement.json $W/q-measurement.json
    cp $W/q$b.json $W/q$b.err $OUT/ 2>/dev/null
    Q ppl -m $W/q$b/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/q$b.ppl.json 2>/dev/null
    python3 scripts/gpu/exl2_ppl.py $W/q$b/out $W/wt2.ids.json 2048 > $W/q$b.eppl.json 2> $W/q$b.eppl.err || tail -3 $W/q$b.eppl.err
    row "qtool EXL2 $b bpw${m:+, reusing the measurement}" "ppl $(jget $W/q$b.ppl.json "round(d['ppl'],4)") (ExLlamaV2 reading it: $(jget $W/q$b.eppl.json "round(d['ppl'],4)")), $(du -b $W/q$b/out/*.safetensors | awk '{s+=$1} END {printf "%.1f MB", s/1e6}'), $(python3 -c "print(round($t1-$t0,1))") s wall, $(jget $W/q$b.json "'bpw %.4f, cal ppl %.4f, stages %s' % (d['bits_per_weight'], d['calibration_ppl'], {k: round(v,1) for k,v in d['seconds_per_stage'].items()})")"
  done ;;
exl2x)
  shift; text_ids
  for b in "$@"; do
    Q convert -i $S -o $W/qx$b -nr -c $cal -b $b -m $K/smollm2-exllamav2-measurement.json --device cuda --json > $W/qx$b.json 2> $W/qx$b.err || tail -3 $W/qx$b.err
    Q ppl -m $W/qx$b/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/qx$b.ppl.json 2>/dev/null
    row "qtool EXL2 $b bpw from ExLlamaV2's measurement (-m)" "ppl $(jget $W/qx$b.ppl.json "round(d['ppl'],4)"), $(jget $W/qx$b.json "'bpw %.4f, cal ppl %.4f, predicted error %.4f, max block %.4f' % (d['bits_per_weight'], d['calibration_ppl'], d['predicted_error'], d['max_block_error'])")"
  done ;;
exl2awq) # exl2awq BPW...: qtool's EXL2 with --awq-scale; the first BPW scales and measures, the others reuse the
  # scaled model (WORK/awq_model, as an input) and its measurement; compare with the plain `exl2` rows
  shift; text_ids; first=""
  for b in "$@"; do
    if [ -z "$first" ]; then
      first=$b; t0=$(date +%s.%N)
      Q convert -i $S -o $W/qa$b -nr -c $cal -b $b --awq-scale --device cuda --json > $W/qa$b.json 2> $W/qa$b.err || tail -3 $W/qa$b.err
      t1=$(date +%s.%N); how="$(python3 -c "print(round($t1-$t0,1))") s wall"
    else
      Q convert -i $W/qa$first/awq_model -o $W/qa$b -nr -c $cal -b $b -m $W/qa$first/measurement.json --device cuda --json > $W/qa$b.json 2> $W/qa$b.err || tail -3 $W/qa$b.err
      how="reusing the scaled model and its measurement"
    fi
    cp $W/qa$b.json $W/qa$b.err $OUT/ 2>/dev/null
    Q ppl -m $W/qa$b/out -d $D/data/wikitext-2-raw-v1_test.parquet --ctx 2048 --json --device cuda > $W/qa$b.ppl.json 2>/dev/null
    row "qtool EXL2 $b bpw --awq-scale" "ppl $(jget $W/qa$b.ppl.json "round(d['ppl'],4)"), $how, $(jget $W/qa$b.json "'bpw %.4f, cal ppl %.4f, stages %s' % (d['bits_per_weight'], d['calibration_ppl'], {k: round(v,1) for k,v in d['seconds_per_stage'].items()})")"
  done ;;
exl2rt)
  source scripts/gpu/exllamav2-setup.sh >/dev/null; cal1
  Q synth --out $W/tiny --hidden 128 --layers 2 --heads 2 --kv-heads 1 --intermediate 320 --vocab 32000 --dtype f16 --tokenizer $D/tokenizers/llama2 --seed 5 > /dev/null 2>&1
  Q convert -i $W/tiny -o $W/tq -nr -om $W/tiny-q-measurement.json -c $cal -r 8 -l 512 -mr 4 -ml 512 --device cuda > /dev/null 2> $W/tq.err || tail -3 $W/tq.err
  python3 -m exllamav2.conversion.convert_exl2 -i $W/tiny -o $W/tex -nr -m $W/tiny-q-measurement.json -b 4.0 -cf $W/tex-out -c $W/cal-text.parquet -r 8 -l 512 > $W/tex.log 2>&1
  row "ExLlamaV2 -m qtool's measurement.json (synth), 4.0 bpw" "exit $?, $(grep -E 'max\(err\)' $W/tex.log | tail -1), $(grep -i 'calibration perplexity' $W/tex.log | tail -1)"
  cp $W/tex.log $OUT/ ;;
gptqlayers) # gptqlayers "QTOOL GPTQ FLAGS" "REFERENCE FLAGS": per-linear ‖WX − QX‖²/‖WX‖², qtool vs IST-DASLab/gptq on SmolLM2
  text_ids
  Q convert --format gptq -i $S -o $W/gl -nr -c $cal -r 128 -l 2048 --group-size 128 $2 --damp 0.01 --device cuda --json > $W/gl.json 2> $W/gl.err || tail -3 $W/gl.err
  python3 scripts/gpu/gptq_pipeline_reference.py $K/gpu/ist $S $W/gl/calibration.i32 128 2048 $W/wt2.ids.json 2048 --group-size 128 $3 \
    --damp 0.01 --windows 4 > $W/glref.json 2> $W/glref.err || tail -3 $W/glref.err
  python3 scripts/gpu/compare_layer_errors.py $W/gl.json $W/glref.json > $OUT/gptq-layers-smollm2.txt; tail -12 $OUT/gptq-layers-smollm2.txt
  cp $W/gl.json $W/glref.json $OUT/ ;;
fixture)
  source scripts/gpu/exllamav2-setup.sh >/dev/null; cal1
  Q synth --out $W/tiny --hidden 128 --layers 2 --heads 2 --kv-heads 1 --intermediate 320 --vocab 32000 --dtype f16 --tokenizer $D/tokenizers/llama2 --seed 5 2>&1 | tail -1
  python3 -m exllamav2.conversion.convert_exl2 -i $W/tiny -o $W/tinyw -nr -b 4.0 -cf $W/tiny-exl2 -c $W/cal-text.parquet -r 8 -l 512 -mr 4 -ml 512 > $W/tiny.log 2>&1 || tail -20 $W/tiny.log
  python3 scripts/gpu/exl2_fixture.py $W/tiny-exl2 $OUT/exl2-fixture.safetensors 2>&1 | tail -3
  cp $W/tinyw/measurement.json $OUT/tiny-exllamav2-measurement.json 2>/dev/null
  cp $W/tiny/model.safetensors $OUT/tiny-model.safetensors; cp $W/tiny/config.json $OUT/tiny-config.json; cp $W/tiny.log $OUT/ ;;
esac
