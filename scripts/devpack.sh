#!/usr/bin/env bash
# Run HERE (not on the GPU machine): builds CUDA targets and packs them, with the shared libraries the
# GPU machine's image lacks (RocksDB, Boost, sentencepiece, compression libraries, libgomp), into a
# git-ignored folder the `run` tool carries:
#   DEST=.devpack bash scripts/devpack.sh mnemo cuda_model_test ...
#   run(carry: [".devcarry"], command: "bash bench/model/run.sh")
# The folder also goes out as .devcarry/pack.tar.xz: a call carries at most 64 MiB with the working
# tree (≈ 53 MiB of it tracked files: the bundled model and the fixtures), and RocksDB alone is 11 MiB;
# xz brings the pack from ≈ 33 MiB to ≈ 7. The GPU-side scripts unpack it into DEST.
# libc, the CUDA driver and cuBLAS stay behind (the machine's own CUDA 13 serves them); the C++
# runtime goes to DEST/fallback, used only when the machine's is older than the binaries need.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-dev}
DEST=${DEST:-.devpack}
[ $# -gt 0 ] || { echo "usage: $0 TARGET..." >&2; exit 2; }
cmake -S . -B "$BUILD" -DMNEMO_CUDA=ON -DMNEMO_WERROR=ON >/dev/null
cmake --build "$BUILD" -j2 --target "$@"
rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/fallback"
for t in "$@"; do
  bin=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -1)
  [ -n "$bin" ] || { echo "devpack: no binary for target $t under $BUILD" >&2; exit 1; }
  cp "$bin" "$DEST/bin/"
done
for bin in "$DEST"/bin/*; do ldd "$bin" | awk '/=> \//{print $3}'; done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | libcublas* | libcuda.so*) ;;
    libstdc++.so* | libgcc_s.so*) cp -L "$lib" "$DEST/fallback/" ;;
    *) cp -L "$lib" "$DEST/" ;;
  esac
done
mkdir -p .devcarry
tar -C "$DEST" -cJf .devcarry/pack.tar.xz .
du -sh "$DEST" .devcarry/pack.tar.xz
