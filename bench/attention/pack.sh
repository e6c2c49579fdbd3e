#!/usr/bin/env bash
# Run HERE (not on the GPU machine): builds the CUDA test and bench binaries and packs them, with the
# shared libraries the GPU machine's image may lack, into .devlib/ (git-ignored), for
# `run(carry: [".devlib"], command: "bash bench/attention/run.sh")`. cuBLAS (≈600 MB) and libc stay
# behind: the GPU machine's own CUDA 13 and glibc serve them (run.sh puts its CUDA on the path).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-cuda}
cmake -S . -B "$BUILD" -DMNEMO_CUDA=ON -DMNEMO_WERROR=ON >/dev/null
cmake --build "$BUILD" -j2 --target cuda_test cuda_sim_test dense_attention_bench sparse_attention_bench
rm -rf .devlib
mkdir -p .devlib/bin .devlib/fallback
cp "$BUILD/tests/cuda_test" "$BUILD/tests/cuda_sim_test" "$BUILD/bench/dense_attention_bench" \
  "$BUILD/bench/sparse_attention_bench" .devlib/bin/
for bin in .devlib/bin/*; do ldd "$bin" | awk '/=> \//{print $3}'; done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | libcublas* | libcuda.so*) ;;
    # The C++ runtime only as a fallback: a newer system one must win, or torch there would break.
    libstdc++.so* | libgcc_s.so*) cp -L "$lib" .devlib/fallback/ ;;
    *) cp -L "$lib" .devlib/ ;;
  esac
done
ls -la .devlib .devlib/bin .devlib/fallback
du -sh .devlib
