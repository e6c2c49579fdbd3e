"""A plain-PyTorch Llama that reads and writes the Hugging Face checkpoint layout.

It follows transformers' LlamaForCausalLM math (RMSNorm computed in float32, rotate-half RoPE
with inv_freq = 1/theta^(2i/d) in float32, GQA by repeating KV heads, causal softmax attention,
SiLU-gated MLP, untied lm_head) and uses the same parameter names, so a checkpoint written here
loads in transformers and vice versa. It exists so the training pipeline can run where
transformers is not installed (train.py --backend plain) and as an independent cross-check of
transformers' numbers (train.py logs the difference when both are present).

Only torch, numpy and the standard library are needed (works with torch 1.13 and 2.x).
"""
import json
import math
import os
import struct
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__version__ = "mnemo-ref-llama-1"


class LlamaConfig:
    def __init__(self, vocab_size=4096, hidden_size=384, intermediate_size=1024,
                 num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                 head_dim=None, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 rope_theta=10000.0, hidden_act="silu", initializer_range=0.02,
                 tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                 bos_token_id=1, eos_token_id=2, **kw):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        rp = kw.get("rope_parameters") or {}
        self.rope_theta = float(rp.get("rope_theta", rope_theta))
        self.rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        assert hidden_act == "silu" and not tie_word_embeddings
        assert not attention_bias and not mlp_bias
        assert (kw.get("rope_scaling") or {}).get("rope_type", "default") == "default"
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.tie_word_embeddings = False
        self.attention_bias = False
        self.mlp_bias = False
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def to_hf_dict(self, dtype="bfloat16"):
        """config.json in the transformers 4.x layout (transformers 5 reads it too)."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim, "hidden_act": "silu",
            "hidden_size": self.hidden_size, "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings, "mlp_bias": False,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads, "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps, "rope_scaling": None,
            "rope_theta": self.rope_theta, "tie_word_embeddings": False,
            "torch_dtype": dtype, "use_cache": True, "vocab_size": self.vocab_size,
        }


# ------------------------------------------------------------------ safetensors
_ST_DTYPES = {torch.bfloat16: ("BF16", np.int16), torch.float32: ("F32", np.float32),
              torch.float16: ("F16", np.float16)}


def save_safetensors(tensors, path, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        code, npdt = _ST_DTYPES[t.dtype]
        if t.dtype == torch.bfloat16:
            b = t.view(torch.int16).numpy().tobytes()
        else:
            b = t.numpy().astype(npdt).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def load_safetensors(path):
    with open(path, "rb") as fh:
        data = fh.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[base + s:base + e]
        if info["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
        elif info["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy())
        elif info["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.float16).copy())
        else:
            raise ValueError(info["dtype"])
        out[name] = t.reshape(info["shape"])
    return out


# ------------------------------------------------------------------ model
class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


class Rotary(nn.Module):
    def __init__(self, head_dim, theta):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions, dtype):
        # positions: [T] int64 -> cos, sin [T, head_dim] computed in float32
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _sdpa(q, k, v, attn_mask=None, is_causal=False):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    # torch < 2.0: explicit softmax attention (softmax in float32, like transformers' eager)
    T, S = q.shape[-2], k.shape[-2]
    if is_causal:
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    w = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        w = w.masked_fill(~attn_mask, float("-inf"))
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    return w @ v


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.H, self.Hkv, self.D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.H * self.D, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.Hkv * self.D, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.Hkv * self.D, bias=False)
        self.o_proj = nn.Linear(self.H * self.D, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        rep = self.H // self.Hkv
        k = k[:, :, None].expand(B, self.Hkv, rep, k.shape[2], self.D).reshape(B, self.H, -1, self.D)
        v = v[:, :, None].expand(B, self.Hkv, rep, v.shape[2], self.D).reshape(B, self.H, -1, self.D)
        S = k.shape[2]
        if S == T:
            o = _sdpa(q, k, v, is_causal=True)
        else:  # queries are the last T of S positions
            i = torch.arange(T, device=x.device)[:, None] + (S - T)
            j = torch.arange(S, device=x.device)[None, :]
            o = _sdpa(q, k, v, attn_mask=(j <= i))
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary_emb = Rotary(c.head_dim, c.rope_theta)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        std = config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, input_ids, use_cache=False, caches=None, start_pos=0, **kw):
        x = self.model.embed_tokens(input_ids)
        pos = torch.arange(start_pos, start_pos + input_ids.shape[1], device=input_ids.device)
        cos, sin = self.model.rotary_emb(pos, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        logits = self.lm_head(self.model.norm(x))
        return types.SimpleNamespace(logits=logits)

    # --- transformers-like helpers
    def save_pretrained(self, d, safe_serialization=True, **kw):
        os.makedirs(d, exist_ok=True)
        dtype = next(self.parameters()).dtype
        sd = {k: v for k, v in self.state_dict().items() if not k.endswith("inv_freq")}
        save_safetensors(sd, os.path.join(d, "model.safetensors"), {"format": "pt"})
        name = {torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float16: "float16"}[dtype]
        with open(os.path.join(d, "config.json"), "w") as fh:
            json.dump(self.config.to_hf_dict(name), fh, indent=2, sort_keys=True)
            fh.write("\n")
        with open(os.path.join(d, "generation_config.json"), "w") as fh:
            json.dump({"_from_model_config": True, "bos_token_id": self.config.bos_token_id,
                       "eos_token_id": self.config.eos_token_id}, fh, indent=2)
            fh.write("\n")

    @classmethod
    def from_pretrained(cls, d, dtype=torch.float32, **kw):
        with open(os.path.join(d, "config.json")) as fh:
            cj = json.load(fh)
        c = LlamaConfig(**{k: v for k, v in cj.items()
                           if k not in ("architectures", "model_type", "torch_dtype", "dtype",
                                        "attention_dropout", "pretraining_tp", "use_cache",
                                        "transformers_version", "_name_or_path")})
        m = cls(c)
        sd = load_safetensors(os.path.join(d, "model.safetensors"))
        missing, unexpected = m.load_state_dict({k: v.to(dtype) for k, v in sd.items()},
                                                strict=False)
        missing = [k for k in missing if not k.endswith("inv_freq")]
        if missing or unexpected:
            raise ValueError(f"missing {missing} unexpected {unexpected}")
        m = m.to(dtype)
        # inv_freq is a non-persistent buffer: recompute it in float32 after any dtype cast
        m.model.rotary_emb.inv_freq = Rotary(c.head_dim, c.rope_theta).inv_freq.to(
            m.lm_head.weight.device)
        return m

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens=1, pad_token_id=None, eos_token_id=None,
                 **kw):
        """Greedy decoding with a KV cache; rows stop after EOS (then padded) like
        transformers."""
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = eos if pad_token_id is None else pad_token_id
        caches = [dict() for _ in self.model.layers]
        x = input_ids
        out = [input_ids]
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        pos = 0
        for _ in range(max_new_tokens):
            logits = self(x, caches=caches, start_pos=pos).logits[:, -1]
            pos += x.shape[1]
            nxt = logits.float().argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out.append(nxt[:, None])
            done |= nxt == eos
            x = nxt[:, None]
            if bool(done.all()):
                break
        return torch.cat(out, dim=1)


def main():
    """Write a randomly initialised checkpoint of the given shape (bf16), e.g. for loader
    tests before a trained one exists: python3 tools/train/ref_llama.py --random-init DIR"""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-init", required=True, metavar="DIR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.02)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    m = LlamaForCausalLM(LlamaConfig(head_dim=64, initializer_range=args.std))
    m.to(torch.bfloat16).save_pretrained(args.random_init)
    print(args.random_init, sum(p.numel() for p in m.parameters()), "parameters")


if __name__ == "__main__":
    main()
