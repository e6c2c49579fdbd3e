#!/usr/bin/env bash
# What the GPU machine runs, from the repository root, with tools/train/data/tok carried along
# (build it first here: bash tools/train/build_corpus.sh). $OUT is the folder that comes back.
#   bash tools/train/run_device.sh smoke   # whole pipeline, ~20 s of training, tiny evals (<150 s)
#   bash tools/train/run_device.sh full    # 440 s of training, full evals (~9 min in all)
# Writes 7 files to $OUT: config.json generation_config.json model.safetensors train_log.json
# reference.json reference_logits.npy train_stdout.log. Install them with install_outputs.sh.
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
python3 -c "import torch, transformers, sentencepiece, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentencepiece', sentencepiece.__version__, 'numpy', numpy.__version__)"
case "${1:-}" in
  smoke) args=(--smoke) ;;
  full)  args=(--train-seconds "${TRAIN_SECONDS:-440}") ;;
  *) echo "usage: $0 smoke|full" >&2; exit 2 ;;
esac
python3 tools/train/train.py --backend hf --out "$OUT" "${args[@]}" 2>&1 | tee "$OUT/train_stdout.log"
ls -la "$OUT"
