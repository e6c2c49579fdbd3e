#!/usr/bin/env bash
# Runtime benchmark (issue #6), CPU backend: builds runtime_bench in build-bench, runs it on
# models/tiny, writes ${OUT:-bench/runtime/out}/runtime.json and prints the table last.
#   bash bench/runtime/run.sh                 # 2 runs, medians (≈ 1 min on 2 idle cores)
#   RUNS=1 bash bench/runtime/run.sh -- --decode-tokens 16
# Configured once with -DMNEMO_CUDA=OFF -DMNEMO_BUILD_TESTS=OFF (the bench needs no tests; a half-edited
# tests/CMakeLists.txt elsewhere in the tree then cannot stop it).
# Environment: RUNS (default 2), JOBS (build parallelism, default 2), BUILD_DIR (default build-bench).
# Extra arguments after `--` go to runtime_bench (see its header for the flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/runtime/out}
BUILD_DIR=${BUILD_DIR:-build-bench}
RUNS=${RUNS:-2}
JOBS=${JOBS:-2}
[ "${1:-}" = "--" ] && shift
mkdir -p "$OUT"
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DMNEMO_CUDA=OFF -DMNEMO_BUILD_TESTS=OFF > "$OUT/cmake.log"
fi
cmake --build "$BUILD_DIR" -j"$JOBS" --target runtime_bench > "$OUT/build.log" || { tail -30 "$OUT/build.log"; exit 1; }
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
  echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "compiler $(grep -m1 CMAKE_CXX_COMPILER: "$BUILD_DIR/CMakeCache.txt" | cut -d= -f2) $(grep -m1 CMAKE_BUILD_TYPE: "$BUILD_DIR/CMakeCache.txt" | cut -d= -f2)"
  echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset} loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "busiest processes before the run (the machine may be shared):"
  ps -eo pid,ni,pcpu,etime,comm --sort=-pcpu | head -6
} | tee "$OUT/env.txt"
set +e
"$BUILD_DIR/bench/runtime_bench" --runs "$RUNS" --json "$OUT/runtime.json" "$@" > "$OUT/bench.log" 2>&1
rc=$?
set -e
{ echo "busiest processes after the run:"; ps -eo pid,ni,pcpu,etime,comm --sort=-pcpu | head -6; } >> "$OUT/env.txt"
# The table comes last: progress lines first, then the table the bench prints at its end.
cat "$OUT/bench.log"
exit "$rc"
