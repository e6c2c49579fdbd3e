#!/usr/bin/env bash
# Fetch bandwidth of a step's cold KV blocks on the GPU machine (issue #5). Build here with CUDA and
# pack the two binaries (gather_test checks the kernel against the CPU reference on fresh data):
#   cmake -S . -B build-cuda -DMNEMO_CUDA=ON && cmake --build build-cuda -j2 --target gather_test fetch_bench
#   mkdir -p .devfetch/bin && cp build-cuda/tests/gather_test build-cuda/bench/fetch_bench .devfetch/bin/
#   cp /usr/local/cuda/lib64/libcudart.so.13 .devfetch/     # (git-ignored folder, carried)
# then on the GPU machine: run(carry: [".devfetch"], command: "bash bench/memory/run.sh")
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mnemo-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.devfetch:/usr/local/cuda/lib64
.devfetch/bin/gather_test 2>&1 | tail -3
.devfetch/bin/fetch_bench --json "$OUT/fetch.json"
