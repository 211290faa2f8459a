#!/usr/bin/env python3
"""Reads EXL2 tensors packed by qtool with ExLlamaV2 0.3.2's own kernels and compares them with qtool's weights.

  exl2_tensor_check.py DUMP_DIR [--adaptive]

DUMP_DIR: written by `java -cp qtool.jar:checks qtool.format.exl2.Exl2TensorDump DUMP_DIR`: per case `caseN`, the
packed tensors (q_weight, q_scale, q_scale_max, q_groups, q_invperm), W (`.weight`), H (`.hessian`) and qtool's
dequantized weight (`.dequantized`, [out, in]). For each case: ExLlamaV2's make_q_matrix (which shuffles the words
into its kernel order) + reconstruct must give qtool's weights exactly (fp16), and its quantized matmul x·Wᵀ must
match x·(qtool's weights)ᵀ to fp16 accuracy. With --adaptive, ExLlamaV2's AdaptiveGPTQ also quantizes the same W
with the same H and option, and both relative output errors tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) are printed.
ExLlamaV2 must be importable (PYTHONPATH with the wheel installed as ../shared/peers/README.md says).
"""
import sys

import torch
from safetensors.torch import load_file


def rel_err(w, q, h):
    d = (w - q).double()
    return (torch.einsum("oi,ij,oj->", d, h.double(), d) / torch.einsum("oi,ij,oj->", w.double(), h.double(), w.double())).item()


def main():
    d = sys.argv[1]
    adaptive = "--adaptive" in sys.argv
    from exllamav2.ext import exllamav2_ext as ext_c, none_tensor, make_q_matrix
    t = load_file(d + "/model.safetensors")
    options = open(d + "/options.txt").read().split("\n")
    cases = sorted({k.split(".")[0] for k in t}, key=lambda k: int(k[4:]))
    failed = 0
    for key in cases:
        option = options[int(key[4:])]
        w_ref = t[key + ".dequantized"].cuda()
        out_f, in_f = w_ref.shape
        q = {k: t[key + "." + k].cuda() for k in ["q_weight", "q_scale", "q_scale_max", "q_groups", "q_invperm"]}
        q["q_perm"] = torch.argsort(q["q_invperm"]).to(torch.int)
        padded = q["q_weight"].shape[1]
        handle = make_q_matrix(q, none_tensor)
        rec = torch.empty((in_f, padded), dtype=torch.half, device="cuda")
        ext_c.reconstruct(handle, rec)
        rebuilt = rec[:, :out_f].T.float()
        max_diff = (rebuilt - w_ref).abs().max().item()
        x = torch.randn((16, in_f), dtype=torch.half, device="cuda")
        y = torch.empty((16, padded), dtype=torch.half, device="cuda")
        ext_c.gemm_half_q_half(x, handle, y, True)  # force the quantized kernel
        y_ref = x.float() @ w_ref.T
        mm = ((y[:, :out_f].float() - y_ref).norm() / y_ref.norm()).item()
        ok = max_diff == 0 and mm < 2e-3
        failed += not ok
        line = f"{key} {out_f}x{in_f} {option:42s} reconstruct max|diff| {max_diff:.3g}, matmul rel {mm:.2e}  {'PASS' if ok else 'FAIL'}"
        if adaptive:
            from torch import nn
            from exllamav2.conversion.adaptivegptq import AdaptiveGPTQ
            from exllamav2.conversion.qparams import QParams
            w = t[key + ".weight"]
            h = t[key + ".hessian"].cuda()
            layer = nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=torch.half)
            layer.weight.data = w.half().cuda()
            parts = [p.split(":") for p in option.split("/")]
            bits = [int(b.split("b_")[0]) for _, b in parts]
            gs = [int(b.split("b_")[1][:-1]) for _, b in parts]
            props = [float(p) for p, _ in parts]
            qp = QParams(gs, bits, props, 4)
            lq = AdaptiveGPTQ(layer)
            lq.hessian = h.clone()
            lq.num_batches = 1
            lq.prepare()
            lq.configure(qp.group_size, qp.bits, qp.bits_prop, qp.scale_bits)
            lq.quantize(keep_qweight=True)
            q_exl = lq.quant[lq.invperm, :].T.float()
            # ExLlamaV2 quantizes the fp16 weight; qtool got the same values as F32 (fp16-representable or not)
            w_cuda = w.cuda()
            line += f"; rel err qtool {rel_err(w_cuda, w_ref, h):.4e} ExLlamaV2 {rel_err(w_cuda, q_exl, h):.4e}"
        print(line, flush=True)
    print(f"exl2 tensors read by ExLlamaV2: {len(cases) - failed} of {len(cases)} pass")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
