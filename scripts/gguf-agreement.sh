#!/usr/bin/env bash
# How qtool's GGUF exports fare in llama.cpp, type by type (issue 7's "llama.cpp loads every exported type and its
# perplexity agrees with qtool ppl on the imported directory within 1%", issue 11 item 6's "within 1% of
# llama-quantize's file of the same type"). For each TYPE, from one source GGUF (default SmolLM2-135M Q4_1):
#   qtool  : gguf import SRC --dtype float32 → gguf export --type TYPE → qtool-TYPE.gguf
#   llama  : llama-quantize --allow-requantize SRC llama-TYPE.gguf TYPE
#   columns: whether the two files hold the same tensors (types, shapes and data bytes; metadata such as general.name
#            differs, since qtool writes what convert_hf_to_gguf.py would from the imported directory); llama-perplexity
#            on each (-c CTX --chunks N -t THREADS; once when the tensors are the same); `qtool ppl --protocol
#            llama.cpp` (same windows, CPU) on qtool's file imported back (float32), and its gap to llama-perplexity.
# Prints a markdown table on stdout (progress on stderr). Run it niced on a shared machine:
#   nice -n 15 scripts/gguf-agreement.sh [--types "q8_0 q4_0"] [--chunks 10] [--ctx 512] [--threads 2]
#                                        [--src FILE.gguf] [--text FILE] [--work DIR] [--keep] [--imatrix FILE]
#                                        [--dequantized]
# --imatrix FILE: both quantizers weight their errors with that llama.cpp importance matrix (e.g. one that
# `qtool gguf export --imatrix-from-calibration ... --save-imatrix FILE` wrote).
# --dequantized: one more column, llama-perplexity on an F16 file of the weights qtool imported (llama.cpp's float
# arithmetic on the same weights; its CPU dot products on quantized blocks quantize the activations to 8 bits).
# Tools: llama.cpp's CPU builds from ../shared/peers/llama.cpp (unpacked into WORK/bin), or LLAMA_CPP_BIN=DIR.
# The qtool jar is copied into WORK first, so a rebuild during the (long) run cannot break it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${QTOOL_SHARED:-$root/../shared}"
types="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k"
chunks=10 ctx=512 threads=2 keep=0 imatrix=() dequantized=0
src="$shared/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
text="$shared/data/wiki.test.raw"
work="${TMPDIR:-/tmp}/qtool-gguf-agreement"
while [ $# -gt 0 ]; do
  case "$1" in
    --types) types="$2"; shift 2 ;;
    --chunks) chunks="$2"; shift 2 ;;
    --ctx) ctx="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --src) src="$2"; shift 2 ;;
    --text) text="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --dequantized) dequantized=1; shift ;;
    --imatrix) imatrix=(--imatrix "$(realpath "$2")"); shift 2 ;;
    *) echo "usage: $0 [--types \"T ...\"] [--chunks N] [--ctx N] [--threads N] [--src F.gguf] [--text F] [--work DIR] [--keep] [--imatrix FILE] [--dequantized]" >&2; exit 2 ;;
  esac
done
for f in "$src" "$text" "$root/target/qtool.jar"; do [ -f "$f" ] || { echo "$0: $f is missing" >&2; exit 2; }; done
mkdir -p "$work/bin"
source "$root/scripts/java-env.sh"
cp "$root/target/qtool.jar" "$work/qtool.jar"
qtool() { java --add-modules jdk.incubator.vector --enable-native-access=ALL-UNNAMED -jar "$work/qtool.jar" "$@" 2>>"$work/qtool.log"; }
bin="${LLAMA_CPP_BIN:-$work/bin}"
for t in perplexity quantize; do
  [ -x "$bin/llama-$t" ] || { xz -dc "$shared/peers/llama.cpp/llama-$t.xz" > "$bin/llama-$t"; chmod +x "$bin/llama-$t"; }
