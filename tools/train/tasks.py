"""Synthetic retrieval tasks (passkey, multi-key recall) and the corpus token streams.

Training builds examples in token space (fast); evaluation builds them as text and encodes the
whole text with sentencepiece, exactly as a user (or mnemo's C++ tests) would. Because the
tokenizer never merges across whitespace, both give the same ids for the same text.
"""
import os
import re

import numpy as np

BOS, EOS = 1, 2

# The classic passkey filler (Mohtashami & Jaggi, "Landmark Attention").
REPEAT_SENTENCES = ["The grass is green.", "The sky is blue.", "The sun is yellow.",
                    "Here we go.", "There and back again."]
PK_INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. "
            "Find it and memorize it. I will quiz you about the pass key.")
PK_NEEDLE = "The pass key is {k}. Remember it. {k} is the pass key."
PK_QUESTION = "What is the pass key? The pass key is"
MK_INTRO = ("Some codes are hidden inside a lot of irrelevant text. "
            "Memorize each code. I will quiz you about them.")
MK_FACT = "The code of {name} is {num}."
MK_QUESTION = "What is the code of {name}? The code of {name} is"

NAMES = """apple banana cherry grape lemon mango melon olive peach pear plum berry orange
lime fig date kiwi papaya walnut almond carrot potato onion garlic pepper tomato cabbage
lion tiger bear wolf fox horse camel goat sheep eagle falcon raven sparrow dolphin shark
whale salmon turtle spider beetle rabbit mouse otter badger zebra giraffe monkey parrot
red blue green yellow purple silver golden black white crimson violet amber copper bronze
river mountain forest desert island valley ocean harbor castle tower bridge garden temple
village market library station school palace prison church window door table chair lamp
mirror clock candle basket bottle hammer needle anchor arrow shield sword crown ring coin
London Paris Rome Berlin Madrid Vienna Prague Athens Cairo Lisbon Dublin Oslo Warsaw Tokyo
Delhi Lima Quito Sydney Boston Denver Chicago Seattle Houston Dallas Miami Toronto Geneva
Alice Bob Carol David Emma Frank Grace Henry Irene James Laura Martin Nora Oscar Paula
Peter Quentin Rachel Simon Tessa Victor Walter Yvonne Zachary Abel Ruth Samuel Miriam
Jacob Esther Daniel Hannah Jonah Naomi Aaron Deborah""".split()


class Tok:
    """Thin wrapper around a sentencepiece model with a few cached encodings."""

    def __init__(self, model_file):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.cache = {}

    def enc(self, text):
        ids = self.cache.get(text)
        if ids is None:
            ids = self.sp.encode(text)
            if len(self.cache) < 100000:
                self.cache[text] = ids
        return ids

    def dec(self, ids):
        return self.sp.decode([int(i) for i in ids])


class Corpus:
    """uint16 token streams written by pack_tokens.py; every document is BOS ... EOS."""

    def __init__(self, tokdir):
        self.train = np.fromfile(os.path.join(tokdir, "train.bin"), dtype="<u2")
        self.val = np.fromfile(os.path.join(tokdir, "val.bin"), dtype="<u2")
        self.train_starts = np.flatnonzero(self.train == BOS)
        self.val_starts = np.flatnonzero(self.val == BOS)

    def lm_chunk(self, n, rng, split="train"):
        """n tokens starting at a random document start (wrapping around the stream)."""
        s = self.train if split == "train" else self.val
        starts = self.train_starts if split == "train" else self.val_starts
        o = int(starts[rng.integers(len(starts))])
        if o + n <= len(s):
            return s[o:o + n]
        return np.concatenate([s[o:], s[:n - (len(s) - o)]])

    def filler_tokens(self, n, rng, split="train"):
        """n tokens of running text without BOS/EOS, starting at a word boundary-ish offset."""
        s = self.train if split == "train" else self.val
        o = int(rng.integers(0, len(s) - 2 * n - 16))
        x = s[o:o + 2 * n + 16]
        x = x[(x != BOS) & (x != EOS)]
        return x[:n]


