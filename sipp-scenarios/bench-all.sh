#!/usr/bin/env bash
# Every performance figure in one run, each beside the reference measured in the same run:
#
#   1. instructions per call (callgrind, sipp-scenarios/instructions.sh) for this tree and for
#      BASE_REV (default: the last commit before the performance work), and their ratio;
#   2. max call rate and CPU per call, understudy and Kamailio 5.6 between the same SIPp
#      endpoints, CDRs on (sipp-scenarios/bench-cps.sh cps);
#   3. memory per held call at CONC_N (100,000) concurrent calls, understudy (CDRs on) and
#      Kamailio with dialogs (sipp-scenarios/bench-cps.sh concurrent);
#   4. the media relay against rtpengine, same streams (sipp-scenarios/bench-media.sh
#      throughput, 500 streams at 105 packets/s each way: about 105,000 packets/s);
#   5. the takeover of TAKEOVER_N (100,000) held calls learnt from the digest
#      (sipp-scenarios/bench-takeover.sh nodialog): detection, time to the last re-bind, the
#      stand-by's memory before and after, SIPp's retransmissions (calls held 240 s past their
#      set-up, so the figure is the time to the last re-bind rather than a cut-off).
#
#   cargo build --release && sipp-scenarios/bench-all.sh
#
# Each part prints its own lines and SUMMARY; the last line, `SUMMARY bench-all`, repeats every
# part's SUMMARY. A part that fails is reported as failed and the others still run. Takes about
# 30 minutes; the machine should be otherwise idle (bench-cps waits for quiet and reports the
# CPU others used). The SIPp endpoints run with 4 MiB socket buffers (SIPP_BUF), as in each
# part's own script.
set -uo pipefail
cd "$(dirname "$0")/.."
BASE_REV=${BASE_REV:-6e4dddb}
CONC_N=${CONC_N:-100000}
CONC_RATE=${CONC_RATE:-2000}
TAKEOVER_N=${TAKEOVER_N:-100000}
TAKEOVER_RATE=${TAKEOVER_RATE:-2000}
[ -x ./target/release/understudy ] || { echo "bench-all.sh: cargo build --release first" >&2; exit 2; }

summaries=()
part() {
	local name=$1; shift
	echo "== $name: $*"
	local log; log=$(mktemp)
	"$@" 2>&1 | tee "$log"
	local rc=${PIPESTATUS[0]}
	local s; s=$(grep -E '^(SUMMARY|instructions )' "$log" | tr '\n' ' ')
	[ -n "$s" ] || s="$name: no summary (exit $rc)"
	summaries+=("[$name rc=$rc] $s")
	rm -f "$log"
}

part instructions env BASE_REV="$BASE_REV" sipp-scenarios/instructions.sh
part cps sipp-scenarios/bench-cps.sh cps
part concurrent env CONC_RATE="$CONC_RATE" sipp-scenarios/bench-cps.sh concurrent "$CONC_N"
part media env PPS=105 sipp-scenarios/bench-media.sh throughput
part takeover env RATE="$TAKEOVER_RATE" BYE_SPREAD_MS=20000 HOLD_MARGIN_S=240 KEEP=0 \
	sipp-scenarios/bench-takeover.sh nodialog "$TAKEOVER_N"
echo "SUMMARY bench-all ${summaries[*]}"
