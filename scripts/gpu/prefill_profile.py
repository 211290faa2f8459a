#!/usr/bin/env python3
"""PyTorch's side of the prefill breakdown: one transformers fp16 (sdpa) forward of BATCH x LEN under
torch.profiler, CUDA kernel time summed into GEMM / attention / other.

  prefill_profile.py MODEL BATCH LEN
"""
import sys

import torch
from transformers import AutoModelForCausalLM

model_dir, batch, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16, attn_implementation="sdpa").cuda().eval()
x = torch.randint(0, m.config.vocab_size, (batch, length), device="cuda")
with torch.no_grad():
    for _ in range(2):
        m(x, use_cache=False)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        m(x, use_cache=False)
        torch.cuda.synchronize()
groups = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
rows = []
for e in prof.key_averages():
    t = getattr(e, "device_time_total", None)
    if t is None:
        t = e.cuda_time_total
    if t <= 0:
        continue
    name = e.key.lower()
    if "flash" in name or "fmha" in name or "attention" in name or "sdpa" in name:
        g = "attention"
    elif "gemm" in name or "sm90" in name or "cutlass" in name or "cublas" in name or "nvjet" in name:
        g = "gemm"
    else:
        g = "other"
    groups[g] += t / 1000
    rows.append((t / 1000, e.count, g, e.key[:90]))
rows.sort(reverse=True)
for t, n, g, k in rows[:12]:
    print(f"  {t:9.2f} ms  x{n:<4d} {g:9s} {k}")
total = sum(groups.values())
print(f"pytorch {batch}x{length} kernel time: total {total:.1f} ms, gemm {groups['gemm']:.1f}, "
      f"attention {groups['attention']:.1f}, other {groups['other']:.1f}")
