#!/usr/bin/env python3
"""Batch-1 decode speed of an EXL2 directory under ExLlamaV2 0.3.2, measured as its test_inference.py speed test
does (that script is not in the wheel): the model loaded on one GPU with a cache, a prompt forwarded once, then
tokens decoded one at a time with model.forward(last token, cache) and a greedy pick on the host, the whole loop
timed after a CUDA synchronize.

  exllamav2_speed.py DIR [PROMPT_TOKENS [DECODE_TOKENS]]

Prints one JSON line: prompt and decode tokens, prefill and decode tokens/s, load seconds, peak GPU memory.
"""
import json
import sys
import time

import torch
from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config


def main():
    d = sys.argv[1]
    prompt_len = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    decode = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    t0 = time.time()
    cfg = ExLlamaV2Config(d)
    cfg.max_seq_len = 2048
    model = ExLlamaV2(cfg)
    model.load()
    cache = ExLlamaV2Cache(model, max_seq_len=cfg.max_seq_len)
    load_s = time.time() - t0
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, cfg.vocab_size, (1, prompt_len), generator=gen)

    def run(n):
        cache.current_seq_len = 0
        torch.cuda.synchronize()
        a = time.time()
        logits = model.forward(prompt[:, :-1], cache, preprocess_only=True)
        ids = prompt[:, -1:]
        torch.cuda.synchronize()
        b = time.time()
        for _ in range(n):
            logits = model.forward(ids, cache)
            ids = torch.argmax(logits[0, -1]).cpu().view(1, 1)
        torch.cuda.synchronize()
        return b - a, time.time() - b

    with torch.inference_mode():
        run(8)  # warm-up: kernels, allocator
        prefill_s, decode_s = run(decode)
    print(json.dumps({"dir": d, "prompt_tokens": prompt_len, "decode_tokens": decode,
                      "prefill_tokens_per_s": round((prompt_len - 1) / prefill_s, 1),
                      "decode_tokens_per_s": round(decode / decode_s, 2), "load_s": round(load_s, 1),
                      "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))


if __name__ == "__main__":
    main()
