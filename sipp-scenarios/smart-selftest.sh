#!/usr/bin/env bash
# Self-test of the SIPp smart endpoints, without understudy: smart-uac.xml (+
# smart-notify.xml) against a fake PBX (smart-fake-pbx.xml) that plays the
# call and then the new active's RFC 3725 re-bind, and a dialog query probe
# (smart-query-probe.xml) that plays the new active's SUBSCRIBE.
#
#   rebind-ok        offerless re-INVITE -> the smart caller answers 200 with an
#                    offer; the ACK carries the answer; BYE -> 200. During the
#                    hold, the probe's SUBSCRIBE sip:c1@<caller> gets 200 and a
#                    NOTIFY (terminated, dialog-info) with the call's dialog,
#                    confirmed, remote-tag = the fake PBX's tag.
#                    Expect: caller 1 successful, fake PBX 1, probe 1.
#   ack-no-answer    the same, but the ACK has no SDP: the smart caller must fail
#                    the call (FailedRegexpDoesntMatch = 1) and still hang up.
#   not-a-notifier   smart-notify.xml with -set notifier 489: the probe gets 489.
#
# One PASS/FAIL line per case, a SUMMARY line, exit 1 on any failure. ~10 s.
# Ports (UDP, 127.0.0.1): SELFTEST_PORT [5960] .. +2, media 16500.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
P=${SELFTEST_PORT:-5960}
PBX=$P UAC=$((P + 1)) PROBE=$((P + 2))
command -v sipp >/dev/null || { echo "ERROR: sipp not installed (apt-get install sip-tester)" >&2; exit 2; }
for p in $PBX $UAC $PROBE 16500; do
	if ss -Hlnu 2>/dev/null | awk '{print $4}' | grep -qE "^(127\.0\.0\.1|0\.0\.0\.0|\*):$p\$"; then
		echo "ERROR: UDP port $p in use (set SELFTEST_PORT)" >&2; exit 2
	fi
done

W=$(mktemp -d /tmp/smart-selftest.XXXXXX)
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; }
trap cleanup EXIT

# sipp_run TAG ARGS... (background, bounded) -> PID
sipp_run() {
	local tag=$1; shift
	timeout -k 2 20 sipp "$@" -timeout 15s -nostdin -trace_stat -stf "$W/$tag.csv" -fd 1 \
		-trace_err -error_file "$W/$tag.err" -trace_msg -message_file "$W/$tag.msg" \
		>/dev/null 2>"$W/$tag.stderr" &
	PID=$!
	PIDS+=("$PID")
}

# counts TAG -> "successful failed regexp_failed"
counts() {
	python3 - "$W/$1.csv" <<-'EOF'
	import sys
	try:
	    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
	    h, x = rows[0], rows[-1]
	    g = lambda k: x[h.index(k)] if k in h else "0"
	    print(g("SuccessfulCall(C)"), g("FailedCall(C)"), g("FailedRegexpDoesntMatch(C)"))
	except Exception:
	    print("? ? ?")
	EOF
}

PASSED=0 FAILED=0
verdict() { # NAME OK DETAILS
	if [ "$2" = 1 ]; then PASSED=$((PASSED + 1)); echo "PASS $1 $3"; else FAILED=$((FAILED + 1)); echo "FAIL $1 $3 (logs: $W)"; fi
}

# caller ACK_SDP NOTIFIER PROBE_EXPECT -> runs fake PBX + smart caller (+ probe)
caller_case() {
	local ack=$1 notifier=$2 expect=$3
	rm -f "$W"/*.csv
	mkdir -p "$W/q"; : >"$W/q/_trunk.xml"; : >"$W/q/c1.xml"
	sipp_run pbx -sf "$HERE/smart-fake-pbx.xml" -set ack_sdp "$ack" -set wait 1500 -i 127.0.0.1 -p "$PBX" -m 1
	local pbx=$PID
	sleep 0.3
	sipp_run uac 127.0.0.1:"$PBX" -sf "$HERE/smart-uac.xml" -oocsf "$HERE/smart-notify.xml" \
		-set qdir "$W/q" -set notifier "$notifier" -set bye_after 200 -set callee_suffix 1 \
		-i 127.0.0.1 -p "$UAC" -mp 16500 -m 1 -d 10000
	local uac=$PID
	sleep 0.8 # the call is up and held; the re-INVITE comes at ~1.5 s
	sipp_run probe 127.0.0.1:"$UAC" -sf "$HERE/smart-query-probe.xml" -set phone c1 \
		-set tag ufeedfeedfeedfeeda -set expect "$expect" -i 127.0.0.1 -p "$PROBE" -m 1
	local probe=$PID
	wait "$probe"; PROBE_RC=$?
	wait "$uac"; UAC_RC=$?
	wait "$pbx"; PBX_RC=$?
	PIDS=()
	read -r UAC_OK UAC_KO UAC_RE < <(counts uac)
	read -r PBX_OK PBX_KO x < <(counts pbx)
	read -r PROBE_OK PROBE_KO x < <(counts probe)
}

echo "smart endpoint self-test: ports $PBX-$PROBE, logs in $W"

caller_case 1 1 notify
ok=0
[ "$UAC_RC" = 0 ] && [ "$UAC_OK" = 1 ] && [ "$UAC_KO" = 0 ] && [ "$PBX_OK" = 1 ] && [ "$PROBE_OK" = 1 ] && [ "$PROBE_KO" = 0 ] && ok=1
verdict rebind-ok $ok "caller ok=$UAC_OK failed=$UAC_KO rc=$UAC_RC; fake pbx ok=$PBX_OK; probe (NOTIFY with the call's dialog) ok=$PROBE_OK failed=$PROBE_KO"

caller_case 0 1 notify
ok=0
[ "$UAC_RC" != 0 ] && [ "$UAC_OK" = 0 ] && [ "$UAC_KO" = 1 ] && [ "$UAC_RE" = 1 ] && [ "$PBX_OK" = 1 ] && ok=1
grep -q "Failed regexp match" "$W/uac.err" 2>/dev/null || ok=0
verdict ack-no-answer $ok "caller ok=$UAC_OK failed=$UAC_KO regexp_failed=$UAC_RE rc=$UAC_RC (want the call failed); fake pbx got the BYE: ok=$PBX_OK"

caller_case 1 489 489
ok=0
[ "$PROBE_OK" = 1 ] && [ "$PROBE_KO" = 0 ] && [ "$UAC_OK" = 1 ] && ok=1
verdict not-a-notifier $ok "probe got 489: ok=$PROBE_OK failed=$PROBE_KO; caller ok=$UAC_OK"

echo "SUMMARY smart-selftest passed=$PASSED failed=$FAILED logs=$W"
[ "$FAILED" = 0 ] && rm -rf "$W"
[ "$FAILED" = 0 ]
