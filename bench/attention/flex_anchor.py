#!/usr/bin/env python3
"""FlexAttention anchor for mnemo's sparse prefill: the same selected blocks, torch's kernel.

  flex_anchor.py --ids DIR --lens 32768,131072 --json flex.json
  flex_anchor.py table --sparse sparse.json --flex flex.json     (the sparse table run.sh prints)

Reads the selections sparse_attention_bench dumped (DIR/ids_<len>.bin: int32 [len, 2 kv heads, 96],
ascending, -1 padded) and times torch.nn.attention.flex_attention (torch.compile'd) on random
MiniCPM4-8B-shaped bf16 Q [1, 32, len, 128] and contiguous, pre-rotated K/V [1, 2, len, 128]
(enable_gqa) with a BlockMask built from them: per 64-query block the union of its queries' selected
64-token KV blocks (BlockMask.from_kv_blocks, all partial), and a mask_mod that keeps exactly each
token's own selection and the causal bound. So Flex does the same attention as mnemo's stage 2 and is
given the block structure for free (no stage 1 or top-k). L2 flushed before each repetition; medians.
"""
import argparse
import json
import os
import time

H, HKV, D, BT, TOPK_ROW = 32, 2, 128, 64, 96


def table(sparse_path, flex_path):
    def load(p):
        return json.load(open(p)) if p and os.path.exists(p) else {}

    s, f = load(sparse_path), load(flex_path)
    flex = {e["len"]: e for e in f.get("prefill", [])}
    print()
    print(f"== mnemo CUDA InfLLM-V2 sparse attention on {s.get('device', '?')} (MiniCPM4-8B, topk 64, window 2048) ==")
    rows = [("op", "stage 1", "top-k", "stage 2", "total (graph)", "mnemo dense", "flex (same blocks)", "check")]
    for d in s.get("sparse_decode", []):
        c = d["check"]
        rows.append((f"decode {d['kv_len'] // 1024}K", f"{d['stage1_us']:.1f} us", f"{d['topk_us']:.1f} us",
                     f"{d['stage2_us']:.1f} us", f"{d['total_us']:.1f} us ({d.get('total_graph_us', -1):.1f})",
                     f"{d['dense_us']:.1f} us", "-",
                     f"sel {c['selection_rows_identical']}/{c['rows']}, out rel L2 {c['out_rel_l2_err']:.2g}"))
    for p in s.get("sparse_prefill", []):
        c = p["check"]
        fe = flex.get(p["len"], {})
        fl = f"{fe['ms']:.2f} ms" if "ms" in fe else ("n/a" if fe else "-")
        rows.append((f"prefill {p['len'] // 1024}K", f"{p['stage1_ms']:.2f} ms", f"{p['topk_ms']:.2f} ms",
                     f"{p['stage2_ms']:.2f} ms", f"{p['total_ms']:.2f} ms", f"{p['dense_ms']:.1f} ms", fl,
                     f"sel {c['selection_rows_identical']}/{c['rows']}, out rel L2 {c['out_rel_l2_err']:.2g}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    print("  targets: prefill 128K total <= 25 ms; decode 1M total <= 40 us")


def main():
    import sys
    if len(sys.argv) > 1 and sys.argv[1] == "table":
        tp = argparse.ArgumentParser()
        tp.add_argument("cmd")
        tp.add_argument("--sparse")
        tp.add_argument("--flex")
        a = tp.parse_args()
        table(a.sparse, a.flex)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--lens", default="32768,131072")
    ap.add_argument("--json", required=True)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import torch
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    flex = torch.compile(flex_attention, dynamic=False)
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "prefill": []}

    def median_ms(fn, reps):
        times = []
        for i in range(reps):
            flush.fill_(i & 0xFF)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        times.sort()
        return times[len(times) // 2]

    for length in [int(x) for x in args.lens.split(",")]:
        entry = {"len": length}
        path = os.path.join(args.ids, f"ids_{length}.bin")
        try:
            nb = (length + BT - 1) // BT
            ids = torch.from_numpy(np.fromfile(path, dtype=np.int32).reshape(length, HKV, TOPK_ROW)).to(dev)
            valid = ids >= 0
            sel = torch.zeros(length, HKV, nb, dtype=torch.uint8, device=dev)
            sel.scatter_add_(2, ids.clamp(min=0).long(), valid.to(torch.uint8))
            sel = sel > 0  # [len, 2, nb]: token q of kv head g selected block b
            union = sel.view(length // BT, BT, HKV, nb).any(1)  # [q blocks, 2, nb]
            num = union.sum(-1, dtype=torch.int32)  # [q blocks, 2]
            order = torch.argsort(union.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
            head_kv = torch.arange(H, device=dev) // (H // HKV)
            kv_num_blocks = num.t()[head_kv].unsqueeze(0).contiguous()  # [1, 32, q blocks]
            kv_indices = order.permute(1, 0, 2)[head_kv].unsqueeze(0).contiguous()  # [1, 32, q blocks, nb]
            entry["mean_union_blocks_per_64_queries"] = float(num.float().mean())

            def mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx <= q_idx) & sel[q_idx, h // (H // HKV), kv_idx // BT]

            bm = BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, BLOCK_SIZE=BT, mask_mod=mask_mod)
            q = torch.randn(1, H, length, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(1, HKV, length, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(1, HKV, length, D, device=dev, dtype=torch.bfloat16)
            t0 = time.time()
            last_err = None
            for opts in ({"BLOCK_M": 64, "BLOCK_N": 64}, None):
                try:
                    fn = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=opts)  # noqa: E731
                    fn()
                    torch.cuda.synchronize()
                    entry["kernel_options"] = opts
                    break
                except Exception as e:  # noqa: BLE001
                    last_err = e
                    fn = None
            if fn is None:
                raise last_err
            entry["compile_s"] = time.time() - t0
            entry["ms"] = median_ms(fn, args.reps)
            print(f"flex sparse prefill {length // 1024}K (same selections): {entry['ms']:.2f} ms "
                  f"(union {entry['mean_union_blocks_per_64_queries']:.1f} blocks per 64 queries, "
                  f"compile {entry['compile_s']:.0f} s)", flush=True)
            del q, k, v, bm, sel, ids
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            entry["error"] = (str(e).strip().splitlines() or ["?"])[0][:300]
            print(f"flex sparse prefill {length // 1024}K: {entry['error']}", flush=True)
        res["prefill"].append(entry)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
