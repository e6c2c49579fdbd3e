#!/usr/bin/env bash
# KV memory on the GPU machine (issue #5), one run: the gather kernel's test and the CUDA store's
# tests, then the raw fetch bench (gather vs per-block memcpy vs bulk) and the store bench
# (TieredStore::acquire from host and from disk). Build here with CUDA and pack the binaries with
# the shared libraries they need into a git-ignored folder:
#   cmake -S . -B build-mem -DMNEMO_CUDA=ON
#   cmake --build build-mem -j2 --target gather_test cuda_store_test fetch_bench store_bench
#   bash bench/memory/run.sh pack build-mem
# then on the GPU machine: run(carry: [".devmem"], command: "bash bench/memory/run.sh")
set -u
cd "$(dirname "$0")/../.."
# (The run tool carries at most 64 MiB with the tree, so the folder holds one stripped .tar.xz.)
if [ "${1:-}" = pack ]; then
  build=${2:-build-mem}
  stage=$(mktemp -d)
  mkdir -p "$stage/bin" "$stage/lib"
  cp "$build/tests/gather_test" "$build/tests/cuda_store_test" "$build/bench/fetch_bench" "$build/bench/store_bench" \
     "$stage/bin/"
  ldd "$stage"/bin/* | awk '/=> \//{print $3}' | sort -u |
    grep -v -E '/(libc|libm|ld-linux-x86-64|libpthread|libdl|librt|libcuda)\.so' |
    while read -r lib; do cp -L "$lib" "$stage/lib/"; done
  strip --strip-unneeded "$stage"/bin/* "$stage"/lib/*
  rm -rf .devmem && mkdir -p .devmem && tar -C "$stage" -cJf .devmem/devmem.tar.xz bin lib && rm -rf "$stage"
  ls -la .devmem
  exit 0
fi
OUT=${OUT:-/tmp/mnemo-out}
mkdir -p "$OUT"
mkdir -p .devmem/x && tar -C .devmem/x -xJf .devmem/devmem.tar.xz
export LD_LIBRARY_PATH=$PWD/.devmem/x/lib
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 20 .devmem/x/bin/gather_test > "$OUT/gather_test.log" 2>&1; echo "gather_test rc=$?"; tail -3 "$OUT/gather_test.log"
timeout 50 .devmem/x/bin/cuda_store_test > "$OUT/cuda_store_test.log" 2>&1; echo "cuda_store_test rc=$?"
grep -E '^\[ +(OK|FAILED|SKIPPED|PASSED) +\]|Failure|Which is|Expected|error' "$OUT/cuda_store_test.log" | head -80
DATA=$PWD/.devmem-data
mkdir -p "$DATA" && df -hT "$DATA" | tail -1
timeout 30 .devmem/x/bin/fetch_bench --json "$OUT/fetch.json"; echo "fetch_bench rc=$?"
timeout 120 .devmem/x/bin/store_bench --dir "$DATA/store" --json "$OUT/store.json" || echo "store_bench rc=$?"
