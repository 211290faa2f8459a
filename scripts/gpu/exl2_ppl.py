#!/usr/bin/env python3
"""Perplexity of a model loaded by ExLlamaV2 under the GPTQ protocol (REFERENCE.md), on token ids qtool made:

  exl2_ppl.py MODEL_DIR IDS.json CTX [--windows N]

IDS.json: `qtool tokenize -m MODEL -f TEXT --ids` of the evaluation text (the wikitext-2 test rows joined with
"\\n\\n"), so ExLlamaV2 and qtool score the same windows. Prints one JSON line."""
import argparse, json, math, time
import torch
from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Cache

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("ids"); ap.add_argument("ctx", type=int)
ap.add_argument("--windows", type=int, default=0)
a = ap.parse_args()
cfg = ExLlamaV2Config(a.model)
cfg.max_seq_len = a.ctx
model = ExLlamaV2(cfg)
cache = ExLlamaV2Cache(model, max_seq_len=a.ctx, lazy=True)
model.load_autosplit(cache)
ids = json.load(open(a.ids))
n = len(ids) // a.ctx if a.windows <= 0 else min(a.windows, len(ids) // a.ctx)
nll, count, t0 = 0.0, 0, time.time()
with torch.inference_mode():
    for w in range(n):
        x = torch.tensor([ids[w * a.ctx:(w + 1) * a.ctx]])
        cache.current_seq_len = 0
        lg = model.forward(x, cache).float()[0, :-1].cuda()
        nll += torch.nn.functional.cross_entropy(lg, x[0, 1:].cuda(), reduction="sum").item()
        count += a.ctx - 1
print(json.dumps({"reader": "exllamav2", "windows": n, "ctx": a.ctx, "ppl": math.exp(nll / count),
                  "seconds": time.time() - t0}))
