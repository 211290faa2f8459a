#!/usr/bin/env python3
"""Loads qtool GPTQ checkpoints with ExLlamaV2 0.3.2's own GPTQ loader and kernels and compares its logits with
qtool's on the same directory.

  gptq_exllama_check.py IDS GPTQ_DIR QTOOL_LOGITS.f32 [GPTQ_DIR QTOOL_LOGITS.f32 ...]

IDS: comma-separated token ids; QTOOL_LOGITS: `qtool logits -m GPTQ_DIR --ids IDS --fp32 --out FILE` (float32,
[len(IDS), vocab]). ExLlamaV2 (exllamav2/ext.py make_q_matrix) reads 4-bit GPTQ tensors: qweight/qzeros/scales/g_idx,
act-order when g_idx is not all zero, zero points stored minus one (checkpoint_format "gptq", v1) unless the config
says "gptq_v2". It runs in fp16, so the relative L2 error against qtool's fp32 logits is fp16's, well under the 1e-2
goal. Prints one JSON line per directory, then a PASS/FAIL line (every directory < 1e-2 and its linears loaded as
GPTQ matrices).
"""
import json
import sys

import numpy as np
import torch
from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config
from exllamav2.linear import ExLlamaV2Linear


def check(d, ids, dump):
    cfg = ExLlamaV2Config(d)
    cfg.max_seq_len = max(256, len(ids))
    model = ExLlamaV2(cfg)
    model.load()
    linears = [s for m in model.modules for s in getattr(m, "submodules", []) if isinstance(s, ExLlamaV2Linear)]
    gptq = sum(1 for m in linears if isinstance(getattr(m, "q_tensors", None), dict) and "qweight" in m.q_tensors)
    cache = ExLlamaV2Cache(model, max_seq_len=cfg.max_seq_len)
    with torch.inference_mode():
        ref = model.forward(torch.tensor([ids], dtype=torch.long), cache).float().cpu()[0].double().numpy()
    q = np.fromfile(dump, dtype="<f4").reshape(ref.shape).astype(np.float64)
    err = float(np.linalg.norm(q - ref) / np.linalg.norm(ref))
    qc = json.load(open(d + "/config.json"))["quantization_config"]
    model.unload()
    return {"dir": d, "bits": qc["bits"], "desc_act": qc["desc_act"], "sym": qc["sym"], "format": qc.get("checkpoint_format"),
            "gptq_linears": gptq, "linears": len(linears), "rel_l2_error": err,
            "argmax_agreement": float(np.mean(q.argmax(-1) == ref.argmax(-1)))}


def main():
    ids = [int(x) for x in sys.argv[1].split(",")]
    pairs = sys.argv[2:]
    ok = True
    for d, dump in zip(pairs[0::2], pairs[1::2]):
        r = check(d, ids, dump)
        print(json.dumps(r))
        ok &= r["rel_l2_error"] < 1e-2 and r["gptq_linears"] == r["linears"] > 0
    print(("PASS" if ok else "FAIL") + f": ExLlamaV2 0.3.2 loads {len(pairs) // 2} qtool GPTQ checkpoints; logits vs qtool's rel. L2 error < 1e-2")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
