#!/usr/bin/env bash
# Instructions per call: the stable cost figure (a count, not a time: the same on a busy or an
# idle machine). Runs benches/calls.rs (the whole sans-IO server, no sockets) under
# valgrind's callgrind, counting only the server's own work — parsing each datagram and
# handling it, handing out what it sends and its CDR records, its timers (`feed`, `drain`,
# `tick` in the bench) — for CALLS_N calls: INVITE/100/180/200/ACK through both legs, held,
# then BYE/200 on both legs, every transaction expired.
#
#   sipp-scenarios/instructions.sh                    (CALLS_N=5000 by default; about 30 s)
#   BASE_REV=<commit> sipp-scenarios/instructions.sh  the same for <commit> with this bench, and
#                                                     the ratio (builds <commit> once, in /tmp)
#
# Prints `instructions_per_call=<n>` (and the setup/teardown split is in the callgrind file,
# target/callgrind.calls.out, for callgrind_annotate). Not included: socket syscalls, the
# CDR writer thread's SQLite inserts, tokio's scheduling (bench-cps.sh measures those as CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${CALLS_N:-5000}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 2; }
# count <cargo project dir> <target dir>: instructions per call of that tree's server, with
# this tree's bench (the bench uses only the server's public interface).
count() {
  local dir=$1 target=$2 bin out total
  bin=$(cd "$dir" && CARGO_TARGET_DIR=$target cargo bench --bench calls --no-run 2>&1 \
        | sed -n 's/.*Executable benches\/calls.rs (\(.*\))/\1/p' | tail -1)
  case $bin in /*) ;; *) bin=$dir/$bin ;; esac
  [ -x "$bin" ] || { echo "instructions.sh: the calls bench did not build in $dir" >&2; return 1; }
  out=$target/callgrind.calls.out
  CALLS_N=$n valgrind --tool=callgrind --callgrind-out-file="$out" \
    --toggle-collect='calls::feed' --toggle-collect='calls::drain' --toggle-collect='calls::tick' \
    "$bin" >/dev/null 2>"$target/callgrind.calls.log" \
    || { tail -5 "$target/callgrind.calls.log" >&2; return 1; }
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' || true)
  [ -n "$total" ] && [ "$total" -gt 0 ] || { echo "instructions.sh: no instructions counted (toggle names?)" >&2; return 1; }
  echo $((total / n))
}

head_count=$(count "$PWD" "$PWD/target")
if [ -z "${BASE_REV:-}" ]; then
  echo "instructions calls=$n instructions_per_call=$head_count"
  exit 0
fi
# The same count for an earlier revision, with this bench, in the same run.
base_dir=/tmp/understudy-instructions-$BASE_REV
if [ ! -d "$base_dir/src" ]; then
  git worktree add --detach --force "$base_dir/src" "$BASE_REV" >/dev/null
fi
cp benches/calls.rs "$base_dir/src/benches/calls.rs"
# A revision from before mimalloc (src/main.rs's allocator) counts with the allocator it
# shipped with, the system's: the bench's counting allocator delegates to that instead.
if ! grep -q '^mimalloc' "$base_dir/src/Cargo.toml"; then
  sed -i 's/^use mimalloc::MiMalloc;/use std::alloc::System as MiMalloc;/' "$base_dir/src/benches/calls.rs"
fi
base_count=$(count "$base_dir/src" "$base_dir/target")
ratio=$(awk -v a="$head_count" -v b="$base_count" 'BEGIN { printf "%.3f", a / b }')
echo "instructions calls=$n base=$BASE_REV base_per_call=$base_count head_per_call=$head_count ratio=$ratio"
