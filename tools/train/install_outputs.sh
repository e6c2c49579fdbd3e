#!/usr/bin/env bash
# Copy what run_device.sh wrote (the folder the device reply names as files_at) into models/tiny
# and check the total size. Usage: bash tools/train/install_outputs.sh FILES_AT
set -euo pipefail
SRC="${1:?folder with the device outputs}"
DST="$(cd "$(dirname "$0")/../.." && pwd)/models/tiny"
for f in config.json generation_config.json model.safetensors train_log.json reference.json \
         reference_logits.npy; do
  [ -f "$SRC/$f" ] || { echo "missing $SRC/$f" >&2; exit 1; }
  install -m 0644 "$SRC/$f" "$DST/$f"
done
du -b "$DST"/* | sort -n
total=$(du -cb "$DST" | tail -1 | cut -f1)
echo "models/tiny: $total bytes"
[ "$total" -lt $((30 * 1024 * 1024)) ] || { echo "models/tiny is over 30 MiB" >&2; exit 1; }
