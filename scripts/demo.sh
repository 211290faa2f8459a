#!/usr/bin/env bash
# The main job end to end on a model that needs no download: build, then run qtool on ../shared/models/stories260K
# (or, where ../shared is absent, on a small random model made by `qtool synth`).
# Until `qtool convert` lands, the job is: inspect the model, evaluate its perplexity, generate from it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
qtool() { ./scripts/qtool "$@"; }  # java -jar with the Vector API module (fast CPU backend)
model=../shared/models/stories260K
data=../shared/data/wikitext-2-raw-v1_test.parquet
if [ ! -d "$model" ]; then
  model=target/demo-synth
  rm -rf "$model"
  qtool synth --out "$model" --hidden 256 --layers 2 --heads 8 --kv-heads 2 --intermediate 512 --vocab 512
  qtool inspect "$model"
  exit 0
fi
qtool inspect "$model"
qtool ppl -m "$model" -d "$data" --ctx 512
qtool generate -m "$model" -p "Once upon a time" -n 64 --greedy
