#!/usr/bin/env python3
"""Reads a qtool AWQ GEMM checkpoint the way AutoAWQ's published unpacking code does (awq/utils/packing_utils.py:
unpack_awq, reverse_awq_order, dequantize_gemm), written independently of qtool's reader, and compares with qtool.

  awq_independent_check.py AWQ_DIR QTOOL_WEIGHTS.safetensors
      qtool's own dequantized weights (prefix.weight, F32 [out, in]) against this reader's: max |difference|
  awq_independent_check.py AWQ_DIR --logits IDS QTOOL_LOGITS.f32
      this reader's weights in a transformers LlamaForCausalLM (fp32, CUDA) against `qtool logits -m AWQ_DIR --ids IDS
      --fp32 --out QTOOL_LOGITS.f32`: relative L2 error and argmax agreement

Uses torch when it is installed, else numpy (the same operations). Prints one JSON line.
Unpacking: qweight int32 [in, out/8]; field k (bits 4k..4k+3) of word j holds output 8j + [0,2,4,6,1,3,5,7][k], undone
by indexing the unpacked columns with [0,4,1,5,2,6,3,7] per 8; qzeros [in/g, out/8] likewise; scales [in/g, out];
W^T = (q - z) * scales with scales and zeros repeated g times along the input.
"""
import json
import struct
import sys

import numpy as np

try:
    import torch
except ImportError:
    torch = None

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "BF16": np.uint16}


def read_safetensors(path):
    """Minimal safetensors reader (no package needed): 8-byte header size, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
        if t["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def load_dir(d):
    import glob
    sd = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        sd.update(read_safetensors(f))
    return sd


def dequantize_gemm(qweight, qzeros, scales, bits, group_size):
    """AutoAWQ's unpack_awq + reverse_awq_order + dequantize_gemm, in float32."""
    if torch is not None:
        qweight, qzeros, scales = torch.from_numpy(qweight.copy()), torch.from_numpy(qzeros.copy()), torch.from_numpy(scales.copy())
        shifts = torch.arange(0, 32, bits)
        iw = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).view(qweight.shape[0], -1)
        iz = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).view(qzeros.shape[0], -1)
        order = torch.arange(iw.shape[-1]).view(-1, 32 // bits)[:, AWQ_REVERSE_ORDER].view(-1)
        iw, iz = iw[:, order] & (2 ** bits - 1), iz[:, order] & (2 ** bits - 1)
        s = scales.float().repeat_interleave(group_size, dim=0)
        z = iz.repeat_interleave(group_size, dim=0)
        return ((iw - z).float() * s).numpy()
    shifts = np.arange(0, 32, bits, dtype=np.int32)
    iw = (qweight[:, :, None] >> shifts[None, None, :]).reshape(qweight.shape[0], -1)
    iz = (qzeros[:, :, None] >> shifts[None, None, :]).reshape(qzeros.shape[0], -1)
    order = np.arange(iw.shape[-1]).reshape(-1, 32 // bits)[:, AWQ_REVERSE_ORDER].reshape(-1)
    iw, iz = iw[:, order] & (2 ** bits - 1), iz[:, order] & (2 ** bits - 1)
    s = np.repeat(scales.astype(np.float32), group_size, axis=0)
    z = np.repeat(iz, group_size, axis=0)
    return (iw - z).astype(np.float32) * s


def dequantized_state_dict(d):
    cfg = json.load(open(d + "/config.json"))
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm", qc
    bits = qc["bits"]
    sd = load_dir(d)
    out = {}
    for k, t in sd.items():
        if k.endswith(".qweight"):
            p = k[:-len(".qweight")]
            g = qc["group_size"] if qc["group_size"] != -1 else t.shape[0]
            out[p + ".weight"] = dequantize_gemm(t, sd[p + ".qzeros"], sd[p + ".scales"], bits, g).T.copy()
        elif k.endswith((".qzeros", ".scales")):
            continue
        else:
            out[k] = t.astype(np.float32)
    return cfg, out


def main():
    d = sys.argv[1]
    cfg, sd = dequantized_state_dict(d)
    if sys.argv[2] != "--logits":
        ref = read_safetensors(sys.argv[2])
        worst, n = 0.0, 0
        for k, w in ref.items():
            diff = float(np.max(np.abs(sd[k] - w.astype(np.float32))))
            worst, n = max(worst, diff), n + 1
        assert n > 0, "no weights to compare"
        print(json.dumps({"dir": d, "reader": "torch" if torch is not None else "numpy", "linears": n, "max_abs_difference": worst}))
        return
    from transformers import AutoConfig, LlamaForCausalLM
    ids, dump = [int(x) for x in sys.argv[3].split(",")], sys.argv[4]
    hf = AutoConfig.from_pretrained(d)
    hf.quantization_config = None
    model = LlamaForCausalLM(hf).float()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if hf.tie_word_embeddings:
        model.tie_weights()
    model = model.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = model(torch.tensor([ids], device="cuda")).logits[0].double().cpu().numpy()
    q = np.fromfile(dump, dtype="<f4").reshape(ref.shape).astype(np.float64)
    err = np.linalg.norm(q - ref) / np.linalg.norm(ref)
    print(json.dumps({"dir": d, "rel_l2_error": err, "argmax_agreement": float(np.mean(q.argmax(-1) == ref.argmax(-1)))}))


if __name__ == "__main__":
    main()
