#!/usr/bin/env python3
"""Reference sentencepiece encodings of models/tiny/tokenizer.model for mnemo's tokenizer tests.

Writes models/tiny/tokenizer_reference.json: for each text, the ids (no BOS/EOS added) and
pieces from sentencepiece's own encoder, and the decoded text.
Usage: python3 tools/train/make_tokenizer_fixture.py [--model models/tiny/tokenizer.model]
"""
import argparse
import json
import os

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "The pass key is 48213. Remember it. 48213 is the pass key.",
    "What is the pass key? The pass key is",
    "libfoo-dev: development files for the foo library (version 1.2.3-4+b1).",
    "def f(x):\n    return x ** 2\t# tab",
    "  leading spaces, double  spaces and trailing space ",
    "caf\u00e9 na\u00efve \u00fcber \u00c5ngstr\u00f6m \u4e2d\u6587 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \U0001F600",
    "",
    " ",
    "<s> </s> <unk> are plain text here",
    "1234567890 3.14159 -42 1e-5 0x1F",
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(root, "models", "tiny", "tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(root, "models", "tiny",
                                                  "tokenizer_reference.json"))
    args = ap.parse_args()
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.model)
    cases = []
    for t in TEXTS:
        ids = sp.encode(t)
        cases.append({"text": t, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids],
                      "decoded": sp.decode(ids)})
    ref = {"tokenizer": "models/tiny/tokenizer.model", "sentencepiece": spm.__version__,
           "vocab_size": sp.get_piece_size(), "unk_id": sp.unk_id(), "bos_id": sp.bos_id(),
           "eos_id": sp.eos_id(), "pad_id": sp.pad_id(),
           "note": "ids exclude BOS; the model's prompts are [bos_id] + ids",
           "cases": cases}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(ref, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(args.out, len(cases), "cases")


if __name__ == "__main__":
    main()
