#!/usr/bin/env python3
"""Reference figures from transformers on the GPU host, to check qtool against.

  reference.py logits MODEL IDS QTOOL_F32 [QTOOL_F32 ...]   relative L2 error of qtool's logits dumps
                                                           (qtool logits --out) against transformers fp32
  reference.py ppl MODEL IDS_JSON CTX WINDOWS              transformers fp32 ppl of the first windows of an id list
  reference.py prefill MODEL BATCH LEN                     transformers fp16 (sdpa) prefill tokens/s
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def load(model_dir, dtype):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").cuda().eval()


def logits(model_dir, ids, dumps):
    ids = [int(x) for x in ids.split(",")]
    m = load(model_dir, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = m(torch.tensor([ids], device="cuda")).logits[0].double().cpu().numpy()
    for d in dumps:
        q = np.fromfile(d, dtype="<f4").reshape(ref.shape).astype(np.float64)
        err = np.linalg.norm(q - ref) / np.linalg.norm(ref)
        print(f"logits {model_dir} {d}: rel L2 error {err:.3e}, argmax agreement {np.mean(q.argmax(-1) == ref.argmax(-1)):.4f}")


def ppl(model_dir, ids_json, ctx, windows):
    ids = json.load(open(ids_json))
    ctx, windows = int(ctx), int(windows)
    m = load(model_dir, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    total, n = 0.0, 0
    with torch.no_grad():
        for w in range(min(windows, len(ids) // ctx)):
            x = torch.tensor([ids[w * ctx:(w + 1) * ctx]], device="cuda")
            lg = m(x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(lg, x[0, 1:], reduction="sum")
            total += nll.item()
            n += ctx - 1
    print(json.dumps({"model": model_dir, "ctx": ctx, "windows": n // (ctx - 1), "ppl": float(np.exp(total / n))}))


def prefill(model_dir, batch, length):
    batch, length = int(batch), int(length)
    m = load(model_dir, torch.float16)
    x = torch.randint(0, m.config.vocab_size, (batch, length), device="cuda")
    with torch.no_grad():
        for _ in range(2):
            m(x, use_cache=False)
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            m(x, use_cache=False)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    s = sorted(times)[len(times) // 2]
    print(json.dumps({"model": model_dir, "batch": batch, "len": length, "seconds": s, "tokens_per_second": batch * length / s}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"logits": lambda: logits(args[0], args[1], args[2:]), "ppl": lambda: ppl(*args), "prefill": lambda: prefill(*args)}[cmd]()
