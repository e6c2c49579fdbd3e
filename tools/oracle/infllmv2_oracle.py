#!/usr/bin/env python3
"""InfLLM-V2 oracle: an independent PyTorch implementation of block selection and block-sparse attention.

Written from the InfLLM-V2 paper (arXiv 2509.24663) and mnemo's DESIGN.md, not from mnemo's C++: it works
on whole masked matrices in float64, maps window scores to block scores with torch's max_pool1d (the
published formulation) and ranks blocks with a stable sort. It generates random inputs with fixed seeds,
runs compression -> stage 1 -> top-k -> stage 2, and writes fixtures that tests/attention/oracle_test.cpp
checks the C++ reference against.

The algorithm, per sequence (keys k_t stored before RoPE, queries given rotated):
  compression  ck_j = mean(k'_t, t in [j*s, j*s + kernel)), complete windows only; k'_t = rope(k_t, t),
               or k_t with use_nope. Tier 1: kernel 32 / stride 16; tier 2: kernel 128 / stride 64.
  stage 1      per query token (index t) and head h: s_hj = scale * <q_h, ck_j> over windows with
               j*s + kernel - 1 <= t; p_hj = exp(s_hj - LSE_h), LSE_h exact (tier 1) or from tier 2
               (the paper's approximation; exact when no tier-2 window is visible); summed over the
               heads of a GQA group; block score = max_pool1d(p, kernel 5, stride 4, padding 1).
  top-k        budget topk + window/block; init blocks and the query's own block plus window/block
               before it forced; the rest by score (ties: lower block index); never a future block;
               exactly min(max(budget, forced), available) ids, ascending, padded with -1.
  stage 2      softmax attention over the tokens of the selected blocks (causal inside the own block),
               keys rotated at their own index; output and log-sum-exp.

Usage: python3 infllmv2_oracle.py [--out DIR]   (DIR defaults to $OUT, else ./out)
Writes DIR/infllmv2_fixtures.tar.gz holding infllmv2/<case>/{meta.json, *.npy}.
"""
import argparse
import io
import json
import math
import os
import tarfile

import numpy as np
import torch
import torch.nn.functional as F

KERNEL, STRIDE, BLOCK = 32, 16, 64
ROPE_THETA = 10000.0

# GQA 4 and 16, head_dim 64 and 128, lengths 3000-9000; small windows/top-k so selection really chooses.
CASES = [
    dict(name="gqa4_d64", heads=8, kv_heads=2, head_dim=64, kv_len=3001, window_size=256, topk=8,
         init_blocks=1, use_nope=False, seed=11),
    dict(name="gqa16_d128", heads=16, kv_heads=1, head_dim=128, kv_len=4500, window_size=512, topk=16,
         init_blocks=1, use_nope=False, seed=12),
    dict(name="gqa16_d64_nope", heads=16, kv_heads=1, head_dim=64, kv_len=3300, window_size=256, topk=12,
         init_blocks=2, use_nope=True, seed=13),
    dict(name="gqa4_d64_defaults", heads=4, kv_heads=1, head_dim=64, kv_len=9000, window_size=2048, topk=64,
         init_blocks=1, use_nope=False, seed=14),
]


