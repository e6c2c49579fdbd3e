#!/usr/bin/env python3
"""Print the markdown tables for models/tiny/README.md from train_log.json.
Usage: python3 tools/train/report.py [models/tiny/train_log.json]"""
import json
import sys


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "models/tiny/train_log.json"
    t = json.load(open(path))
    tr = t.get("train", {})
    print(f"Parameters: {t['params']:,}. Device: {t.get('device')}. Versions: {t.get('versions')}.")
    print(f"Trained {tr.get('steps')} steps, {tr.get('tokens', 0) / 1e6:.1f}M tokens in "
          f"{tr.get('seconds')} s ({tr.get('tokens_per_s', 0) / 1e3:.0f}K tokens/s), "
          f"batch {tr.get('batch')} x {tr.get('seq')}.")
    if "final_val_loss_fp32" in t:
        print(f"Final validation loss (saved checkpoint, fp32): {t['final_val_loss_fp32']:.3f}")
    print()
    print("| step | seconds | tokens (M) | train loss | val loss | passkey probe L1 | L2 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in t["curve"]:
        print(f"| {r['step']} | {r['seconds']} | {r['tokens'] / 1e6:.1f} | "
              f"{r['train_loss']:.3f} | {r['val_loss']:.3f} | "
              f"{r.get('probe_passkey_L1', float('nan')):.2f} | "
              f"{r.get('probe_passkey_L2', float('nan')):.2f} |")
    print()
    print("| task | filler | length | samples | mean prompt tokens | greedy accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in t["eval"]:
        if "error" in r:
            print(f"| {r['task']} | {r.get('filler')} | {r['length']} | - | - | error |")
            continue
        print(f"| {r['task']} | {r['filler']} | {r['length']} | {r['n']} | "
              f"{r['mean_prompt_tokens']:.0f} | {100 * r['accuracy']:.1f}% |")
    if "fixture" in t:
        print()
        print("Fixture:", json.dumps(t["fixture"]))


if __name__ == "__main__":
    main()