# ------------------------------------------------------------------ training examples (tokens)
class TaskMaker:
    def __init__(self, tok, corpus, answer_weight=8.0):
        self.tok, self.corpus, self.w = tok, corpus, answer_weight
        self.rep_sents = [np.array(tok.enc(s), dtype=np.int64) for s in REPEAT_SENTENCES]

    def filler(self, n, rng, kind):
        """Returns (tokens, cut_points): about n filler tokens and the offsets where a needle
        may be inserted (sentence boundaries for the repeated filler, anywhere for corpus text)."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        if kind == "repeat":
            i = int(rng.integers(len(REPEAT_SENTENCES)))
            out, bounds, total = [], [0], 0
            while True:
                s = self.rep_sents[i % len(self.rep_sents)]
                if total + len(s) > n:
                    break
                out.append(s)
                total += len(s)
                bounds.append(total)
                i += 1
            toks = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
            return toks, np.array(bounds, dtype=np.int64)
        toks = self.corpus.filler_tokens(n, rng).astype(np.int64)
        return toks, np.arange(len(toks) + 1, dtype=np.int64)

    def _assemble(self, parts):
        """parts: list of (ids, is_answer). Returns ids, weights (weight applies to the token)."""
        ids = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in parts])
        w = np.concatenate([np.full(len(p), self.w if a else 1.0, dtype=np.float32)
                            for p, a in parts])
        return ids, w

    def _answer(self, num):
        a = self.tok.enc(f"{num}.")  # ['▁', digits..., '.']
        return [(a[:-1], True), (a[-1:], False)]

    def passkey(self, length, rng, kind):
        k = int(rng.integers(10000, 100000))
        head = [BOS] + self.tok.enc(PK_INTRO)
        needle = self.tok.enc(PK_NEEDLE.format(k=k))
        q = self.tok.enc(PK_QUESTION)
        ans = self._answer(k)
        fixed = len(head) + len(needle) + len(q) + sum(len(p) for p, _ in ans)
        f, b = self.filler(length - fixed, rng, kind)
        cut = int(b[rng.integers(len(b))])
        parts = [(head, False), (f[:cut], False), (needle, False), (f[cut:], False),
                 (q, False)] + ans
        return self._assemble(parts)

    def multikey(self, length, rng, kind):
        nkeys = int(rng.integers(2, 9))
        nq = int(rng.integers(1, min(3, nkeys) + 1))
        names = [NAMES[i] for i in rng.choice(len(NAMES), size=nkeys, replace=False)]
        nums = [int(rng.integers(1000, 100000)) for _ in names]
        facts = [self.tok.enc(MK_FACT.format(name=n, num=v)) for n, v in zip(names, nums)]
        qs = rng.choice(nkeys, size=nq, replace=False)
        tail = []
        for qi in qs:
            tail.append((self.tok.enc(MK_QUESTION.format(name=names[qi])), False))
            tail += self._answer(nums[qi])
        head = [BOS] + self.tok.enc(MK_INTRO)
        fixed = len(head) + sum(len(x) for x in facts) + sum(len(p) for p, _ in tail)
        f, b = self.filler(length - fixed, rng, kind)
        cuts = np.sort(b[rng.integers(0, len(b), size=nkeys)])
        parts, prev = [(head, False)], 0
        for c, fact in zip(cuts, facts):
            parts += [(f[prev:c], False), (fact, False)]
            prev = c
        parts += [(f[prev:], False)] + tail
        return self._assemble(parts)


# ------------------------------------------------------------------ evaluation prompts (text)
def _repeat_filler_text(tok, n_tokens, phase=0):
    out, total, i = [], 0, phase
    while True:
        s = REPEAT_SENTENCES[i % len(REPEAT_SENTENCES)]
        t = len(tok.enc(s))
        if total + t > n_tokens:
            break
        out.append(s)
        total += t
        i += 1
    return out  # list of sentences


def _corpus_filler_text(tok, corpus, n_tokens, rng):
    x = corpus.filler_tokens(n_tokens, rng, split="val")
    text = tok.dec(x)
    return re.split(r"(?<=[.!?])\s+", text.strip())  # list of "sentences"


def passkey_prompt(tok, target_len, depth, key, filler="repeat", corpus=None, rng=None):
    """Text and ids ([BOS] + encode(text)) of a passkey prompt whose length including the
    6-token answer (' ', 5 digits) is at most target_len tokens. depth in [0, 1] is where the
    needle sits inside the filler."""
    n_answer = len(tok.enc(f"{key}"))
    fixed = 1 + len(tok.enc(PK_INTRO)) + len(tok.enc(PK_NEEDLE.format(k=key))) + \
        len(tok.enc(PK_QUESTION)) + n_answer
    budget = target_len - fixed
    for _ in range(8):
        if filler == "repeat":
            sents = _repeat_filler_text(tok, budget)
        else:
            sents = _corpus_filler_text(tok, corpus, budget, np.random.default_rng(rng))
        cut = int(round(depth * len(sents)))
        pieces = [PK_INTRO] + sents[:cut] + [PK_NEEDLE.format(k=key)] + sents[cut:] + [PK_QUESTION]
        text = " ".join(p for p in pieces if p)
        ids = [BOS] + tok.enc(text)
        over = len(ids) + n_answer - target_len
        if over <= 0:
            return text, ids
        budget -= over
    raise RuntimeError("could not fit passkey prompt")


def multikey_prompt(tok, target_len, rng, nkeys=4, filler="repeat"):
    names = [NAMES[i] for i in rng.choice(len(NAMES), size=nkeys, replace=False)]
    nums = [int(rng.integers(10000, 100000)) for _ in names]
    qi = int(rng.integers(nkeys))
    facts = [MK_FACT.format(name=n, num=v) for n, v in zip(names, nums)]
    q = MK_QUESTION.format(name=names[qi])
    fixed = 1 + len(tok.enc(MK_INTRO)) + sum(len(tok.enc(f)) for f in facts) + len(tok.enc(q)) + 6
    sents = _repeat_filler_text(tok, target_len - fixed)
    cuts = sorted(int(c) for c in rng.integers(0, len(sents) + 1, size=nkeys))
    pieces, prev = [MK_INTRO], 0
    for c, f in zip(cuts, facts):
        pieces += sents[prev:c] + [f]
        prev = c
    pieces += sents[prev:] + [q]
    text = " ".join(pieces)
    return text, [BOS] + tok.enc(text), str(nums[qi])
