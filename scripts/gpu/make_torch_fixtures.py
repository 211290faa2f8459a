#!/usr/bin/env python3
"""Makes small GPTQ-for-LLaMa checkpoints with PyTorch (CPU is enough), for qtool's import-gptq-pt tests.

  make_torch_fixtures.py OUT_DIR

Writes OUT_DIR/gptq-for-llama/ (about 120 KB, our own random data; committed as java/test/resources/torch/gptq-for-llama):
  config.json                      a tiny Llama (hidden 32, 1 layer, 2 heads of 16, intermediate 64, vocab 64)
  llama-4bit-g16-act.pt            torch.save of the quantized model's state_dict as GPTQ-for-LLaMa's QuantLinear.pack()
                                   lays it out since March 2023: qweight int32 [in*bits/32, out] (codes along the input
                                   dim, 32/bits per word), qzeros int32 [groups, out*bits/32] holding zero - 1, scales
                                   fp16 [groups, out], g_idx int32 [in] from an act-order permutation, an all-zero fp16
                                   bias; embeddings, norms and lm_head fp16, rotary inv_freq as old transformers saved it
  llama-3bit-zeros.pt              the layout before qzeros: float32 zeros [out, 1] = zero * scale and scales [out, 1]
                                   (one group per row), float32 bias, 3-bit codes packed as pack()'s 3-bit loop does
                                   (32 codes per 3 words, codes 10 and 21 straddling words)
  *.expected.safetensors           each linear's dequantized weight [out, in] float32, as GPTQ-for-LLaMa's kernels compute
                                   it: scales[g_idx] * (q - zero) (new layout), q * scale - zeros (old layout)
  manifest.json                    file, bits, group size and expected file of each checkpoint
The Meta-checkpoint fixtures (consolidated.NN.pth shards and convert_llama_weights_to_hf.py's tensors) are made by
java/test/resources/torch/meta-tiny/make_meta.py.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HIDDEN, HEADS, INTER, VOCAB, LAYERS = 32, 2, 64, 64, 1
LINEARS = [("self_attn.q_proj", HIDDEN, HIDDEN), ("self_attn.k_proj", HIDDEN, HIDDEN), ("self_attn.v_proj", HIDDEN, HIDDEN),
           ("self_attn.o_proj", HIDDEN, HIDDEN), ("mlp.gate_proj", INTER, HIDDEN), ("mlp.up_proj", INTER, HIDDEN),
           ("mlp.down_proj", HIDDEN, INTER)]


def pack_rows(intweight, bits):
    """GPTQ-for-LLaMa QuantLinear.pack()'s loop: uint32 codes [in, out] -> words [in*bits/32, out] (rows of words)."""
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # 3 bits
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.astype(np.int32)


def quantize(w, bits, groups_of_columns):
    """Asymmetric min/max grid per row and column group (GPTQ's Quantizer): scale, zero [groups, out], codes [in, out]."""
    out, n_in = w.shape
    maxq = 2 ** bits - 1
    scales = np.zeros((len(groups_of_columns), out), np.float32)
    zeros = np.zeros((len(groups_of_columns), out), np.int64)
    codes = np.zeros((n_in, out), np.uint32)
    for g, cols in enumerate(groups_of_columns):
        x = w[:, cols]
        xmin, xmax = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
        s = (xmax - xmin) / maxq
        z = np.round(-xmin / s)
        z = np.maximum(z, 1)  # v1 qzeros store zero - 1: keep every zero point representable (rows with no negative weight)
        scales[g], zeros[g] = s, z
        codes[cols] = np.clip(np.round(x / s[:, None]) + z[:, None], 0, maxq).astype(np.uint32).T
    return scales, zeros, codes


