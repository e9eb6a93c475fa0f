#!/usr/bin/env bash
# Run the fuzz targets with cargo fuzz (libFuzzer, nightly toolchain).
#
#   fuzz/run.sh SECONDS [TARGET...]   each target for SECONDS (default: all five targets)
#
# Each run starts from the committed seeds (fuzz/seeds/<target>) plus the working corpus
# (fuzz/corpus/<target>, not committed) and stops at the first crash or timeout, which
# libFuzzer writes to fuzz/artifacts/<target>/. A crash becomes a regression: copy the file to
# fuzz/regressions/<target>/ (replayed by `cargo test`) and fix the code. A summary line per
# target gives executions, coverage and corpus size.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(message framing server bodies admin)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal \
    || { echo "fuzz/run.sh: cargo fuzz needs the nightly toolchain, which cannot be installed here" >&2; exit 1; }
fi

# Debug assertions on (integer overflow panics), optimised.
cargo +nightly fuzz build --release --debug-assertions 2>&1 | tail -n 2 \
  || { echo "fuzz/run.sh: build failed" >&2; exit 1; }
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run --release --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=16384 \
      -print_final_stats=1 >"$log" 2>&1; then
    status=1
    echo "fuzz/run.sh: $t FAILED"; grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  cov=$(grep -aoE '(DONE|INITED) +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 \
    | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || echo '?')
  echo "fuzz $t: ${secs}s executions=$runs $cov"
  rm -f "$log"
done
exit $status
