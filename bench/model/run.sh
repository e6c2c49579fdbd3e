#!/usr/bin/env bash
# The GPU machine's script for the model on the CUDA backend (issue #4, #6): tests, sanitizer, the CLI
# with --device cuda, and the end-to-end runtime bench on the GPU. It builds nothing: here,
#   DEST=.devpack bash scripts/devpack.sh mnemo cuda_model_test cuda_store_test runtime_bench
# then  run(carry: [".devcarry"], command: "bash bench/model/run.sh").
# Steps (MNEMO_STEPS, comma-separated; default all): test sanitize cli bench ingest1m long. Files in $OUT.
#   long: model_bench on the MiniCPM4-8B shape (random weights, bench/model/minicpm4_8b.json), decode at
#   128K and 1M synthetic context, everything resident vs a 4 GiB GPU KV budget (issue #5's target:
#   budgeted >= 0.75x resident tokens/s). MNEMO_CONTEXTS overrides "131072 1048576".
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mnemo-out}
mkdir -p "$OUT"
STEPS=${MNEMO_STEPS:-test,sanitize,cli,bench,ingest1m,long}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
PACK=$PWD/${PACK:-.devpack}
if [ ! -d "$PACK" ] && [ -f .devcarry/pack.tar.xz ]; then mkdir -p "$PACK" && tar -C "$PACK" -xJf .devcarry/pack.tar.xz; fi
BIN=$PACK/bin
CUDA_LIBS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && CUDA_LIBS="$CUDA_LIBS:$d"
done
LIBPATH="$PACK$CUDA_LIBS"
if ! LD_LIBRARY_PATH="$LIBPATH" "$BIN/mnemo" --help > /dev/null 2>&1; then LIBPATH="$LIBPATH:$PACK/fallback"; fi
with_libs() { LD_LIBRARY_PATH="$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OMP_WAIT_POLICY=passive "$@"; }
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  nproc
  with_libs ldd "$BIN"/* | grep -E "not found" || echo "all libraries found"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if has test; then
  for t in cuda_model_test cuda_store_test; do
    [ -x "$BIN/$t" ] || continue
    with_libs timeout ${MNEMO_TEST_TIMEOUT:-150} "$BIN/$t" --gtest_brief=1 > "$OUT/$t.log" 2>&1
    echo "== $t rc=$?"
    grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|actual|Which is|stats|rror" "$OUT/$t.log" | cut -c1-240 | tail -n 40
  done
fi

if has sanitize; then
  with_libs timeout ${MNEMO_SANITIZE_TIMEOUT:-90} compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/cuda_model_test" --gtest_brief=1 \
    --gtest_filter='*LogitsMatchCpuAndTransformers/qwen2_bias:CudaModel.TinyGpuBudget*:CompressCuda*rotated:MergeCuda*' > "$OUT/sanitize_model.log" 2>&1
  echo "== memcheck cuda_model_test rc=$?"
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitize_model.log" | tail -5
fi

if has cli; then
  {
    for dev in cpu cuda; do
      echo "--- mnemo run --device $dev"
      time (with_libs "$BIN/mnemo" run --device $dev -n 48 --stats -p "Once upon a time, there was a little" 2>&1 | tail -n 6)
      with_libs "$BIN/mnemo" logits --device $dev --text "The capital of France is Paris, and the capital of Italy is" \
        --out "$OUT/logits_$dev.npy" 2>&1 | tail -n 2
    done
    python3 -c "
import numpy as np
a = np.load('$OUT/logits_cpu.npy'); b = np.load('$OUT/logits_cuda.npy')
err = np.abs(a - b).max(axis=1) / np.abs(a).max(axis=1)
print('logits cuda vs cpu: worst row rel err %.3g, argmax agree %d/%d' % (err.max(), (a.argmax(1) == b.argmax(1)).sum(), len(a)))
"
    echo "--- a device that is not there"
    with_libs "$BIN/mnemo" run --device cuda:7 -p "x" 2>&1 | tail -n 2
  } > "$OUT/cli.log" 2>&1
  cat "$OUT/cli.log"
fi

if has bench; then
  # The runtime end to end on the GPU: decode tok/s at 1/8/64 sessions, TTFT beside a 2000-token ingest.
  with_libs timeout ${MNEMO_BENCH_TIMEOUT:-150} "$BIN/runtime_bench" --device cuda --runs 1 --ingest-tokens 2000 \
    --json "$OUT/runtime_cuda.json" > "$OUT/runtime_cuda.log" 2>&1
  echo "== runtime_bench --device cuda rc=$?"
  tail -n 12 "$OUT/runtime_cuda.log"
fi

if has ingest1m; then
  # TTFT of a short chat beside a 1M-token ingest (bounded positions + InfLLM-V2 on the bundled model).
  with_libs timeout ${MNEMO_INGEST_TIMEOUT:-200} "$BIN/runtime_bench" --device cuda --runs 1 --ttft-only 1 \
    --positions bounded --sparse-config models/tiny/eval/sparse_b.json --ingest-tokens ${MNEMO_INGEST_TOKENS:-1048576} \
    --alone-reps 3 --json "$OUT/ingest1m_cuda.json" > "$OUT/ingest1m_cuda.log" 2>&1
  echo "== runtime_bench ingest ${MNEMO_INGEST_TOKENS:-1048576} rc=$?"
  tail -n 6 "$OUT/ingest1m_cuda.log"
fi

if has long; then
  : > "$OUT/long.jsonl"
  for ctx in ${MNEMO_CONTEXTS:-131072 1048576}; do
    for budget in 0 4; do
      label="ctx${ctx}_$([ "$budget" = 0 ] && echo resident || echo ${budget}gib)"
      with_libs timeout ${MNEMO_LONG_TIMEOUT:-75} "$BIN/model_bench" --config bench/model/minicpm4_8b.json --device cuda --context "$ctx" \
        --decode ${MNEMO_DECODE:-24} --kv-budget-gib "$budget" --label "$label" --json "$OUT/$label.json" \
        > "$OUT/$label.log" 2>&1
      echo "== $label rc=$?"; tail -n 3 "$OUT/$label.log" | cut -c1-400
      [ -f "$OUT/$label.json" ] && cat "$OUT/$label.json" >> "$OUT/long.jsonl"
    done
  done
  python3 - "$OUT/long.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["label"]: r for r in rows}
print("| context | GPU KV | decode ms/token (median) | tok/s | vs resident | GPU hit rate | host hits | prefetch hits | MB host->GPU per token |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    res = by.get(r["label"].split("_")[0] + "_resident")
    ratio = r["decode_tok_s"] / res["decode_tok_s"] if res else float("nan")
    print("| %d | %s | %.2f | %.1f | %.2fx | %.3f | %d | %d | %.1f |" % (r["context"], "%.2f GiB" % r["kv_budget_gib"],
          r["decode_ms_median"], r["decode_tok_s"], ratio, r["gpu_hit_rate"], r["host_hits"], r.get("prefetch_hits", 0),
          r["bytes_host_to_gpu"] / 1e6 / max(1, len(r["tokens"]))))
PY
fi
