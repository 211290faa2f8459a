#!/usr/bin/env python3
"""Golden EXL2 tensors from ExLlamaV2 itself, for qtool's EXL2 reader tests:

  exl2_fixture.py EXL2_DIR OUT.safetensors

Loads ExLlamaV2's output of a small synth model and writes, for every quantized linear of the decoder layers, its
packed tensors (q_weight, q_scale, q_scale_max, q_groups, q_invperm/q_perm, bias) as stored, plus `<name>.dq`:
ExLlamaV2's own reconstruction of the fp16 weight (ext reconstruct, the [in, out] matrix its kernels multiply by)."""
import sys, torch
from safetensors.torch import load_file, save_file
from exllamav2 import ExLlamaV2, ExLlamaV2Config
from exllamav2.linear import ExLlamaV2Linear
import glob

d, out = sys.argv[1], sys.argv[2]
stored = {}
for f in sorted(glob.glob(d + "/*.safetensors")):
    stored.update({k: v for k, v in load_file(f).items() if k.startswith("model.layers.")})
cfg = ExLlamaV2Config(d)
model = ExLlamaV2(cfg)
model.load()
res = dict(stored)
for m in model.modules:
    for sub in [m] + list(getattr(m, "submodules", [])):
        if isinstance(sub, ExLlamaV2Linear) and sub.key.startswith("model.layers.") and sub.q_handle is not None:
            res[sub.key + ".dq"] = sub.get_weight_tensor_dq().half().cpu().contiguous()
save_file({k: v.contiguous() for k, v in res.items()}, out)
print("fixture:", len(res), "tensors,", sum(v.numel() * v.element_size() for v in res.values()), "bytes")
