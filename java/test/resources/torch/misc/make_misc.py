# Small torch.save files for TorchZipFile's tests: a module state_dict (OrderedDict with _metadata) of
# GPTQ-for-LLaMa QuantLinear-like buffers, views sharing a storage, a transposed view, the legacy format, a malicious pickle.
import os, sys, torch
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
class QuantLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("qweight", torch.arange(24, dtype=torch.int32).view(3, 8))
        self.register_buffer("qzeros", torch.full((1, 1), 0x77777777, dtype=torch.int32))
        self.register_buffer("scales", (torch.arange(8) / 8).half().view(1, 8))
        self.register_buffer("g_idx", torch.zeros(24, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(8, dtype=torch.float16))
m = torch.nn.Module(); m.proj = QuantLinear()
torch.save(m.state_dict(), f"{out}/quantlinear.pt")
base = torch.arange(10).float()
torch.save({"base": base, "tail": base[4:], "long": torch.arange(3, dtype=torch.int64) * (1 << 40),
            "bf": torch.arange(4).bfloat16(), "scalar": torch.tensor(2.5)}, f"{out}/views.pt")
torch.save({"t": torch.arange(6).float().view(2, 3).t()}, f"{out}/transposed.pt")
torch.save({"x": torch.ones(2)}, f"{out}/legacy.pt", _use_new_zipfile_serialization=False)
class Evil:
    def __reduce__(self): return (os.system, ("touch /tmp/qtool-pwned",))
torch.save({"x": Evil()}, f"{out}/evil.pt")
print({f: os.path.getsize(f"{out}/{f}") for f in sorted(os.listdir(out))})
