# Makes a tiny random Llama saved the way Meta's checkpoints are (2 model-parallel shards, bf16, plain dicts),
# and the HF tensors that convert_llama_weights_to_hf.py's logic gives from them (reference.pth).
import json, os, sys, torch
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
params = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 290, "multiple_of": 16,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 10000.0}
dim, nh, nkv, L, V = 32, 4, 2, 2, 290
hd = dim // nh
inter = 16 * ((int(1.3 * int(8 * dim / 3)) + 16 - 1) // 16)
def r(*s): return (torch.randn(*s) * 0.2).to(torch.bfloat16)
full = {"tok_embeddings.weight": r(V, dim), "norm.weight": (1 + r(dim).float() * 0.1).to(torch.bfloat16), "output.weight": r(V, dim),
        "rope.freqs": torch.ones(hd // 2, dtype=torch.bfloat16)}
for i in range(L):
    p = f"layers.{i}."
    full[p + "attention.wq.weight"] = r(dim, dim); full[p + "attention.wk.weight"] = r(nkv * hd, dim)
    full[p + "attention.wv.weight"] = r(nkv * hd, dim); full[p + "attention.wo.weight"] = r(dim, dim)
    full[p + "feed_forward.w1.weight"] = r(inter, dim); full[p + "feed_forward.w2.weight"] = r(dim, inter)
    full[p + "feed_forward.w3.weight"] = r(inter, dim)
    full[p + "attention_norm.weight"] = (1 + r(dim).float() * 0.1).to(torch.bfloat16)
    full[p + "ffn_norm.weight"] = (1 + r(dim).float() * 0.1).to(torch.bfloat16)
dim1_keys = ("attention.wo", "feed_forward.w2", "tok_embeddings")
shards = [{}, {}]
for k, t in full.items():
    if t.dim() == 1:
        for s in shards: s[k] = t.clone()
    else:
        d = 1 if any(x in k for x in dim1_keys) else 0
        for j, c in enumerate(torch.chunk(t, 2, dim=d)): shards[j][k] = c.clone().contiguous()
for j, s in enumerate(shards): torch.save(s, f"{out}/consolidated.{j:02d}.pth")
json.dump(params, open(f"{out}/params.json", "w"))
# reference: convert_llama_weights_to_hf.py (write_model, num_shards > 1) on the loaded shards
loaded = [torch.load(f"{out}/consolidated.{j:02d}.pth", map_location="cpu") for j in range(2)]
def permute(w, n_heads, dim1=dim, dim2=dim):
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
ref = {}
kvd = hd * nkv
for i in range(L):
    p = f"layers.{i}."; q = f"model.layers.{i}."
    ref[q + "self_attn.q_proj.weight"] = permute(torch.cat([l[p + "attention.wq.weight"].view(nh // 2, hd, dim) for l in loaded], 0).reshape(dim, dim), nh)
    ref[q + "self_attn.k_proj.weight"] = permute(torch.cat([l[p + "attention.wk.weight"].view(nkv // 2, hd, dim) for l in loaded], 0).reshape(kvd, dim), nkv, kvd, dim)
    ref[q + "self_attn.v_proj.weight"] = torch.cat([l[p + "attention.wv.weight"].view(nkv // 2, hd, dim) for l in loaded], 0).reshape(kvd, dim)
    ref[q + "self_attn.o_proj.weight"] = torch.cat([l[p + "attention.wo.weight"] for l in loaded], 1)
    ref[q + "mlp.gate_proj.weight"] = torch.cat([l[p + "feed_forward.w1.weight"] for l in loaded], 0)
    ref[q + "mlp.down_proj.weight"] = torch.cat([l[p + "feed_forward.w2.weight"] for l in loaded], 1)
    ref[q + "mlp.up_proj.weight"] = torch.cat([l[p + "feed_forward.w3.weight"] for l in loaded], 0)
    ref[q + "input_layernorm.weight"] = loaded[0][p + "attention_norm.weight"].clone()
    ref[q + "post_attention_layernorm.weight"] = loaded[0][p + "ffn_norm.weight"].clone()
ref["model.norm.weight"] = loaded[0]["norm.weight"].clone()
ref["model.embed_tokens.weight"] = torch.cat([l["tok_embeddings.weight"] for l in loaded], 1)
ref["lm_head.weight"] = torch.cat([l["output.weight"] for l in loaded], 0)
ref = {k: v.contiguous().clone() for k, v in ref.items()}
torch.save(ref, f"{out}/reference.pth")
print("torch", torch.__version__, "inter", inter, {f: os.path.getsize(f"{out}/{f}") for f in os.listdir(out)})