def rope_tables(head_dim, positions):
    """cos/sin [len(positions), head_dim/2] in float64 of float32 inverse frequencies (HF rotate_half)."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = (ROPE_THETA ** (-2.0 * i / head_dim)).astype(np.float32).astype(np.float64)
    ang = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    return torch.from_numpy(np.cos(ang)), torch.from_numpy(np.sin(ang))


def rotate(x, cos, sin):
    """x [n, heads, d] rotated per row n with cos/sin [n, d/2]."""
    h = x.shape[-1] // 2
    c, s = cos[:, None, :].to(x), sin[:, None, :].to(x)
    x0, x1 = x[..., :h], x[..., h:]
    return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)


def compress(keys, kernel, stride):
    """Mean over complete windows: keys [T, Hkv, d] -> [nc, Hkv, d]."""
    if keys.shape[0] < kernel:
        return keys.new_zeros((0,) + tuple(keys.shape[1:]))
    return keys.unfold(0, kernel, stride).mean(dim=-1)


def window_probs(q, ck1, ck2, q_index, group, scale, approx):
    """Group-summed p_j over tier-1 windows: [nq, Hkv, nc1]; invisible windows get 0."""
    nq, heads, _ = q.shape
    k1 = ck1.repeat_interleave(group, dim=1)  # [nc1, H, d]
    s1 = scale * torch.einsum("qhd,jhd->qhj", q, k1)
    vis1 = (torch.arange(ck1.shape[0], device=q.device) * STRIDE + KERNEL - 1)[None, :] <= q_index[:, None]
    s1 = s1.masked_fill(~vis1[:, None, :], -math.inf)
    lse = torch.logsumexp(s1, dim=-1)  # exact normaliser; -inf when nothing is visible
    if approx and ck2.shape[0] > 0:
        k2 = ck2.repeat_interleave(group, dim=1)
        s2 = scale * torch.einsum("qhd,jhd->qhj", q, k2)
        vis2 = (torch.arange(ck2.shape[0], device=q.device) * 4 * STRIDE + 4 * KERNEL - 1)[None, :] <= q_index[:, None]
        s2 = s2.masked_fill(~vis2[:, None, :], -math.inf)
        has2 = vis2.any(dim=-1)
        lse = torch.where(has2[:, None], torch.logsumexp(s2, dim=-1), lse)
    p = torch.exp(s1 - lse[..., None])
    p = torch.where(vis1[:, None, :], p, torch.zeros_like(p))  # also clears NaN of empty rows
    return p.view(nq, heads // group, group, -1).sum(dim=2)


def block_scores(p, num_blocks):
    """Max-pool window scores to block scores: [nq, Hkv, nc] -> [nq, Hkv, num_blocks]."""
    k = (BLOCK + KERNEL) // STRIDE - 1  # 5
    st = BLOCK // STRIDE  # 4
    pad = KERNEL // STRIDE - 1  # 1
    need = (num_blocks - 1) * st + k - 2 * pad  # input length whose pool output covers every block
    nq, hkv, nc = p.shape
    if nc < need:  # windows not computed count as probability 0
        p = torch.cat([p, p.new_zeros(nq, hkv, need - nc)], dim=-1)
    pooled = F.max_pool1d(p.reshape(nq * hkv, 1, -1), kernel_size=k, stride=st, padding=pad)
    return pooled.view(nq, hkv, -1)[..., :num_blocks]


def select(scores, q_index, init_blocks, window_size, topk):
    """Block ids [nq, Hkv, max_sel] (int32, -1 padded) and counts [nq, Hkv]."""
    nq, hkv, nb = scores.shape
    local = window_size // BLOCK
    budget = topk + local
    max_sel = max(budget, init_blocks + local + 1)
    ids = np.full((nq, hkv, max_sel), -1, dtype=np.int32)
    counts = np.zeros((nq, hkv), dtype=np.int32)
    blocks = torch.arange(nb, device=scores.device)
    for i in range(nq):
        bq = int(q_index[i]) // BLOCK
        forced = (blocks < init_blocks) | ((blocks >= bq - local) & (blocks <= bq))
        count = min(max(budget, int(forced.sum())), bq + 1)
        for g in range(hkv):
            s = scores[i, g].clone()
            s[forced] = math.inf
            s[blocks > bq] = -math.inf
            order = torch.sort(-s, stable=True).indices  # descending score, lower index first on ties
            chosen = torch.sort(order[:count]).values.cpu().numpy()
            ids[i, g, :count] = chosen
            counts[i, g] = count
    return ids, counts


def stage2(q_rot, k_rot, v, q_index, ids, group, scale):
    """Attention of each query over its selected blocks: out [nq, H, d], lse [nq, H]."""
    nq, heads, d = q_rot.shape
    out = torch.zeros_like(q_rot)
    lse = torch.full((nq, heads), -math.inf, dtype=q_rot.dtype, device=q_rot.device)
    for i in range(nq):
        t = int(q_index[i])
        for g in range(ids.shape[1]):
            sel = [int(b) for b in ids[i, g] if b >= 0]
            if not sel:
                continue
            tok = torch.cat([torch.arange(b * BLOCK, min((b + 1) * BLOCK, t + 1)) for b in sel]).to(q_rot.device)
            hs = slice(g * group, (g + 1) * group)
            s = scale * torch.einsum("hd,nd->hn", q_rot[i, hs], k_rot[tok, g])
            out[i, hs] = torch.softmax(s, dim=-1) @ v[tok, g]
            lse[i, hs] = torch.logsumexp(s, dim=-1)
    return out, lse


def make_case(c, device):
    gen = torch.Generator().manual_seed(c["seed"])
    T, H, Hkv, d = c["kv_len"], c["heads"], c["kv_heads"], c["head_dim"]
    group = H // Hkv

    def bf16_normal(*shape, std=1.0):  # bf16-representable values: realistic, and they compress well
        return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16).to(torch.float32)

    nb = (T + BLOCK - 1) // BLOCK
    offsets = bf16_normal(nb, Hkv, d, std=0.6).repeat_interleave(BLOCK, dim=0)[:T]  # blocks differ
    k = (bf16_normal(T, Hkv, d) + offsets).to(torch.bfloat16).to(torch.float32)
    v = bf16_normal(T, Hkv, d)
    ends = list(range(T - 16, T))  # a prefill chunk at the end (decode token last)
    rand = torch.randint(0, T - 16, (20,), generator=gen).tolist()
    q_index = np.array(sorted(set([0, 17, 31, 40, 127, 130, 700] + rand)) + ends, dtype=np.int64)
    nq = len(q_index)
    q_nope = bf16_normal(nq, H, d, std=1.5)

    dev = torch.device(device)
    f64 = lambda x: x.to(dev, torch.float64)
    cos, sin = rope_tables(d, np.arange(T))
    k_rot = rotate(f64(k), f64(cos), f64(sin))
    qc, qs = rope_tables(d, q_index)
    q_rot = rotate(f64(q_nope), f64(qc), f64(qs)).to(torch.float32).to(torch.float64)  # saved as f32
    qi = torch.from_numpy(q_index).to(dev)
    scale = 1.0 / math.sqrt(d)

    k_s1 = f64(k) if c["use_nope"] else k_rot
    q_s1 = f64(q_nope) if c["use_nope"] else q_rot
    ck1 = compress(k_s1, KERNEL, STRIDE)
    ck2 = compress(k_s1, 4 * KERNEL, 4 * STRIDE)
    res = {}
    for mode in ("exact", "approx"):
        p = window_probs(q_s1, ck1, ck2, qi, group, scale, approx=(mode == "approx"))
        sc = block_scores(p, nb)
        ids, counts = select(sc, q_index, c["init_blocks"], c["window_size"], c["topk"])
        res[mode] = (sc, ids, counts)
    out, lse = stage2(q_rot, k_rot, f64(v), q_index, res["approx"][1], group, scale)

    f32 = lambda x: x.detach().to("cpu", torch.float32).numpy()
    arrays = {
        "k": k.numpy(), "v": v.numpy(), "q": f32(q_rot), "q_nope": q_nope.numpy(), "q_index": q_index,
        "scores_exact": f32(res["exact"][0]), "ids_exact": res["exact"][1], "count_exact": res["exact"][2],
        "scores_approx": f32(res["approx"][0]), "ids_approx": res["approx"][1], "count_approx": res["approx"][2],
        "out": f32(out), "lse": f32(lse),
    }
    meta = dict(c, kernel_size=KERNEL, kernel_stride=STRIDE, block_size=BLOCK, rope_theta=ROPE_THETA,
                softmax_scale=scale, num_q=nq, stage2_selection="approx", torch=torch.__version__,
                device=str(dev), dtype="float64 compute, float32 fixtures")
    return meta, arrays


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a))
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "infllmv2_fixtures.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for c in CASES:
            meta, arrays = make_case(c, args.device)
            files = {"meta.json": json.dumps(meta, indent=1).encode()}
            files.update({f"{n}.npy": npy_bytes(a) for n, a in arrays.items()})
            for name, data in files.items():
                info = tarfile.TarInfo(f"infllmv2/{c['name']}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            sel = arrays["ids_approx"]
            agree = np.mean([set(a[a >= 0]) == set(b[b >= 0]) for a, b in
                             zip(sel.reshape(-1, sel.shape[-1]), arrays["ids_exact"].reshape(-1, sel.shape[-1]))])
            print(f"{c['name']}: {meta['num_q']} queries, {arrays['k'].shape[0]} tokens, rows where approx == exact "
                  f"selection: {agree:.2f}", flush=True)
    print(f"wrote {path}: {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
