#!/usr/bin/env bash
# On the GPU host: installs the ExLlamaV2 0.3.2 wheel (carried in .gpu/peers) into /tmp/site with the patches
# ../shared/peers/README.md requires, then builds its extension once (≈3 minutes; kept while the machine is warm).
# Afterwards: `source scripts/gpu/exllamav2-setup.sh` only exports PYTHONPATH etc.
set -u
export PYTHONPATH=/tmp/site:/tmp/shim TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
if [ ! -f /tmp/site/exllamav2/.patched ]; then
  wheel=$(ls ${QTOOL_PEERS:-.gpu/peers}/exllamav2-*.whl /tmp/k/peers/exllamav2-*.whl 2>/dev/null | head -1)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel"
  mkdir -p /tmp/shim/fastparquet && touch /tmp/shim/fastparquet/__init__.py
  sed -i 's/engine = "fastparquet"/engine = "pyarrow"/' /tmp/site/exllamav2/conversion/tokenize.py
  sed -i 's/^\(\s*\)has_lower_right_sdpa = True/\1has_lower_right_sdpa = False/' /tmp/site/exllamav2/attn.py
  touch /tmp/site/exllamav2/.patched
fi
t0=$(date +%s)
python3 -c "from exllamav2.ext import exllamav2_ext" >/tmp/exl2-jit.log 2>&1 || { tail -20 /tmp/exl2-jit.log; }
echo "exllamav2 extension ready ($(( $(date +%s) - t0 )) s)"
