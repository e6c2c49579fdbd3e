#!/usr/bin/env python3
"""Build the English training corpus for models/tiny (stdlib only, deterministic).

Sources (all from Debian packages installed by build_corpus.sh):
  * bible-kjv      King James Version text (public domain), via /usr/bin/bible
  * apt i18n       English package descriptions (Translation-en of Debian 12 "bookworm" main);
                   each description is under the licence of the package it describes
  * python3.11-doc reStructuredText sources of the Python 3.11 documentation (PSF licence);
                   only prose paragraphs are kept (no code blocks, directives or tables)

Output: one document per line (no newlines inside a document), shuffled with a fixed seed,
written to <out>/corpus.txt, plus <out>/corpus_meta.json describing the sources.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import subprocess

SEED = 20240607
MAX_DOC_CHARS = 12000


def squash(s):
    return re.sub(r"\s+", " ", s).strip()


def split_long(paragraphs, limit=MAX_DOC_CHARS):
    """Group paragraphs into documents of at most ~limit characters."""
    docs, cur, n = [], [], 0
    for p in paragraphs:
        if cur and n + len(p) > limit:
            docs.append(" ".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += len(p) + 1
    if cur:
        docs.append(" ".join(cur))
    return docs


# ---------------------------------------------------------------- KJV
def kjv_docs():
    out = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    docs, title, verses = [], None, []
    for line in out.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if m:
            verses.append(m.group(2).strip())
        else:  # chapter heading, e.g. "Genesis 1"
            if title and verses:
                docs.append(title + ". " + squash(" ".join(verses)))
            title, verses = line.strip(), []
    if title and verses:
        docs.append(title + ". " + squash(" ".join(verses)))
    return docs


# ---------------------------------------------------------------- Debian descriptions
def translation_files():
    pats = ["/var/lib/apt/lists/*_debian_dists_bookworm_main_i18n_Translation-en*"]
    files = sorted(f for p in pats for f in glob.glob(p) if not f.endswith(".diff_Index"))
    return files


def read_apt_file(path):
    return subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True,
                          capture_output=True, text=True, errors="replace").stdout


def debian_docs():
    files = translation_files()
    if not files:
        raise SystemExit("no Translation-en list found: run "
                         "apt-get update -o Acquire::Languages=en first")
    entries = {}
    for f in files:
        for stanza in read_apt_file(f).split("\n\n"):
            pkg, short, body, in_desc = None, None, [], False
            for line in stanza.split("\n"):
                if line.startswith("Package:"):
                    pkg = line.split(":", 1)[1].strip()
                    in_desc = False
                elif line.startswith("Description-en:"):
                    short = line.split(":", 1)[1].strip()
                    in_desc = True
                elif line.startswith(" ") and in_desc:
                    body.append(line[1:])
                else:
                    in_desc = False
            if pkg and short:
                entries.setdefault(pkg, (short, body))
    docs, seen = [], set()
    for pkg in sorted(entries):
        short, body = entries[pkg]
        paras, cur = [], []
        for line in body:
            if line.strip() == ".":
                if cur:
                    paras.append(squash(" ".join(cur)))
                cur = []
            else:
                cur.append(line.strip())
        if cur:
            paras.append(squash(" ".join(cur)))
        text = " ".join(p for p in paras if p)
        key = hashlib.sha1((short + "|" + text).encode()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        short = short.rstrip(".")
        docs.append(squash(f"{pkg}: {short}. {text}"))
    return docs


# ---------------------------------------------------------------- Python docs
ROLE = re.compile(r":[a-zA-Z:+-]+:`~?!?([^`<]*?)(?:\s*<[^`>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
HEADING_LINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")


def clean_rst_inline(s):
    s = ROLE.sub(lambda m: m.group(1).strip(), s)
    s = LINK.sub(lambda m: m.group(1).strip(), s)
    s = re.sub(r"``([^`]*)``", r"\1", s)
    s = re.sub(r"`([^`]*)`_?", r"\1", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)", r"\1", s)
    s = re.sub(r"\|([^|\s]+)\|", r"\1", s)
    s = re.sub(r"\s*::$", ":", s)
    s = s.replace("\\", "")
    return squash(s)


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def rst_paragraphs(text):
    lines = text.replace("\t", "    ").split("\n")
    blocks, cur = [], []
    for ln in lines:
        if ln.strip():
            cur.append(ln.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    paras = []
    code_indent = None  # skip blocks indented deeper than this (literal blocks)
    directive_indent = None  # skip content of non-prose directives
    for b in blocks:
        ind = indent_of(b[0])
        if code_indent is not None:
            if ind > code_indent:
                continue
            code_indent = None
        if directive_indent is not None:
            if ind > directive_indent:
                continue
            directive_indent = None
        first = b[0].strip()
        if first.startswith(".. "):
            name = first[3:].split("::")[0].strip()
            prose_dirs = {"note", "warning", "seealso", "versionadded", "versionchanged",
                          "deprecated", "function", "method", "class", "attribute",
                          "data", "exception", "decorator", "describe", "impl-detail",
                          "important", "tip", "admonition", "classmethod", "staticmethod",
                          "decoratormethod", "opcode", "envvar", "option", "glossary",
                          "index", "module", "currentmodule", "sectionauthor",
                          "moduleauthor", "_", "versionremoved"}
            if name not in prose_dirs and not name.startswith("_") and "::" in first:
                directive_indent = ind
            continue
        if first.startswith(">>>") or first.startswith("+-") or first.startswith("==="):
            continue
        if len(b) >= 2 and HEADING_LINE.match(b[-1].strip()):
            title = b[-2].strip() if len(b) >= 2 else ""
            if title and not HEADING_LINE.match(title):
                t = clean_rst_inline(title)
                if t:
                    paras.append(t.rstrip(".") + ".")
            continue
        if HEADING_LINE.match(first):
            continue
        para = clean_rst_inline(" ".join(x.strip() for x in b))
        if b[-1].rstrip().endswith("::"):
            code_indent = ind
        words = para.split()
        if len(words) < 6:
            continue
        alpha = sum(c.isalpha() or c == " " for c in para) / max(1, len(para))
        if alpha < 0.8:
            continue
        paras.append(para)
    return paras


def pydoc_docs():
    root = "/usr/share/doc/python3.11/html/_sources"
    files = sorted(glob.glob(root + "/**/*.rst.txt", recursive=True))
    if not files:
        raise SystemExit("python3.11-doc sources not found (apt-get install python3-doc)")
    docs = []
    skip = ("whatsnew/changelog", "license", "copyright")
    for f in files:
        rel = os.path.relpath(f, root)
        if any(s in rel for s in skip):
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            paras = rst_paragraphs(fh.read())
        if sum(len(p) for p in paras) < 200:
            continue
        docs.extend(split_long(paras))
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sources = {"kjv": kjv_docs(), "debian": debian_docs(), "pydoc": pydoc_docs()}
    alldocs = []
    meta = {"seed": SEED, "sources": {}}
    for name, docs in sources.items():
        docs = [d for d in (squash(x) for x in docs) if len(d) >= 40]
        meta["sources"][name] = {"docs": len(docs), "chars": sum(len(d) for d in docs)}
        alldocs.extend(docs)
    random.Random(SEED).shuffle(alldocs)
    path = os.path.join(args.out, "corpus.txt")
    with open(path, "w", encoding="utf-8") as fh:
        for d in alldocs:
            fh.write(d + "\n")
    h = hashlib.sha256(open(path, "rb").read()).hexdigest()
    meta["docs"] = len(alldocs)
    meta["chars"] = sum(len(d) for d in alldocs)
    meta["sha256"] = h
    with open(os.path.join(args.out, "corpus_meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
