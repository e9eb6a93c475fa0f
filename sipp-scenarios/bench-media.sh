#!/usr/bin/env bash
# Media relay benchmark.
#
#   sipp-scenarios/bench-media.sh [throughput]   RTP streams: direct, through understudy's
#                                                relay, through rtpengine, in the same run
#   sipp-scenarios/bench-media.sh gap            media gap across a kill -9 of the active
#
# throughput: `cargo bench --bench media` — STREAMS concurrent streams (default 500) at PPS
#   packets/s each way (default 50) for SECS seconds (default 5), sent three ways: directly
#   between two sockets, through understudy's relay (one thread, in the bench process), and
#   through rtpengine (Debian rtpengine-daemon, installed when missing; started by the bench
#   in userspace-only mode with RTPENGINE_THREADS worker threads, default 1; each stream set up
#   over its ng control protocol with offer/answer), in ROUNDS rounds (default 3; the relays
#   take turns going first). A line per run: sent, received, latency p50/p99, CPU. For each
#   relay the figures are packets/s received and the loss, relay CPU (run time of the relay's
#   own threads, all of rtpengine's) per 1,000 packets and the added one-way latency (p50/p99
#   minus the round's direct run); the last line is one SUMMARY with the median of every
#   figure of both over the rounds (the worst loss) and the ratios understudy/rtpengine
#   (ratio_pps, ratio_cpu_per_1000, ratio_p99_added). Without rtpengine the summary says
#   rtpengine=unavailable. Targets: at least rtpengine's throughput per core (ratio_cpu_per_1000
#   <= 1 at zero loss), p99 added latency <= 1 ms at 500 streams x 105 packets/s (the second
#   pass, over 100,000 packets/s).
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
	if ! command -v rtpengine >/dev/null && [ -z "${RTPENGINE:-}" ]; then
		# The reference. Its packaged service must not start (the bench runs its own daemon):
		# a policy-rc.d that refuses, for the time of the install, unless one is there already.
		policy=""
		if [ ! -e /usr/sbin/policy-rc.d ] && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d 2>/dev/null; then
			chmod +x /usr/sbin/policy-rc.d
			policy=/usr/sbin/policy-rc.d
		fi
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtpengine-daemon >/dev/null ||
			echo "bench-media: rtpengine-daemon not installed; understudy figures only" >&2
		[ -z "$policy" ] || rm -f "$policy"
	fi
	# 500 streams at the usual 50 packets/s, then at 105 packets/s (over 100,000 packets/s
	# through the relay); STREAMS / PPS / SECS / ROUNDS override both.
	if [ -n "${PPS:-}" ]; then
		cargo bench --bench media 2>&1 | grep -E "^(bench-media|direct|relayed|rtpengine|SUMMARY)"
	else
		for pps in 50 105; do
			PPS=$pps cargo bench --bench media 2>&1 | grep -E "^(bench-media|direct|relayed|rtpengine|SUMMARY)"
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
