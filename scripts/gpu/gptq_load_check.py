#!/usr/bin/env python3
"""Loads a qtool GPTQ checkpoint the way AutoGPTQ/GPTQModel's torch kernels unpack it, written independently of
qtool's reader, into a transformers LlamaForCausalLM (fp32), and compares its logits with qtool's dump.

  gptq_load_check.py GPTQ_DIR IDS QTOOL_LOGITS.f32

IDS: comma-separated token ids; QTOOL_LOGITS: `qtool logits -m GPTQ_DIR --ids IDS --fp32 --out FILE`.
Unpacking (AutoGPTQ qlinear_cuda_old / GPTQModel torch): qweight int32 [in*bits/32, out] holds `bits`-wide codes
along the input dim, LSB first; qzeros int32 [groups, out*bits/32] along the output dim; 3-bit codes run as one
96-bit stream over 3 words. v1 checkpoints store zero-1, v2 the zero. w[i, o] = scales[g_idx[i], o] * (q - z).
"""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file
import glob
from transformers import AutoConfig, LlamaForCausalLM


def unpack(words, bits, count, axis):
    """Codes from int32 words packed along `axis` (0: rows of words hold consecutive rows; 1: columns)."""
    w = words.numpy().astype(np.uint32)
    if axis == 1:
        w = w.T
    nwords = w.shape[0]
    bitstream = np.zeros((nwords * 32, w.shape[1]), dtype=np.uint8)
    for b in range(32):
        bitstream[b::32] = (w >> b) & 1
    codes = np.zeros((count, w.shape[1]), dtype=np.int64)
    for b in range(bits):
        codes |= bitstream[b:count * bits:bits].astype(np.int64) << b
    return codes if axis == 0 else codes.T


def main():
    d, ids, dump = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], sys.argv[3]
    cfg = AutoConfig.from_pretrained(d)
    qc = cfg.quantization_config if isinstance(cfg.quantization_config, dict) else cfg.quantization_config.to_dict()
    bits, v2 = qc["bits"], qc.get("checkpoint_format", "gptq") == "gptq_v2"
    sd = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        sd.update(load_file(f))
    out = {}
    for k, t in sd.items():
        if k.endswith(".qweight"):
            p = k[:-len(".qweight")]
            scales, g_idx = sd[p + ".scales"].float(), sd[p + ".g_idx"].long()
            n_in, n_out = g_idx.shape[0], scales.shape[1]
            q = torch.from_numpy(unpack(t, bits, n_in, 0))
            z = torch.from_numpy(unpack(sd[p + ".qzeros"], bits, n_out, 1))
            z = z if v2 else z + 1  # v1 readers add the 1 back (a stored 2^bits-1 becomes 2^bits, as in AutoGPTQ)
            w = scales[g_idx] * (q.float() - z[g_idx].float())
            out[p + ".weight"] = w.t().contiguous()
        elif k.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        else:
            out[k] = t.float()
    cfg.quantization_config = None
    model = LlamaForCausalLM(cfg).float()
    missing, unexpected = model.load_state_dict(out, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model = model.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = model(torch.tensor([ids], device="cuda")).logits[0].double().cpu().numpy()
    q = np.fromfile(dump, dtype="<f4").reshape(ref.shape).astype(np.float64)
    err = np.linalg.norm(q - ref) / np.linalg.norm(ref)
    print(json.dumps({"dir": d, "bits": bits, "format": "gptq_v2" if v2 else "gptq", "rel_l2_error": err,
                      "argmax_agreement": float(np.mean(q.argmax(-1) == ref.argmax(-1)))}))


if __name__ == "__main__":
    main()
