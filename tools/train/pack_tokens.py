#!/usr/bin/env python3
"""Pack spm_encode id output (one document per line) into uint16 token streams (stdlib only).

Every document becomes BOS(1) + ids + EOS(2). Every 100th document (by line index) is held out
for validation. Writes train.bin / val.bin (little-endian uint16) and tokens_meta.json.
"""
import argparse
import array
import hashlib
import json
import os
import sys

BOS, EOS = 1, 2
VAL_EVERY = 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ids", help="spm_encode --output_format=id output")
    ap.add_argument("outdir")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    train, val = array.array("H"), array.array("H")
    ndoc = [0, 0]
    with open(args.ids) as fh:
        for i, line in enumerate(fh):
            ids = [int(x) for x in line.split()]
            if not ids:
                continue
            dst = val if i % VAL_EVERY == 0 else train
            ndoc[dst is val] += 1
            dst.append(BOS)
            dst.extend(ids)
            dst.append(EOS)
    if sys.byteorder != "little":
        train.byteswap()
        val.byteswap()
    meta = {"dtype": "uint16", "bos": BOS, "eos": EOS, "val_every": VAL_EVERY,
            "train_tokens": len(train), "val_tokens": len(val),
            "train_docs": ndoc[0], "val_docs": ndoc[1]}
    for name, arr in (("train.bin", train), ("val.bin", val)):
        b = arr.tobytes()
        with open(os.path.join(args.outdir, name), "wb") as fh:
            fh.write(b)
        meta[name + ".sha256"] = hashlib.sha256(b).hexdigest()
    with open(os.path.join(args.outdir, "tokens_meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
