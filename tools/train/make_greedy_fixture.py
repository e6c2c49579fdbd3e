#!/usr/bin/env python3
"""Reference outputs of transformers (or, where it is absent, ref_llama) for mnemo's C++ tests.

Writes reference.json (prompt texts, prompt ids with BOS, greedy continuations of 32 tokens)
and reference_logits.npy (float32 [T, vocab], logits of every position of one ~100-token
prompt). The checkpoint is loaded in float32 on the CPU; greedy = argmax at every step with a
full recompute (no KV cache, EOS does not stop it), cross-checked against model.generate.
Usage: python3 tools/train/make_greedy_fixture.py --model models/tiny --out models/tiny
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import BOS, EOS, Tok, passkey_prompt  # noqa: E402

N_NEW = 32
GREEDY_PROMPTS = [
    "In the beginning God created the heaven and the earth. And the earth was without form,",
    "libfoo-dev: development files for the foo library. This package contains the header files",
    None,  # a short passkey prompt, built below
]
PASSKEY_FIXTURE = dict(target_len=256, depth=0.5, key=48213)
LOGITS_PROMPT = (
    "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: "
    "he leadeth me beside the still waters. He restoreth my soul: he leadeth me in the paths "
    "of righteousness for his name's sake. Yea, though I walk through the valley of the shadow "
    "of death, I will fear no evil: for thou art with me; thy rod and thy staff they comfort me.")


def prompts(tok):
    out = []
    for p in GREEDY_PROMPTS:
        if p is None:
            p, _ = passkey_prompt(tok, PASSKEY_FIXTURE["target_len"], PASSKEY_FIXTURE["depth"],
                                  PASSKEY_FIXTURE["key"])
        out.append(p)
    return out


def greedy_full(model, ids, n_new):
    import torch
    seq = list(ids)
    margins = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(torch.argmax(logits)))
    return seq[len(ids):], margins


def make_fixture(model, tok, out_dir, model_desc="models/tiny", backend_name="transformers",
                 backend_version=None):
    import torch
    model = model.to("cpu").float().eval()
    recs = []
    for text in prompts(tok):
        ids = [BOS] + tok.enc(text)
        gen, margins = greedy_full(model, ids, N_NEW)
        with torch.no_grad():
            hf = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=N_NEW,
                                do_sample=False, num_beams=1, pad_token_id=EOS)[0, len(ids):]
        hf = hf.tolist()
        recs.append({"text": text, "ids": ids, "greedy_ids": gen, "greedy_text": tok.dec(gen),
                     "min_top2_logit_margin": min(margins),
                     "hf_generate_ids": hf,
                     "hf_generate_agrees": hf == gen[:len(hf)]})
    lids = [BOS] + tok.enc(LOGITS_PROMPT)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([lids])).logits[0].float().numpy()
    np.save(os.path.join(out_dir, "reference_logits.npy"), logits.astype(np.float32))
    ref = {
        "model": model_desc,
        "how": f"{backend_name} LlamaForCausalLM, checkpoint loaded with dtype=torch.float32, "
               "CPU, no KV cache; greedy = argmax each step (EOS does not stop), "
               "full recompute per step",
        "backend": backend_name, "backend_version": backend_version,
        "torch": torch.__version__,
        "bos_id": BOS, "eos_id": EOS, "n_new": N_NEW,
        "greedy": recs,
        "logits": {"text": LOGITS_PROMPT, "ids": lids, "file": "reference_logits.npy",
                   "shape": list(logits.shape), "dtype": "float32",
                   "argmax": logits.argmax(-1).tolist()},
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
    return ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny")
    ap.add_argument("--out", default="models/tiny")
    ap.add_argument("--backend", default="auto", choices=["auto", "hf", "plain"])
    args = ap.parse_args()
    import torch
    from eval_passkey import backend_module
    be = backend_module(args.backend)
    tok = Tok(os.path.join(args.model, "tokenizer.model"))
    model = be.LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    name = "transformers" if be.__name__ == "transformers" else "ref_llama"
    ref = make_fixture(model, tok, args.out, backend_name=name, backend_version=be.__version__)
    for r in ref["greedy"]:
        print(repr(r["greedy_text"]), r["hf_generate_agrees"])


if __name__ == "__main__":
    main()
