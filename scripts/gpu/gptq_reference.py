#!/usr/bin/env python3
"""IST-DASLab/gptq's own GPTQ on one layer, to compare qtool's Java and CUDA GPTQ against.

  gptq_reference.py GPTQ_REPO W.npy H.npy OUT_DIR [--bits 4] [--group-size 128] [--asym] [--act-order]
                    [--static-groups] [--damp 0.01] [--block-size 128] [--mse] [--compare Q.npy ...]

GPTQ_REPO: a checkout of https://github.com/IST-DASLab/gptq (its gptq.py and quant.py are imported as they are).
W.npy: float32 [out, in] (HF orientation). H.npy: float32 [in, in], 2/n·XᵀX as gptq.py's add_batch makes it.
Writes OUT_DIR/q_ref.npy (the quantized weight, float32 [out, in]) and OUT_DIR/ref.json:
  loss         the 'error' fasterquant prints: sum of (w - q)² / Hinv_ii² / 2
  proxy_error  tr((W - Q) H (W - Q)ᵀ) in float64 (the objective GPTQ minimises, without damping)
  rtn_error    the same for round-to-nearest with the whole-row / static-group grids of the original weights
Each --compare file (e.g. qtool's q_qtool.npy from `GptqNpy quantize`) gets its proxy error, its ratio to the
reference's, the share of weights that differ and the relative Frobenius difference, printed as one JSON line.
GPTQ's float32 arithmetic makes exact agreement impossible across implementations; expect the same proxy error
within a few percent and a small share of weights one grid step apart.
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys

import numpy as np
import torch


def proxy_error(w, q, h):
    d = (w - q).astype(np.float64)
    return float(np.einsum("oi,ij,oj->", d, h.astype(np.float64), d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("w")
    ap.add_argument("h")
    ap.add_argument("out_dir")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--static-groups", action="store_true")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--mse", action="store_true")
    ap.add_argument("--compare", nargs="*", default=[])
    a = ap.parse_args()

    sys.path.insert(0, os.path.abspath(a.repo))
    try:
        import transformers  # noqa: F401  gptq.py only needs its Conv1D class for isinstance checks
    except ImportError:
        import types
        stub = types.ModuleType("transformers")
        stub.Conv1D = type("Conv1D", (), {})
        sys.modules["transformers"] = stub
    with contextlib.redirect_stdout(io.StringIO()):  # quant.py prints when its CUDA extension is absent
        import gptq as ist_gptq
        from quant import Quantizer, quantize

    w = np.load(a.w).astype(np.float32)
    h = np.load(a.h).astype(np.float32)
    out_features, in_features = w.shape
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    layer = torch.nn.Linear(in_features, out_features, bias=False).to(dev)
    layer.weight.data = torch.from_numpy(w).to(dev)
    g = ist_gptq.GPTQ(layer)
    g.H = torch.from_numpy(h).to(dev)
    g.nsamples = 1
    g.quantizer = Quantizer()
    g.quantizer.configure(a.bits, perchannel=True, sym=not a.asym, mse=a.mse)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        g.fasterquant(blocksize=a.block_size, percdamp=a.damp, groupsize=a.group_size,
                      actorder=a.act_order, static_groups=a.static_groups)
    loss = float(re.search(r"error ([-+0-9.eEinfa]+)", printed.getvalue()).group(1))
    q = layer.weight.data.float().cpu().numpy()

    # Round-to-nearest with grids from the original weights (per row, or per static group).
    rq = Quantizer()
    rq.configure(a.bits, perchannel=True, sym=not a.asym, mse=a.mse)
    wt = torch.from_numpy(w).to(dev)
    rtn = torch.empty_like(wt)
    gs = in_features if a.group_size == -1 else a.group_size
    for i in range(0, in_features, gs):
        rq.find_params(wt[:, i:i + gs], weight=True)
        rtn[:, i:i + gs] = quantize(wt[:, i:i + gs], rq.scale, rq.zero, rq.maxq)
    rtn = rtn.cpu().numpy()

    os.makedirs(a.out_dir, exist_ok=True)
    np.save(os.path.join(a.out_dir, "q_ref.npy"), q)
    ref = {"shape": [out_features, in_features], "bits": a.bits, "group_size": a.group_size, "sym": not a.asym,
           "act_order": a.act_order, "static_groups": a.static_groups, "damp": a.damp, "mse": a.mse,
           "loss": loss, "proxy_error": proxy_error(w, q, h), "rtn_error": proxy_error(w, rtn, h),
           "device": str(dev)}
    with open(os.path.join(a.out_dir, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(json.dumps(ref))

    for path in a.compare:
        other = np.load(path).astype(np.float32)
        err = proxy_error(w, other, h)
        print(json.dumps({"compare": path, "proxy_error": err, "ratio_to_ref": err / ref["proxy_error"],
                          "weights_differing": float(np.mean(other != q)),
                          "rel_frobenius_diff": float(np.linalg.norm(other - q) / np.linalg.norm(q))}))


if __name__ == "__main__":
    main()