def main():
    out = os.path.join(sys.argv[1], "gptq-for-llama")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    json.dump(config, open(f"{out}/config.json", "w"), indent=1)

    def plain():
        sd = {"model.embed_tokens.weight": (torch.randn(VOCAB, HIDDEN) * 0.2).half(), "model.norm.weight": (1 + torch.randn(HIDDEN) * 0.1).half(),
              "lm_head.weight": (torch.randn(VOCAB, HIDDEN) * 0.2).half()}
        for i in range(LAYERS):
            sd[f"model.layers.{i}.input_layernorm.weight"] = (1 + torch.randn(HIDDEN) * 0.1).half()
            sd[f"model.layers.{i}.post_attention_layernorm.weight"] = (1 + torch.randn(HIDDEN) * 0.1).half()
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, HIDDEN // HEADS, 2).float() / (HIDDEN // HEADS)))
        return sd

    manifest = []
    # 1. qzeros layout, 4 bits, group 16, act-order
    bits, group = 4, 16
    sd, expected = plain(), {}
    for i in range(LAYERS):
        for name, n_out, n_in in LINEARS:
            p = f"model.layers.{i}.{name}"
            w = rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05
            perm = rng.permutation(n_in)  # act-order: columns in order of decreasing Hessian diagonal
            g_idx = np.zeros(n_in, np.int64)
            g_idx[perm] = np.arange(n_in) // group  # GPTQ-for-LLaMa: g_idx[perm[k]] = k // groupsize
            groups = [np.nonzero(g_idx == g)[0] for g in range(n_in // group)]
            scales, zeros, codes = quantize(w, bits, groups)
            scales16 = torch.from_numpy(scales).half()
            sf = scales16.float().numpy()
            expected[p + ".weight"] = torch.from_numpy((sf[g_idx] * (codes.astype(np.float32) - zeros[g_idx].astype(np.float32))).T.copy())
            sd[p + ".qweight"] = torch.from_numpy(pack_rows(codes, bits))
            sd[p + ".qzeros"] = torch.from_numpy(pack_rows((zeros - 1).astype(np.uint32).T.copy(), bits).T.copy())
            sd[p + ".scales"] = scales16
            sd[p + ".g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
            sd[p + ".bias"] = torch.zeros(n_out, dtype=torch.float16)
    torch.save(sd, f"{out}/llama-4bit-g16-act.pt")
    save_file(expected, f"{out}/llama-4bit-g16-act.expected.safetensors")
    manifest.append({"file": "llama-4bit-g16-act.pt", "bits": bits, "group_size": group, "expected": "llama-4bit-g16-act.expected.safetensors"})

    # 2. float-zeros layout, 3 bits, one group per row
    bits = 3
    sd, expected = plain(), {}
    for i in range(LAYERS):
        for name, n_out, n_in in LINEARS:
            p = f"model.layers.{i}.{name}"
            w = rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05
            scales, zeros, codes = quantize(w, bits, [np.arange(n_in)])
            s = torch.from_numpy(scales[0]).reshape(n_out, 1)  # float32, as the old QuantLinear registered them
            z = torch.from_numpy(zeros[0].astype(np.float32)).reshape(n_out, 1) * s
            expected[p + ".weight"] = (torch.from_numpy(codes.astype(np.float32)).t() * s - z).contiguous()
            sd[p + ".qweight"] = torch.from_numpy(pack_rows(codes, bits))
            sd[p + ".zeros"] = z
            sd[p + ".scales"] = s
            sd[p + ".bias"] = torch.zeros(n_out)
    torch.save(sd, f"{out}/llama-3bit-zeros.pt")
    save_file(expected, f"{out}/llama-3bit-zeros.expected.safetensors")
    manifest.append({"file": "llama-3bit-zeros.pt", "bits": bits, "group_size": -1, "expected": "llama-3bit-zeros.expected.safetensors"})

    json.dump(manifest, open(f"{out}/manifest.json", "w"), indent=1)
    sizes = {f: os.path.getsize(f"{out}/{f}") for f in sorted(os.listdir(out))}
    print(json.dumps({"torch": torch.__version__, "bytes": sum(sizes.values()), "files": sizes}))


if __name__ == "__main__":
    main()
