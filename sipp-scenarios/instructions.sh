#!/usr/bin/env bash
# Instructions per call: the stable cost figure (a count, not a time: the same on a busy or an
# idle machine). Runs benches/calls.rs (the whole sans-IO server, no sockets) under
# valgrind's callgrind, counting only the server's own work — parsing each datagram and
# handling it, handing out what it sends and its CDR records, its timers (`feed`, `drain`,
# `tick` in the bench) — for CALLS_N calls: INVITE/100/180/200/ACK through both legs, held,
# then BYE/200 on both legs, every transaction expired.
#
#   sipp-scenarios/instructions.sh            (CALLS_N=5000 by default; about 30 s)
#
# Prints `instructions_per_call=<n>` (and the setup/teardown split is in the callgrind file,
# target/callgrind.calls.out, for callgrind_annotate). Not included: socket syscalls, the
# CDR writer thread's SQLite inserts, tokio's scheduling (bench-cps.sh measures those as CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${CALLS_N:-5000}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 2; }
bin=$(cargo bench --bench calls --no-run 2>&1 | sed -n 's/.*Executable benches\/calls.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bin" ] || { echo "instructions.sh: the calls bench did not build" >&2; exit 1; }
out=target/callgrind.calls.out
CALLS_N=$n valgrind --tool=callgrind --callgrind-out-file="$out" \
  --toggle-collect='calls::feed' --toggle-collect='calls::drain' --toggle-collect='calls::tick' \
  "$bin" >/dev/null 2>target/callgrind.calls.log \
  || { tail -5 target/callgrind.calls.log >&2; exit 1; }
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' || true)
[ -n "$total" ] && [ "$total" -gt 0 ] || { echo "instructions.sh: no instructions counted (toggle names?)" >&2; exit 1; }
echo "instructions calls=$n total=$total instructions_per_call=$((total / n))"
