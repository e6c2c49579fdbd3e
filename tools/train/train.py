#!/usr/bin/env python3
"""Train models/tiny: a ~12.6M-parameter LlamaForCausalLM on the Debian-package corpus plus
synthetic retrieval tasks, within a wall-clock budget, then save (bf16 safetensors), reload in
float32, evaluate passkey retrieval and write the C++ reference fixtures.

Run on a GPU machine from the repository root (see models/tiny/README.md):
  PYTHONUNBUFFERED=1 python3 tools/train/train.py --out OUTDIR --train-seconds 440
Inputs: tools/train/data/tok/{train,val}.bin (bash tools/train/build_corpus.sh),
        models/tiny/tokenizer.model, models/tiny/tokenizer_config.json.
Outputs in OUTDIR: config.json, generation_config.json, model.safetensors, train_log.json,
        reference.json, reference_logits.npy.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

T_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from tasks import BOS, EOS, Corpus, TaskMaker, Tok, passkey_prompt  # noqa: E402
import eval_passkey  # noqa: E402
import make_greedy_fixture  # noqa: E402

MODEL = dict(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
             num_attention_heads=6, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu",
             initializer_range=0.02, tie_word_embeddings=False, attention_bias=False,
             mlp_bias=False, bos_token_id=BOS, eos_token_id=EOS)
ROPE_THETA = 10000.0


def amp(dev, enabled=True):
    if dev == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def log(*a):
    print(f"[{time.time() - T_START:7.1f}s]", *a, flush=True)


def build_model(be):
    LlamaConfig, LlamaForCausalLM = be.LlamaConfig, be.LlamaForCausalLM
    cfg = LlamaConfig(**MODEL)
    # transformers 5 keeps RoPE settings in rope_parameters; older versions in rope_theta
    if hasattr(cfg, "rope_parameters") and isinstance(getattr(cfg, "rope_parameters"), dict):
        cfg.rope_parameters = dict(cfg.rope_parameters, rope_type="default",
                                   rope_theta=ROPE_THETA)
    else:
        cfg.rope_theta = ROPE_THETA
    try:
        cfg._attn_implementation = "sdpa"
    except Exception:
        pass
    model = LlamaForCausalLM(cfg)
    return cfg, model


class Batcher:
    """Background thread producing (x, y, w) batches. A row is either plain corpus text
    (starting at a document's BOS) or one synthetic retrieval example (starting at position 0,
    ending with EOS) followed by corpus text up to the row length."""

    def __init__(self, tm, corpus, batch, seq, seed, synth_frac=0.5, passkey_frac=0.6):
        self.tm, self.corpus, self.B, self.T = tm, corpus, batch, seq
        self.rng = np.random.default_rng(seed)
        self.synth_frac, self.passkey_frac = synth_frac, passkey_frac
        self.progress = 0.0
        self.q = queue.Queue(maxsize=6)
        self.stop = False
        self.n_synth = 0
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def synth_len(self):
        # curriculum: the longest synthetic example grows from 512 to the full row over the
        # first 25% of the run; a third of the examples sit near the current maximum
        mx = int(512 + (self.T - 512) * min(1.0, self.progress / 0.25))
        if self.rng.random() < 0.35:
            return int(self.rng.integers(int(0.75 * mx), mx + 1))
        return int(self.rng.integers(96, mx + 1))

    def make(self):
        B, T, rng = self.B, self.T, self.rng
        X = np.empty((B, T + 1), dtype=np.int64)
        W = np.ones((B, T + 1), dtype=np.float32)
        for b in range(B):
            if rng.random() < self.synth_frac:
                L = self.synth_len() - 1  # room for the EOS
                kind = "repeat" if rng.random() < 0.5 else "corpus"
                if rng.random() < self.passkey_frac:
                    ids, w = self.tm.passkey(L, rng, kind)
                else:
                    ids, w = self.tm.multikey(L, rng, kind)
                ids = np.append(ids, EOS)[:T + 1]
                w = np.append(w, 1.0)[:T + 1]
                n = len(ids)
                X[b, :n] = ids
                W[b, :n] = w
                if n < T + 1:
                    X[b, n:] = self.corpus.lm_chunk(T + 1 - n, rng)
                self.n_synth += 1
            else:
                X[b] = self.corpus.lm_chunk(T + 1, rng)
        x = torch.from_numpy(X[:, :-1].copy())
        y = torch.from_numpy(X[:, 1:].copy())
        w = torch.from_numpy(W[:, 1:].copy())
        w[y == BOS] = 0.0  # never train to predict a document start
        if torch.cuda.is_available():
            x, y, w = x.pin_memory(), y.pin_memory(), w.pin_memory()
        return x, y, w

    def run(self):
        while not self.stop:
            item = self.make()
            while not self.stop:
                try:
                    self.q.put(item, timeout=0.5)
                    break
                except queue.Full:
                    pass

    def get(self):
        return self.q.get()


def lr_at(p, peak, warm=0.03, final=0.05):
    if p < warm:
        return peak * max(p / warm, 0.02)
    p = min(1.0, (p - warm) / (1 - warm))
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def val_loss(model, xs, dev, autocast=True):
    tot, n = 0.0, 0
    for x in xs:
        x = x.to(dev)
        with amp(dev, autocast):
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
        y = x[:, 1:]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                             reduction="none")
        m = (y.reshape(-1) != BOS).float()
        tot += float((ce * m).sum())
        n += float(m.sum())
    return tot / n


@torch.no_grad()
def probe_passkey(model, tok, length, n, dev, seed=99):
    """Teacher-forced check on the live model: all 6 answer tokens (' ' + 5 digits) argmax."""
    rng = np.random.default_rng(seed + length)
    seqs, starts = [], []
    for i in range(n):
        key = int(rng.integers(10000, 100000))
        _, ids = passkey_prompt(tok, length, i / max(1, n - 1), key)
        ans = tok.enc(f"{key}.")[:-1]
        seqs.append(ids + ans)
        starts.append(len(ids))
    L = max(len(s) for s in seqs)
    x = torch.full((n, L), EOS, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
    x = x.to(dev)
    with amp(dev):
        logits = model(input_ids=x, use_cache=False).logits
    pred = logits.argmax(-1)
    ok = 0
    for i, s in enumerate(seqs):
        a0 = starts[i]
        ok += bool((pred[i, a0 - 1:len(s) - 1] == x[i, a0:len(s)]).all())
    return ok / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data", "tok"))
    ap.add_argument("--tokenizer-dir", default=os.path.join(ROOT, "models", "tiny"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seconds", type=float, default=440)
    ap.add_argument("--deadline", type=float, default=575,
                    help="seconds after start after which optional evaluations are skipped")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--answer-weight", type=float, default=8.0)
    ap.add_argument("--eval-every", type=float, default=45.0, help="seconds")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--smoke", action="store_true", help="few steps, tiny evaluations")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--backend", default="auto", choices=["auto", "hf", "plain"],
                    help="hf = transformers (the reference); plain = tools/train/ref_llama.py")
    ap.add_argument("--eval-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                    help="the first two are in-distribution (also probed during training)")
    args = ap.parse_args()
    if args.smoke:
        args.train_seconds = min(args.train_seconds, 20)
        args.eval_every = 8
    os.makedirs(args.out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    be = eval_passkey.backend_module(args.backend)
    be_name = "transformers" if be.__name__ == "transformers" else "ref_llama"
    tlog = {"args": vars(args), "versions": {"torch": torch.__version__,
                                             "backend": be_name,
                                             be_name: be.__version__,
                                             "python": sys.version.split()[0]},
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            "curve": [], "eval": []}
    log_path = os.path.join(args.out, "train_log.json")

    def save_log():
        with open(log_path, "w") as fh:
            json.dump(tlog, fh, indent=1)

    tok_file = os.path.join(args.tokenizer_dir, "tokenizer.model")
    tok = Tok(tok_file)
    corpus = Corpus(args.data)
    tm = TaskMaker(tok, corpus, answer_weight=args.answer_weight)
    tlog["data"] = {"train_tokens": int(len(corpus.train)), "val_tokens": int(len(corpus.val))}
    log("data", tlog["data"])

    cfg, model = build_model(be)
    model.to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    tlog["params"] = int(nparams)
    tlog["model_config"] = MODEL | {"rope_theta": ROPE_THETA}
    log(f"model: {nparams:,} parameters; rope: {getattr(cfg, 'rope_parameters', None)}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if dev == "cuda" else {}))

    def loss_fn(x, y, w):
        logits = model(input_ids=x, use_cache=False).logits
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                             reduction="none")
        wf = w.reshape(-1)
        return (ce * wf).sum() / wf.sum(), (ce * (wf > 0)).sum() / (wf > 0).sum()

    step_fn = torch.compile(loss_fn) if args.compile else loss_fn

    vrng = np.random.default_rng(4321)
    vx = torch.from_numpy(np.stack([corpus.lm_chunk(args.seq + 1, vrng, split="val")
                                    for _ in range(16)]).astype(np.int64))
    val_batches = list(vx.split(8))

    L1, L2 = args.eval_lengths[0], args.eval_lengths[1]
    batcher = Batcher(tm, corpus, args.batch, args.seq, args.seed)
    log("training for", args.train_seconds, "s")
    t0 = time.time()
    step, tokens = 0, 0
    acc_loss, acc_plain, acc_n = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
    next_eval = args.eval_every
    wait_s = 0.0
    model.train()
    while True:
        el = time.time() - t0
        p = el / args.train_seconds
        batcher.progress = p
        done = p >= 1.0 or (args.max_steps and step >= args.max_steps)
        if el >= next_eval or done:
            model.eval()
            vl = val_loss(model, val_batches, dev)
            pk = {L: probe_passkey(model, tok, L, 32 if not args.smoke else 4, dev)
                  for L in (L1, L2)}
            model.train()
            rec = {"step": step, "seconds": round(el, 1), "tokens": tokens,
                   "lr": lr_at(min(p, 1.0), args.lr),
                   "train_loss_weighted": float(acc_loss) / max(1, acc_n),
                   "train_loss": float(acc_plain) / max(1, acc_n),
                   "val_loss": vl, "probe_passkey_L1": pk[L1], "probe_passkey_L2": pk[L2],
                   "batcher_wait_s": round(wait_s, 1)}
            tlog["curve"].append(rec)
            save_log()
            log(f"step {step} tok {tokens / 1e6:.1f}M train {rec['train_loss']:.3f} "
                f"(w {rec['train_loss_weighted']:.3f}) val {vl:.3f} "
                f"pk@{L1} {pk[L1]:.2f} pk@{L2} {pk[L2]:.2f} lr {rec['lr']:.2e} wait {wait_s:.1f}s")
            acc_loss.zero_()
            acc_plain.zero_()
            acc_n = 0
            next_eval = el + args.eval_every
        if done:
            break
        lr = lr_at(p, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        tw = time.time()
        x, y, w = batcher.get()
        wait_s += time.time() - tw
        x, y, w = (t.to(dev, non_blocking=True) for t in (x, y, w))
        with amp(dev):
            loss, plain = step_fn(x, y, w)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        acc_loss += loss.detach()
        acc_plain += plain.detach()
        acc_n += 1
        step += 1
        tokens += x.numel()
        if step == 1:
            log(f"first step done, loss {float(loss):.3f}")
    batcher.stop = True
    train_s = time.time() - t0
    tlog["train"] = {"steps": step, "tokens": tokens, "seconds": round(train_s, 1),
                     "tokens_per_s": round(tokens / train_s), "synthetic_rows": batcher.n_synth,
                     "batch": args.batch, "seq": args.seq}
    log("trained", tlog["train"])
    save_log()

    # ------------------------------------------------------------ save a bf16 copy
    ck = tempfile.mkdtemp(prefix="tiny_ck_")
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    try:
        m16.save_pretrained(ck, safe_serialization=True)
    except TypeError:
        m16.save_pretrained(ck)
    del m16
    cfg_path = os.path.join(ck, "config.json")
    orig_cfg = open(cfg_path).read()
    cj = json.loads(orig_cfg)
    if "rope_theta" not in cj:  # also give older/simple loaders the plain key
        cj["rope_theta"] = ROPE_THETA
        with open(cfg_path, "w") as fh:
            json.dump(cj, fh, indent=2, sort_keys=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        src = os.path.join(args.tokenizer_dir, f)
        if os.path.exists(src):
            shutil.copy(src, ck)
    log("saved", sorted(os.listdir(ck)))

    # ------------------------------------------------------------ reload in float32
    LlamaForCausalLM = be.LlamaForCausalLM
    try:
        mr = LlamaForCausalLM.from_pretrained(ck, dtype=torch.float32)
    except Exception as e:  # keep the config transformers wrote if our extra key upsets it
        log("reload with rope_theta key failed:", repr(e))
        with open(cfg_path, "w") as fh:
            fh.write(orig_cfg)
        mr = LlamaForCausalLM.from_pretrained(ck, dtype=torch.float32)
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        if os.path.exists(os.path.join(ck, f)):
            shutil.copy(os.path.join(ck, f), args.out)
    mr.to(dev).eval()
    sd_live = model.state_dict()
    maxdiff = max(float((v.float() - sd_live[k].to(torch.bfloat16).float()).abs().max())
                  for k, v in mr.state_dict().items() if k in sd_live)
    tlog["reload"] = {"max_abs_diff_vs_live_bf16": maxdiff,
                      "config": json.load(open(cfg_path))}
    try:
        inv = mr.model.rotary_emb.inv_freq
        want = 1.0 / (ROPE_THETA ** (torch.arange(0, 64, 2, dtype=torch.float32,
                                                  device=inv.device) / 64))
        tlog["reload"]["inv_freq_dtype"] = str(inv.dtype)
        tlog["reload"]["inv_freq_max_rel_err"] = float(((inv - want) / want).abs().max())
    except Exception as e:
        tlog["reload"]["inv_freq_check"] = repr(e)[:300]
    log("reload", {k: v for k, v in tlog["reload"].items() if k != "config"})
    del model, opt
    torch.cuda.empty_cache()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tlog["final_val_loss_fp32"] = val_loss(mr, val_batches, dev, autocast=False)
    log("final val loss (fp32 reload)", tlog["final_val_loss_fp32"])
    save_log()

    # tokenizer check through transformers (informational)
    try:
        from transformers import AutoTokenizer
        ht = AutoTokenizer.from_pretrained(ck)
        texts = ["In the beginning God created the heaven and the earth.",
                 "The pass key is 48213. Remember it.", "  two  spaces, ünïcode and tabs\t!"]
        tlog["hf_tokenizer"] = {"class": type(ht).__name__,
                                "matches_sentencepiece": [ht(t).input_ids == [BOS] + tok.enc(t)
                                                          for t in texts]}
    except Exception as e:
        tlog["hf_tokenizer"] = {"error": repr(e)[:500]}
    log("hf tokenizer", tlog["hf_tokenizer"])

    # ------------------------------------------------------------ evaluations (fp32 reload)
    n = 4 if args.smoke else 100
    h = n // 2 or 2
    ind, extra = args.eval_lengths[:2], args.eval_lengths[2:]
    plan = ([("passkey", L, n, "repeat") for L in ind] + [("multikey", L, h, None) for L in ind]
            + [("passkey", L, h, "corpus") for L in ind] + [("passkey", L, h, "repeat")
                                                            for L in extra])
    n_before_fixture = 3 * len(ind)
    fixture_done = False

    def do_fixture():
        mr_cpu = copy.deepcopy(mr).to("cpu")
        torch.set_num_threads(min(8, os.cpu_count() or 1))
        ref = make_greedy_fixture.make_fixture(mr_cpu, tok, args.out, backend_name=be_name,
                                               backend_version=be.__version__)
        tlog["fixture"] = {"greedy_texts": [g["greedy_text"] for g in ref["greedy"]],
                           "generate_agrees": [g["hf_generate_agrees"] for g in ref["greedy"]],
                           "min_margins": [g["min_top2_logit_margin"] for g in ref["greedy"]]}
        if be_name == "transformers":
            # independent cross-check: the plain-PyTorch implementation on the same checkpoint
            try:
                import ref_llama
                rl = ref_llama.LlamaForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
                with torch.no_grad():
                    lg = rl(input_ids=torch.tensor([ref["logits"]["ids"]])).logits[0].numpy()
                want = np.load(os.path.join(args.out, "reference_logits.npy"))
                tlog["fixture"]["ref_llama_max_abs_logit_diff"] = float(np.abs(lg - want).max())
            except Exception as e:
                tlog["fixture"]["ref_llama_error"] = repr(e)[:300]
        save_log()
        log("fixture", tlog["fixture"])

    for i, (task, L, cnt, filler) in enumerate(plan):
        # the fixtures matter more than the 4K/8K extrapolation numbers: do them after the
        # in-distribution evaluations, or earlier if time runs short
        if not fixture_done and (i == n_before_fixture
                                 or time.time() - T_START > args.deadline - 45):
            do_fixture()
            fixture_done = True
        if time.time() - T_START > args.deadline:
            log("deadline reached, skipping remaining evaluations")
            break
        try:
            if task == "passkey":
                r = eval_passkey.eval_passkey(mr, tok, L, cnt, filler=filler, corpus=corpus,
                                              device=dev, tokens_per_batch=65536)
            else:
                r = eval_passkey.eval_multikey(mr, tok, L, cnt, device=dev,
                                               tokens_per_batch=65536)
        except Exception as e:
            r = {"task": task, "length": L, "filler": filler, "error": repr(e)[:500]}
        tlog["eval"].append(r)
        save_log()
        log("eval", {k: v for k, v in r.items() if k not in ("failures",)})
    if not fixture_done:
        do_fixture()
    tlog["total_seconds"] = round(time.time() - T_START, 1)
    save_log()
    log("done")


if __name__ == "__main__":
    main()
