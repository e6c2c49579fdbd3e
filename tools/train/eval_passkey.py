#!/usr/bin/env python3
"""Passkey / multi-key retrieval evaluation of a saved checkpoint (greedy decoding with
transformers' generate; --backend plain uses tools/train/ref_llama.py instead).

Usage: python3 tools/train/eval_passkey.py --model models/tiny [--lengths 1024 2048 4096 8192]
The checkpoint is loaded back in float32 (dtype=torch.float32) so RoPE's inv_freq is exact.
A sample counts as correct when the greedy continuation starts with the 5 key digits.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import EOS, Tok, multikey_prompt, passkey_prompt  # noqa: E402

N_NEW = 7  # ' ', 5 digits, '.'


def greedy_batches(model, prompts, n_new, tokens_per_batch, device):
    """prompts: list of id lists. Returns list of generated id lists (transformers generate)."""
    import torch
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    i = 0
    while i < len(order):
        L = len(prompts[order[i]])
        bs = max(1, tokens_per_batch // L)
        grp = [j for j in order[i:i + bs] if len(prompts[j]) == L]
        x = torch.tensor([prompts[j] for j in grp], dtype=torch.long, device=device)
        with torch.no_grad():
            g = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                               max_new_tokens=n_new, do_sample=False, num_beams=1,
                               pad_token_id=EOS)
        for r, j in enumerate(grp):
            out[j] = g[r, L:].tolist()
        i += len(grp)
    return out


def score(tok, gens, keys):
    ok, fails = [], []
    for g, k in zip(gens, keys):
        s = tok.dec([t for t in g if t != EOS])
        m = re.match(r"\s*(\d+)", s)
        good = bool(m) and m.group(1)[:5] == k and len(m.group(1)) >= 5
        ok.append(good)
        if not good and len(fails) < 3:
            fails.append({"key": k, "got": s})
    return ok, fails


def eval_passkey(model, tok, length, n, filler="repeat", corpus=None, seed=0, device="cuda",
                 tokens_per_batch=65536):
    rng = np.random.default_rng(seed * 1000003 + length)
    prompts, keys, depths = [], [], []
    for i in range(n):
        depth = i / max(1, n - 1)
        key = int(rng.integers(10000, 100000))
        _, ids = passkey_prompt(tok, length, depth, key, filler=filler, corpus=corpus,
                                rng=int(rng.integers(1 << 30)))
        prompts.append(ids)
        keys.append(str(key))
        depths.append(depth)
    t = time.time()
    gens = greedy_batches(model, prompts, N_NEW, tokens_per_batch, device)
    ok, fails = score(tok, gens, keys)
    # accuracy by depth decile
    by_depth = {}
    for d, g in zip(depths, ok):
        b = min(4, int(d * 5))
        by_depth.setdefault(f"{b * 20}-{b * 20 + 20}%", []).append(g)
    return {"task": "passkey", "filler": filler, "length": length, "n": n,
            "accuracy": float(np.mean(ok)),
            "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
            "accuracy_by_depth": {k: float(np.mean(v)) for k, v in sorted(by_depth.items())},
            "failures": fails, "seconds": round(time.time() - t, 2)}


def eval_multikey(model, tok, length, n, nkeys=4, seed=0, device="cuda", tokens_per_batch=65536):
    rng = np.random.default_rng(seed * 1000003 + length + 7)
    prompts, keys = [], []
    for _ in range(n):
        _, ids, ans = multikey_prompt(tok, length, rng, nkeys=nkeys)
        prompts.append(ids)
        keys.append(ans)
    t = time.time()
    gens = greedy_batches(model, prompts, N_NEW, tokens_per_batch, device)
    ok, fails = score(tok, gens, keys)
    return {"task": f"multikey{nkeys}", "filler": "repeat", "length": length, "n": n,
            "accuracy": float(np.mean(ok)),
            "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
            "failures": fails, "seconds": round(time.time() - t, 2)}


def backend_module(backend="auto"):
    """transformers, or the plain-PyTorch stand-in (ref_llama) where transformers is absent."""
    if backend in ("auto", "hf"):
        try:
            import transformers
            return transformers
        except ImportError:
            if backend == "hf":
                raise
    import ref_llama
    return ref_llama


def load_fp32(path, device, backend="auto"):
    import torch
    m = backend_module(backend).LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return m.to(device).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--device", default=None)
    ap.add_argument("--backend", default="auto", choices=["auto", "hf", "plain"])
    args = ap.parse_args()
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tok(os.path.join(args.model, "tokenizer.model"))
    model = load_fp32(args.model, dev, args.backend)
    res = [eval_passkey(model, tok, L, args.n, device=dev) for L in args.lengths]
    for r in res:
        print(f"passkey {r['length']:>6} tokens: {100 * r['accuracy']:.1f}% of {r['n']}")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
