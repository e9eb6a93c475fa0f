#!/usr/bin/env bash
# Media relay benchmark.
#
#   sipp-scenarios/bench-media.sh [throughput]   relayed RTP streams vs direct sending, same run
#   sipp-scenarios/bench-media.sh gap            media gap across a kill -9 of the active
#
# throughput: `cargo bench --bench media` — STREAMS concurrent streams (default 500) at PPS
#   packets/s each way (default 50) for SECS seconds (default 5), first directly between two
#   sockets, then through understudy's relay; prints packets/s relayed, CPU per 1,000 relayed
#   packets (process CPU of the relay run minus the direct run) and the added one-way latency
#   (p50/p99 of the relayed run minus the direct run). Targets: >= 100,000 packets/s,
#   p99 added latency <= 1 ms at 500 streams (the second pass, 500 x 105 packets/s).
#
# gap: a real soft-phone pair (baresip + PJSIP) in a call through a main/stand-by pair in relay
#   mode with the example configs' timers (keep-alive 200 ms x 3 + 200 ms probe); kill -9 the
#   main; prints the longest interval without RTP at each phone across the takeover (target
#   <= 1.0 s). Needs the debug or release binary in UNDERSTUDY_BIN (default
#   ./target/release/understudy), baresip-core and pjsua2-python (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-throughput}
case "$mode" in
throughput)
	# 500 streams at the usual 50 packets/s, then at 105 packets/s (over 100,000 packets/s
	# through the relay); STREAMS / PPS / SECS override both.
	if [ -n "${PPS:-}" ]; then
		cargo bench --bench media 2>&1 | grep -E "^(bench-media|direct|relayed|SUMMARY)"
	else
		for pps in 50 105; do
			PPS=$pps cargo bench --bench media 2>&1 | grep -E "^(bench-media|direct|relayed|SUMMARY)"
		done
	fi
	;;
gap)
	export UNDERSTUDY_BIN=${UNDERSTUDY_BIN:-./target/release/understudy}
	[ -x "$UNDERSTUDY_BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
	out=$(sip-tests/real/run.sh --media relay 2>&1) || { echo "$out" | tail -40; exit 1; }
	echo "$out" | grep -E "^(PASS|FAIL)|media_gap|detection_s|rebind_s"
	echo "$out" | python3 -c '
import re, sys
gaps = [int(m) for m in re.findall(r"media_gap\s+.*?\s(\d+) ms", sys.stdin.read())]
if gaps:
    print(f"SUMMARY bench-media gap runs={len(gaps)} max_gap_ms={max(gaps)} median_gap_ms={sorted(gaps)[len(gaps)//2]} target_ms=1000")
'
	;;
*)
	echo "usage: $0 [throughput|gap]" >&2
	exit 2
	;;
esac