done
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# llama-perplexity's final estimate; this build now and then exits 0 before printing it, so retry a few times.
llama_ppl() {
  local out
  for _ in 1 2 3 4 5 6; do
    out=$("$bin/llama-perplexity" -m "$1" -f "$text" -c "$ctx" --chunks "$chunks" -t "$threads" 2>&1) \
      || { echo "llama-perplexity refused $1:" >&2; echo "$out" | tail -5 >&2; echo "refused"; return; }
    if [[ "$out" =~ Final\ estimate:\ PPL\ =\ ([0-9.]+) ]]; then echo "${BASH_REMATCH[1]}"; return; fi
  done
  echo "no-output"
}
qtool_ppl() {
  qtool ppl -m "$1" -d "$text" --ctx "$ctx" --windows "$chunks" --protocol llama.cpp --device cpu --json \
    | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'
}
gap() { python3 -c "import sys; a,b=sys.argv[1:]; print('%+.2f%%' % (100*(float(a)/float(b)-1)))" "$1" "$2" 2>/dev/null || echo "–"; }
# "yes" when two GGUF files hold the same tensors (name, type, shape, data bytes), else how many differ.
same_tensors() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
def tensors(path):
    b = open(path, 'rb').read(); o = 8
    def u(f):
        nonlocal o
        v = struct.unpack_from('<' + f, b, o)[0]; o += struct.calcsize('<' + f); return v
    def s():
        nonlocal o
        n = u('Q'); o += n; return b[o - n:o].decode()
    scalar = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}
    def val(t):
        if t == 8: return s()
        if t == 9:
            et, n = u('I'), u('Q'); return [val(et) for _ in range(n)]
        return u(scalar[t])
    nt, nkv = u('Q'), u('Q')
    kv = {}
    for _ in range(nkv):
        k = s(); kv[k] = val(u('I'))
    infos = []
    for _ in range(nt):
        name = s(); dims = [u('Q') for _ in range(u('I'))]; infos.append((name, dims, u('I'), u('Q')))
    al = kv.get('general.alignment', 32); base = (o + al - 1) // al * al
    ends = sorted({i[3] for i in infos}) + [len(b) - base]
    return {n: (t, d, b[base + off:base + min(e for e in ends if e > off)].rstrip(b'\0')) for n, d, t, off in infos}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
diff = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
print('yes' if not diff else '%d of %d differ' % (len(diff), len(a)))
PY
}
mib() { python3 -c "import os,sys; print('%.1f' % (os.path.getsize(sys.argv[1])/2**20))" "$1"; }

log "importing $src (float32)"
rm -rf "$work/src-f32"; qtool gguf import -i "$src" -o "$work/src-f32" --dtype float32 >/dev/null
echo "Source: $(basename "$src")${imatrix:+, importance ${imatrix[1]}}; $text, llama.cpp protocol, -c $ctx, $chunks chunks, $threads threads."
echo
extra=; [ $dequantized = 1 ] && extra=" llama-perplexity, same weights as F16 |"
echo "| type | MiB | tensors = llama-quantize's | llama-perplexity, qtool's file | llama-perplexity, llama-quantize's file | qtool vs llama-quantize | qtool ppl, imported | vs llama-perplexity (same file) |$extra"
echo "|---|---|---|---|---|---|---|---|${extra:+---|}"
for t in $types; do
  q="$work/qtool-$t.gguf" l="$work/llama-$t.gguf" imp="$work/imported-$t"
  log "$t: export"
  qtool gguf export -i "$work/src-f32" -o "$q" --type "$t" "${imatrix[@]}" >/dev/null
  log "$t: llama-quantize"
  "$bin/llama-quantize" --allow-requantize "${imatrix[@]}" "$src" "$l" "$t" > "$work/quantize-$t.log" 2>&1 || { echo "llama-quantize failed on $t" >&2; tail -3 "$work/quantize-$t.log" >&2; }
  same=$(same_tensors "$q" "$l")
  log "$t: llama-perplexity (qtool's file)"
  pq=$(llama_ppl "$q")
  if [ "$same" = yes ]; then
    pl=$pq  # only metadata such as general.name differs, which llama-perplexity does not read
  else
    log "$t: llama-perplexity (llama-quantize's file)"
    pl=$(llama_ppl "$l")
  fi
  log "$t: import and qtool ppl"
  rm -rf "$imp"; qtool gguf import -i "$q" -o "$imp" --dtype float32 >/dev/null
  pi=$(qtool_ppl "$imp")
  pf=
  if [ $dequantized = 1 ]; then
    log "$t: llama-perplexity on the imported weights as F16"
    qtool gguf export -i "$imp" -o "$work/dequantized.gguf" --type f16 >/dev/null
    pf=" $(llama_ppl "$work/dequantized.gguf") |"; rm -f "$work/dequantized.gguf"
  fi
  echo "| $t | $(mib "$q") | $same | $pq | $pl$([ "$same" = yes ] && echo " (same tensors)") | $(gap "$pq" "$pl") | $pi | $(gap "$pi" "$pq") |$pf"
  rm -rf "$imp"
  [ $keep = 1 ] || rm -f "$q" "$l"
done
