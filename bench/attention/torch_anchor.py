#!/usr/bin/env python3
"""Torch anchors for bench/attention and the summary table (both run by bench/attention/run.sh).

  torch_anchor.py anchors --json torch.json
      torch SDPA on MiniCPM4-8B shapes (32 query heads, 2 kv heads, head_dim 128, bf16, contiguous
      pre-rotated K/V): decode at 32K and 128K keys, causal prefill at 32K, for the flash, cuDNN
      and efficient backends; GQA through enable_gqa, else K/V expanded to 32 heads (marked). Also
      torch's own copy and GEMM ceilings. L2 flushed before every repetition; medians of events.
  torch_anchor.py table --mnemo mnemo.json --torch torch.json --status status.txt --out summary.json
      prints the short table (last thing run.sh prints) and writes everything into summary.json.
"""
import argparse
import json
import os

H, HKV, D = 32, 2, 128


def cmd_anchors(args):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)

    def median_ms(fn, reps, do_flush=True):
        times = []
        for i in range(reps):
            if do_flush:
                flush.fill_(i & 0xFF)
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        times.sort()
        return times[len(times) // 2]

    res = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name()}
    n = 1 << 30
    src = torch.ones(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    res["copy_gbps"] = 2 * n / median_ms(lambda: dst.copy_(src), 20, False) / 1e6
    del src, dst
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    res["gemm_bf16_tflops"] = 2 * 8192**3 / median_ms(lambda: a @ b, 20, False) / 1e9
    del a, b
    print(f"torch ceilings: copy {res['copy_gbps']:.0f} GB/s, bf16 GEMM {res['gemm_bf16_tflops']:.0f} TFLOP/s")

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }

    def case(name, kv_len, num_q, causal, reps):
        q = torch.randn(1, H, num_q, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, kv_len, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HKV, kv_len, D, device=dev, dtype=torch.bfloat16)
        out = {}
        for bname, backend in backends.items():
            entry = None
            for mode in ("gqa", "expanded"):
                if mode == "gqa":
                    kk, vv, kw = k, v, {"enable_gqa": True}
                else:
                    kk, vv, kw = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1), {}
                fn = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, **kw)  # noqa: E731
                try:
                    with sdpa_kernel([backend]):
                        fn()
                        torch.cuda.synchronize()
                        entry = {"ms": median_ms(fn, reps), "mode": mode}
                    break
                except Exception as e:  # a backend that refuses the shape or GQA
                    entry = {"error": (str(e).strip().splitlines() or ["?"])[0][:200]}
                finally:
                    del kk, vv
            out[bname] = entry
            shown = f"{entry['ms']:.4f} ms ({entry['mode']})" if "ms" in entry else entry["error"]
            print(f"torch {name} {bname}: {shown}")
        return out

    res["decode_32k"] = case("decode_32k", 32768, 1, False, 50)
    res["decode_128k"] = case("decode_128k", 131072, 1, False, 50)
    res["prefill_32k"] = case("prefill_32k", 32768, 32768, True, 5)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)


def load(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def cmd_table(args):
    m, t = load(args.mnemo), load(args.torch)
    status = open(args.status).read().strip().splitlines() if args.status and os.path.exists(args.status) else []
    ceil = m.get("ceilings", {})

    def torch_ms(key, backend):
        e = t.get(key, {}).get(backend)
        if not e:
            return "-"
        if "ms" not in e:
            return "n/a"
        return f"{e['ms'] * 1e3:.1f} us" if key.startswith("decode") else f"{e['ms']:.2f} ms"

    rows = []
    for d in m.get("decode", []):
        key = f"decode_{d['kv_len'] // 1024}k"
        label = f"decode {d['kv_len'] // 1024}K" + ("" if d["rope_table"] else " (no rope)")
        rows.append((label, f"{d['median_us']:.1f} us", f"{d['gbps']:.0f} GB/s", f"{d['floor_us']:.1f} us",
                     torch_ms(key, "flash"), torch_ms(key, "cudnn"), torch_ms(key, "efficient")))
    for p in m.get("prefill", []):
        label = f"prefill {p['len'] // 1024}K causal" + ("" if p.get("rope_table", True) else " (no rope)")
        rows.append((label, f"{p['median_ms']:.2f} ms", f"{p['tflops']:.0f} TFLOP/s",
                     f"{p['floor_ms']:.2f} ms", torch_ms("prefill_32k", "flash"), torch_ms("prefill_32k", "cudnn"),
                     torch_ms("prefill_32k", "efficient")))
    head = ("op (MiniCPM4-8B: 32q/2kv x 128, bf16)", "mnemo", "rate", "floor", "torch flash", "torch cudnn",
            "torch effic.")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print()
    print(f"== mnemo CUDA dense attention on {m.get('device', t.get('device', '?'))} ==")
    for s in status:
        print("  " + s)
    for name, key in (("decode", "decode"), ("prefill", "prefill")):
        for r in m.get(key, []):
            c = r.get("check")
            if c:
                print(f"  {name} {r.get('kv_len', r.get('len'))} vs CPU op: max abs err {c['max_abs_err']:.3g}, "
                      f"rel L2 {c['rel_l2_err']:.3g}, finite {c['finite']}")
    print(f"  ceilings: copy {ceil.get('copy_gbps', 0):.0f} GB/s (torch {t.get('copy_gbps', 0):.0f}), "
          f"bf16 GEMM {ceil.get('gemm_bf16_tflops', 0):.0f} TFLOP/s (torch {t.get('gemm_bf16_tflops', 0):.0f})")
    for r in [head] + rows:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    with open(args.out, "w") as f:
        json.dump({"mnemo": m, "torch": t, "status": status}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("anchors")
    a.add_argument("--json", required=True)
    tb = sub.add_parser("table")
    tb.add_argument("--mnemo")
    tb.add_argument("--torch")
    tb.add_argument("--status")
    tb.add_argument("--out", required=True)
    args = ap.parse_args()
    cmd_anchors(args) if args.cmd == "anchors" else cmd_table(args)


if __name__ == "__main__":
    main()
