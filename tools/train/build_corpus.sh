#!/usr/bin/env bash
# Build the corpus, the sentencepiece tokenizer and the packed token streams for models/tiny.
# Runs on a Debian 12 (bookworm) CPU machine as root; needs no GPU, no Python packages.
# Usage (from the repository root):  bash tools/train/build_corpus.sh [--retrain-tokenizer]
# The committed models/tiny/tokenizer.model is kept and used unless --retrain-tokenizer is given
# (or it is missing); tools/train/corpus_manifest.json holds the checksums of the build that
# produced it, and a mismatch is reported (the Debian lists can change with point releases).
# Outputs: tools/train/data/{corpus.txt,corpus_meta.json,tokenizer.model,tokenizer.vocab,ids.txt}
#          tools/train/data/tok/{train.bin,val.bin,tokens_meta.json}   (carried to the GPU machine)
#          models/tiny/tokenizer.model
set -euo pipefail
RETRAIN=0
[ "${1:-}" = "--retrain-tokenizer" ] && RETRAIN=1
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="$ROOT/tools/train/data"
mkdir -p "$DATA/tok"

# 1. packages (idempotent). English package descriptions need the Translation-en index.
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o Acquire::Languages=en
need=()
for p in bible-kjv python3-doc sentencepiece; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then apt-get install -y -qq "${need[@]}"; fi

# 2. corpus (one document per line, shuffled with a fixed seed)
python3 "$ROOT/tools/train/build_corpus.py" --out "$DATA"

# 3. tokenizer: BPE, 4096 pieces, byte fallback, digits split, unk=0 bos=1 eos=2 (Llama layout)
TOK="$ROOT/models/tiny/tokenizer.model"
if [ "$RETRAIN" = 1 ] || [ ! -f "$TOK" ]; then
  (cd "$DATA" && spm_train --input=corpus.txt --model_prefix=tokenizer --model_type=bpe \
    --vocab_size=4096 --byte_fallback=true --split_digits=true \
    --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
    --normalization_rule_name=identity --add_dummy_prefix=true --remove_extra_whitespaces=false \
    --allow_whitespace_only_pieces=true --character_coverage=0.9995 \
    --max_sentence_length=16384 --max_sentencepiece_length=16 \
    --random_seed=1234 --num_threads=2 --input_sentence_size=0 > spm_train.log 2>&1)
  cp "$DATA/tokenizer.model" "$TOK"
else
  echo "keeping the committed $TOK (pass --retrain-tokenizer to rebuild it)"
fi

# 4. token streams
spm_encode --model="$TOK" --output_format=id < "$DATA/corpus.txt" > "$DATA/ids.txt"
python3 "$ROOT/tools/train/pack_tokens.py" "$DATA/ids.txt" "$DATA/tok"
# 5. compare with the manifest of the committed build
python3 - "$ROOT" <<'PY'
import hashlib, json, sys
root = sys.argv[1]
man = json.load(open(f"{root}/tools/train/corpus_manifest.json"))
now = {"corpus.txt": json.load(open(f"{root}/tools/train/data/corpus_meta.json"))["sha256"],
       "tokenizer.model": hashlib.sha256(open(f"{root}/models/tiny/tokenizer.model", "rb").read()).hexdigest()}
tm = json.load(open(f"{root}/tools/train/data/tok/tokens_meta.json"))
now["train.bin"], now["val.bin"] = tm["train.bin.sha256"], tm["val.bin.sha256"]
for k, v in now.items():
    ok = man["sha256"].get(k) == v
    print(f"{k:16s} {v[:16]}  {'matches the manifest' if ok else 'DIFFERS from tools/train/corpus_manifest.json'}")
PY
