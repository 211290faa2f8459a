#!/usr/bin/env python3
"""IST-DASLab/gptq's sequential pipeline (its llama.py, adapted to transformers 5) on the calibration tokens a qtool
job used, then perplexity of the fake-quantized model: the reference `qtool convert --format gptq` is compared with.

  gptq_pipeline_reference.py GPTQ_REPO MODEL CAL.i32 ROWS LEN IDS.json CTX [--bits 4] [--group-size 128] [--asym]
                             [--act-order] [--true-sequential] [--damp 0.01] [--windows N]

GPTQ_REPO: a checkout of IST-DASLab/gptq (gptq.py, quant.py imported unchanged). CAL.i32: qtool's WORK/calibration.i32
(int32 tokens, ROWS x LEN). IDS.json: `qtool tokenize -m MODEL -f TEXT --ids` of the evaluation text, so both sides
score the same tokens. Prints one JSON line: seconds for the quantization, ppl at CTX over the windows, and per
linear the relative reconstruction error ||WX - QX||^2 / ||WX||^2 on its calibration inputs X in this pipeline,
computed as qtool does from H = X^T X (tr(D H D^T) / tr(W H W^T), D = W - Q; H's scale cancels) — `qtool convert
--json` reports the same figure as relative_errors.
transformers 5 adaptations (BUILD-NOTES.md): Conv1D lives in transformers.pytorch_utils; decoder layers take
position_embeddings and return a tensor.
"""
import argparse, json, math, sys, time

import numpy as np
import torch
import transformers
import transformers.pytorch_utils

transformers.Conv1D = transformers.pytorch_utils.Conv1D


def main():
    ap = argparse.ArgumentParser()
    for a in ["repo", "model", "cal", "rows", "length", "ids", "ctx"]:
        ap.add_argument(a)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--true-sequential", action="store_true")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--windows", type=int, default=0)
    ap.add_argument("--dtype", default="float16")
    a = ap.parse_args()
    sys.path.insert(0, a.repo)
    from gptq import GPTQ
    from quant import Quantizer

    rows, length, ctx = int(a.rows), int(a.length), int(a.ctx)
    dtype = getattr(torch, a.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").cuda().eval()
    cal = torch.from_numpy(np.fromfile(a.cal, dtype="<i4").astype(np.int64).reshape(rows, length)).cuda()
    errors = {}
    t0 = time.time()
    with torch.no_grad():
        inps = model.model.embed_tokens(cal)
        pos = torch.arange(length, device="cuda").unsqueeze(0)
        pe = model.model.rotary_emb(inps, pos)
        outs = torch.zeros_like(inps)
        names_all = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        seq = ([["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"], ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]
               if a.true_sequential else [names_all])

        def run(layer, x):
            out = layer(x, position_embeddings=pe, position_ids=pos)
            return out[0] if isinstance(out, tuple) else out

        for i, layer in enumerate(model.model.layers):
            mods = dict(layer.named_modules())
            for names in seq:
                g = {}
                for n in names:
                    g[n] = GPTQ(mods[n])
                    g[n].quantizer = Quantizer()
                    g[n].quantizer.configure(a.bits, perchannel=True, sym=not a.asym, mse=False)
                hooks = [mods[n].register_forward_hook(lambda m, inp, out, n=n: g[n].add_batch(inp[0].data, out.data)) for n in names]
                for j in range(rows):
                    run(layer, inps[j:j + 1])
                for h in hooks:
                    h.remove()
                for n in names:
                    w0, h = mods[n].weight.data.double().clone(), g[n].H.double().clone()  # fasterquant changes g[n].H in place
                    g[n].fasterquant(percdamp=a.damp, groupsize=a.group_size, actorder=a.act_order)
                    d = w0 - mods[n].weight.data.double()
                    errors[f"model.layers.{i}.{n}"] = ((d @ h) * d).sum().item() / ((w0 @ h) * w0).sum().item()
                    g[n].free()
            for j in range(rows):
                outs[j] = run(layer, inps[j:j + 1])[0]
            inps, outs = outs, inps
        torch.cuda.synchronize()
    seconds = time.time() - t0
    ids = json.load(open(a.ids))
    n = len(ids) // ctx if a.windows <= 0 else min(a.windows, len(ids) // ctx)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(n):
            x = torch.tensor([ids[w * ctx:(w + 1) * ctx]], device="cuda")
            lg = model(x).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(lg, x[0, 1:], reduction="sum").item()
            count += ctx - 1
    print(json.dumps({"reference": "IST-DASLab/gptq", "seconds": seconds, "windows": n, "ctx": ctx, "ppl": math.exp(nll / count),
                      "relative_errors": errors}))


if __name__ == "__main__":
    main()
