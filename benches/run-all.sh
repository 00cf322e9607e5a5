#!/usr/bin/env bash
# Runs the pipeline, pub-sub and request-reply benches RUNS times (default 3) in sequence, keeps
# each run's console output beside its raw results (target/shmq-bench/<bench>-<UTC time>.json
# and .log), then prints the markdown tables of medians of runs (also saved as
# target/shmq-bench/report-<UTC time>.md) and draws the plot with bench-report.
#
#   benches/run-all.sh              # 3 runs of each (~25 min), plot to docs/bench.svg
#   benches/run-all.sh 1            # one run of each
#   SHMQ_BENCH_SMOKE=1 benches/run-all.sh 1
#                                   # checks the harness in about a minute: tiny counts, numbers
#                                   # meaningless, the plot goes to target/shmq-bench/smoke.svg
#
# Measure on a quiet machine: nothing else building or running. SHMQ_BENCH_PLOT overrides where
# the plot goes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

runs="${1:-3}"
benches=(pipeline pubsub reqrep)
target_dir="$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
export SHMQ_BENCH_OUT="${SHMQ_BENCH_OUT:-$target_dir/shmq-bench}"
mkdir -p "$SHMQ_BENCH_OUT"
if [[ -n "${SHMQ_BENCH_SMOKE:-}" && "${SHMQ_BENCH_SMOKE}" != 0 ]]; then
  plot="${SHMQ_BENCH_PLOT:-$SHMQ_BENCH_OUT/smoke.svg}"
else
  plot="${SHMQ_BENCH_PLOT:-docs/bench.svg}"
fi

# Build everything first, so no run's log (or timing) includes a compile.
cargo bench --no-run "${benches[@]/#/--bench=}"
cargo build --release -p bench-report

results=()
for run in $(seq 1 "$runs"); do
  for bench in "${benches[@]}"; do
    log="$SHMQ_BENCH_OUT/$bench-run$run.log.tmp"
    echo "=== run $run of $runs: cargo bench --bench $bench" >&2
    cargo bench --bench "$bench" 2>&1 | tee "$log"
    json="$(sed -n 's/^raw results: //p' "$log" | tail -1)"
    if [[ -z "$json" || ! -f "$json" ]]; then
      echo "run-all: cargo bench --bench $bench wrote no raw results (see $log)" >&2
      exit 1
    fi
    mv "$log" "${json%.json}.log"
    results+=("$json")
  done
done

report="$SHMQ_BENCH_OUT/report-$(date -u +%Y%m%dT%H%M%SZ).md"
"$target_dir/release/bench-report" "${results[@]}" --out "$plot" | tee "$report"
echo "run-all: tables in $report, plot in $plot; raw results and console logs:" >&2
printf '  %s\n' "${results[@]}" >&2
