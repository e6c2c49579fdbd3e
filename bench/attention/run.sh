#!/usr/bin/env bash
# The one script the GPU machine runs for the CUDA dense attention slice (issue #4). It builds
# nothing: bench/attention/pack.sh builds the binaries here and packs them into .devlib/ (carried).
#   run(carry: [".devlib"], command: "bash bench/attention/run.sh")
# Steps, chosen with MNEMO_STEPS (comma-separated; default all of them, in this order):
#   test      cuda_test: every CUDA kernel against the CPU references (+ cuda_sim_test)
#   sanitize  compute-sanitizer memcheck and racecheck on small attention and op cases
#   bench     dense_attention_bench: ceilings, decode 32K/128K, prefill 32K, checks vs the CPU op
#   torch     torch SDPA anchors (flash, cuDNN, efficient) and torch's own ceilings
#   sparse    sparse_attention_bench: InfLLM-V2 stage 1 + top-k + stage 2, prefill 32K/128K and decode
#             32K/128K/1M vs mnemo dense, checks vs the CPU ops (sparse.json, sparse.log)
#   flex      FlexAttention given the same selected blocks (flex_anchor.py; flex.json)
#   table     the summary tables (printed last) and summary.json
# Files in $OUT: env.txt cuda_test.log sanitize.log mnemo.json bench.log torch.json sparse.json
# sparse.log flex.json summary.json. Step timeouts keep each half (test,sanitize | bench,torch,table) under
# the 240 s a call may take here; a step that times out reports rc=124 and the rest still run.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mnemo-out}
mkdir -p "$OUT"
STEPS=${MNEMO_STEPS:-test,sanitize,bench,torch,sparse,flex,table}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
BIN=$PWD/.devlib/bin
CUDA_LIBS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && CUDA_LIBS="$CUDA_LIBS:$d"
done
# Only our binaries get .devlib on their library path (python3/torch keep the system's). The packed
# C++ runtime (.devlib/fallback) is added only when the system's is too old for the binaries.
LIBPATH="$PWD/.devlib$CUDA_LIBS"
if ! LD_LIBRARY_PATH="$LIBPATH" "$BIN/cuda_test" --gtest_list_tests > /dev/null 2>&1; then
  LIBPATH="$LIBPATH:$PWD/.devlib/fallback"
fi
with_libs() { LD_LIBRARY_PATH="$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
STATUS=()

{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  nvcc --version | tail -1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "library path: $LIBPATH"
  with_libs ldd "$BIN/cuda_test" "$BIN/dense_attention_bench"
} > "$OUT/env.txt" 2>&1
head -2 "$OUT/env.txt"
if grep -q "=> not found" "$OUT/env.txt"; then echo "MISSING LIBRARIES:"; grep "=> not found" "$OUT/env.txt"; fi

if has test; then
  with_libs timeout ${MNEMO_TEST_TIMEOUT:-100} "$BIN/cuda_test" --gtest_brief=1 > "$OUT/cuda_test.log" 2>&1
  rc=$?
  # The sparse/select simulations (~60 s on one core) run in CI on every build; here only the dense ones.
  with_libs timeout 30 "$BIN/cuda_sim_test" --gtest_brief=1 --gtest_filter='-*SimSparse*:*SimSelect*' \
    >> "$OUT/cuda_test.log" 2>&1
  sim_rc=$?
  STATUS+=("cuda_test rc=$rc, cuda_sim_test rc=$sim_rc")
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|Actual|stats" "$OUT/cuda_test.log" | cut -c1-220 | tail -n 60
fi

if has sanitize; then
  FILTER='*DenseDecodeCuda*minicpm4_g16_d128:*DenseDecodeCuda*g4_d64_bt16_window:*DenseDecodeCuda*g20*'
  FILTER="$FILTER:*DensePrefillCuda*g4_d64_bt16:*DensePrefillCuda*g3_scattered*:*CudaOps*/1:*CudaOps*/3"
  FILTER="$FILTER:*SparseDecodeCuda*minicpm4_g16_d128:*SparseDecodeCuda*g20*:*SparsePrefillCuda*minicpm4_awkward"
  FILTER="$FILTER:*SparsePrefillCuda*g3_scattered*:*SelectCuda*small_awkward:*SelectCuda*halo3*"
  : > "$OUT/sanitize.log"
  for tool in memcheck racecheck; do
    with_libs timeout 50 compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/cuda_test" --gtest_brief=1 \
      --gtest_filter="$FILTER" >> "$OUT/sanitize.log" 2>&1
    rc=$?
    STATUS+=("compute-sanitizer $tool rc=$rc")
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED)" "$OUT/sanitize.log" | tail -n 3
  done
fi

if has bench; then
  with_libs timeout 150 "$BIN/dense_attention_bench" --json "$OUT/mnemo.json" > "$OUT/bench.log" 2>&1
  rc=$?
  STATUS+=("dense_attention_bench rc=$rc")
  tail -n 20 "$OUT/bench.log"
fi

if has torch; then
  timeout 80 python3 bench/attention/torch_anchor.py anchors --json "$OUT/torch.json" >> "$OUT/bench.log" 2>&1
  rc=$?
  STATUS+=("torch anchors rc=$rc")
  [ $rc -ne 0 ] && tail -n 5 "$OUT/bench.log"
fi

if has sparse; then
  mkdir -p /tmp/mnemo-ids
  with_libs timeout ${MNEMO_SPARSE_TIMEOUT:-150} "$BIN/sparse_attention_bench" --json "$OUT/sparse.json" \
    --dump-ids /tmp/mnemo-ids > "$OUT/sparse.log" 2>&1
  rc=$?
  STATUS+=("sparse_attention_bench rc=$rc")
  tail -n 8 "$OUT/sparse.log"
fi

if has flex; then
  timeout ${MNEMO_FLEX_TIMEOUT:-100} python3 bench/attention/flex_anchor.py --ids /tmp/mnemo-ids --json "$OUT/flex.json" \
    >> "$OUT/sparse.log" 2>&1
  rc=$?
  STATUS+=("flex anchor rc=$rc")
  grep flex "$OUT/sparse.log" | tail -n 3
fi

if has table; then
  printf '%s\n' "${STATUS[@]}" > "$OUT/status.txt"
  python3 bench/attention/torch_anchor.py table --mnemo "$OUT/mnemo.json" --torch "$OUT/torch.json" \
    --status "$OUT/status.txt" --out "$OUT/summary.json"
  python3 bench/attention/flex_anchor.py table --sparse "$OUT/sparse.json" --flex "$OUT/flex.json"
  rm -f "$OUT/status.txt"
else
  printf '%s\n' "${STATUS[@]}"
fi
