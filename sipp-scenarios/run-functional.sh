#!/usr/bin/env bash
# Functional SIPp checks against a real understudy process.
#
# For every scenario a FRESH server is started (own temp state dir and CDR
# database, config equivalent to config/single.toml), the SIPp scenario(s)
# run bounded (-m, -timeout, and an outer `timeout`), then the server gets
# SIGTERM (it flushes CDRs) and the results are checked:
#
#   options              10 OPTIONS -> 10 x 200 with Allow (INVITE, BYE)
#   register             200 REGISTERs at 50/s as alice: 200 ok, 0 failed,
#                        alice listed in GET /registrations
#   register-wrong-pw    12 REGISTERs with a wrong password: all end in 403
#                        (10 after a 401 challenge, then 403 "Too Many Failed
#                        Attempts"), no 200 on the wire, no registration
#   call-basic           CALLS calls alice -> bob, caller hangs up: CDRs all normal
#   call-callee-hangup   CALLS_SMALL calls, bob hangs up: CDRs all normal
#   call-cancel          CALLS_SMALL calls, alice CANCELs while ringing: CDRs all cancelled
#   call-busy            CALLS_SMALL calls, bob answers 486: CDRs all busy
#
# Each check: SIPp exit code 0, SuccessfulCall == calls, FailedCall == 0
# (from SIPp's -trace_stat CSV), for the call checks the same on bob's side,
# no call left in GET /status after the run, and the CDR end_reason counts.
# One PASS/FAIL line per check; exit status 1 if any failed. On a failure the
# server log tail and SIPp's error log are printed. Takes ~30 s.
#
# Builds nothing: run `cargo build --release` first.
#
# Environment knobs (defaults in brackets):
#   UNDERSTUDY_BIN [./target/release/understudy, relative to the repo root]
#   PBX_PORT [5060]    SIP port (UDP+TCP) of the server under test, 127.0.0.1
#   ADMIN_PORT [8060]  its admin HTTP port
#   ALICE_PORT [5091]  BOB_PORT [5090]   the SIPp phones (not 5070/5080:
#                      those are trunk addresses that skip authentication)
#   CALLS [20]  CALLS_SMALL [10]  RATE [10] (calls/s)  HOLD_MS [500]
#   ONLY ["" = all]    space-separated check names to run, e.g. "call-cancel"
#   KEEP [0]           1 = keep the temp dir with logs even when all pass
#   RUST_LOG [debug]   server log level (the log is only shown on failure)
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

BIN=${UNDERSTUDY_BIN:-./target/release/understudy}
case $BIN in /*) ;; *) [ -n "${UNDERSTUDY_BIN:-}" ] && BIN="$PWD/$BIN" || BIN="$REPO/${BIN#./}" ;; esac
PBX_PORT=${PBX_PORT:-5060}
ADMIN_PORT=${ADMIN_PORT:-8060}
ALICE_PORT=${ALICE_PORT:-5091}
BOB_PORT=${BOB_PORT:-5090}
CALLS=${CALLS:-20}
CALLS_SMALL=${CALLS_SMALL:-10}
RATE=${RATE:-10}
HOLD_MS=${HOLD_MS:-500}
ONLY=${ONLY:-}
KEEP=${KEEP:-0}
export RUST_LOG=${RUST_LOG:-debug}

die() { echo "ERROR: $*" >&2; exit 2; }

[ -x "$BIN" ] || die "understudy binary not found at $BIN: build it with 'cargo build --release' or set UNDERSTUDY_BIN"
command -v sipp >/dev/null || die "sipp not installed (apt-get install sip-tester)"
command -v python3 >/dev/null || die "python3 not installed"
command -v curl >/dev/null || die "curl not installed"
for p in 5070 5080; do
	[ "$ALICE_PORT" = $p ] || [ "$BOB_PORT" = $p ] && die "ALICE_PORT/BOB_PORT must not be a trunk port (5070/5080)"
done

# Is anything bound to 127.0.0.1:PORT (any wildcard too)? proto: u|t
port_busy() {
	ss -Hln"$2" 2>/dev/null | awk '{print $4}' | grep -qE "^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]|\[::ffff:127\.0\.0\.1\]):$1\$"
}
for p in "$PBX_PORT u" "$PBX_PORT t" "$ADMIN_PORT t" "$ALICE_PORT u" "$BOB_PORT u"; do
	set -- $p
	port_busy "$1" "$2" && die "port $1 ($2) on 127.0.0.1 is in use; stop whatever uses it or set PBX_PORT/ADMIN_PORT/ALICE_PORT/BOB_PORT"
done

WORK=$(mktemp -d /tmp/understudy-functional.XXXXXX)
SERVER_PID=""
SIPP_PIDS=()
cleanup() {
	local p
	for p in "${SIPP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	if [ -n "$SERVER_PID" ]; then
		kill -TERM "$SERVER_PID" 2>/dev/null
		sleep 0.5
		kill -KILL "$SERVER_PID" 2>/dev/null
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASSED=0 FAILED=0 FAILED_NAMES=""

# ---------------------------------------------------------------------------
# server

# start_server DIR: config equivalent to config/single.toml (users alice and
# bob, trunks carrier 127.0.0.1:5070 / gateway 127.0.0.1:5080), with the SIP
# and admin ports above and state + CDRs in DIR.
start_server() {
	local d=$1
	mkdir -p "$d/state"
	cat > "$d/understudy.toml" <<-EOF
	[node]
	name = "functional"
	home_role = "main"
	sip_udp = "127.0.0.1:$PBX_PORT"
	sip_tcp = "127.0.0.1:$PBX_PORT"
	domain = "pbx.local"

	[admin]
	listen = "127.0.0.1:$ADMIN_PORT"

	[state]
	dir = "$d/state"

	[registrar]
	min_expires = 60
	max_expires = 3600
	default_expires = 3600

	[[users]]
	name = "alice"
	password = "alice-secret"

	[[users]]
	name = "bob"
	password = "bob-secret"

	[[trunks]]
	name = "carrier"
	address = "127.0.0.1:5070"
	prefixes = ["9"]
	strip = 1

	[[trunks]]
	name = "gateway"
	address = "127.0.0.1:5080"
	prefixes = ["0"]
	strip = 0

	[media]
	mode = "${MEDIA_MODE:-bypass}"
	rtp_ports = "31000-31999"

	[cdr]
	enabled = true
	path = "$d/state/cdr.sqlite"
	EOF
	"$BIN" run --config "$d/understudy.toml" >"$d/server.log" 2>&1 &
	SERVER_PID=$!
	local i
	for i in $(seq 1 100); do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			wait "$SERVER_PID" 2>/dev/null
			SERVER_PID=""
			return 1
		fi
		curl -sf -m 1 "http://127.0.0.1:$ADMIN_PORT/status" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# stop_server: SIGTERM (CDRs are flushed), wait up to 5 s, then KILL.
stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null
	local i
	for i in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$SERVER_PID" 2>/dev/null; then
		echo "  server did not exit within 5 s of SIGTERM; killing" >>"$CUR/notes"
		kill -KILL "$SERVER_PID" 2>/dev/null
	fi
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=""
}

admin_get() { curl -sf -m 2 "http://127.0.0.1:$ADMIN_PORT$1"; }

# calls in progress according to GET /status (waits up to 3 s for 0)
calls_left() {
	local i n
	for i in $(seq 1 30); do
		n=$(admin_get /status | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["calls"])' 2>/dev/null)
		[ "$n" = 0 ] && break
		sleep 0.1
	done
	echo "${n:-?}"
}

# cdr_counts DB -> "normal=20 busy=1" (sorted), "none" if empty, "nodb" if missing
cdr_counts() {
	python3 - "$1" <<-'EOF'
	import os, sqlite3, sys
	if not os.path.exists(sys.argv[1]):
	    print("nodb"); sys.exit()
	rows = sqlite3.connect(sys.argv[1]).execute(
	    "select end_reason, count(*) from cdr group by end_reason order by end_reason").fetchall()
	print(" ".join(f"{r}={n}" for r, n in rows) or "none")
	EOF
}

# ---------------------------------------------------------------------------
# SIPp

# run_sipp TAG TIMEOUT_S ARGS... : runs SIPp in the foreground, bounded.
# Leaves $CUR/TAG.{csv,err,screen,stderr} and sets SIPP_RC.
run_sipp() {
	local tag=$1 tmo=$2; shift 2
	timeout -k 5 $((tmo + 10)) sipp "$@" -timeout "${tmo}s" -nostdin \
		-trace_stat -stf "$CUR/$tag.csv" -fd 1 \
		-trace_err -error_file "$CUR/$tag.err" \
		-trace_screen -screen_file "$CUR/$tag.screen" \
		>/dev/null 2>"$CUR/$tag.stderr"
	SIPP_RC=$?
}

# start_sipp_bg TAG TIMEOUT_S ARGS... : same, in the background; sets BG_PID.
start_sipp_bg() {
	local tag=$1 tmo=$2; shift 2
	timeout -k 5 $((tmo + 10)) sipp "$@" -timeout "${tmo}s" -nostdin \
		-trace_stat -stf "$CUR/$tag.csv" -fd 1 \
		-trace_err -error_file "$CUR/$tag.err" \
		-trace_screen -screen_file "$CUR/$tag.screen" \
		>/dev/null 2>"$CUR/$tag.stderr" &
	BG_PID=$!
	SIPP_PIDS+=("$BG_PID")
}

# wait_bg PID -> SIPP_RC
wait_bg() {
	wait "$1"; SIPP_RC=$?
	local keep=() p
	for p in "${SIPP_PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
	SIPP_PIDS=("${keep[@]}")
}

# sipp_counts TAG -> "successful failed" from the last line of the -trace_stat
# CSV (columns found by name); falls back to the screen dump.
sipp_counts() {
	python3 - "$CUR/$1.csv" "$CUR/$1.screen" <<-'EOF'
	import re, sys
	try:
	    lines = [l for l in open(sys.argv[1]) if l.strip()]
	    head = lines[0].rstrip("\n").split(";")
	    last = lines[-1].rstrip("\n").split(";")
	    print(int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")]))
	except Exception:
	    try:
	        s = open(sys.argv[2]).read()
	        ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", s)[-1]
	        ko = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", s)[-1]
	        print(ok, ko)
	    except Exception:
	        print("? ?")
	EOF
}

# expect_sipp TAG CALLS : appends a problem to $CUR/problems unless SIPp
# exited 0 with CALLS successful and 0 failed calls.
expect_sipp() {
	local tag=$1 want=$2 ok ko
	read -r ok ko < <(sipp_counts "$tag")
	if [ "$SIPP_RC" != 0 ] || [ "$ok" != "$want" ] || [ "$ko" != 0 ]; then
		echo "sipp $tag: rc=$SIPP_RC successful=$ok failed=$ko (want rc=0 successful=$want failed=0)" >>"$CUR/problems"
	fi
	SUMMARY_SIPP="$SUMMARY_SIPP $tag=$ok/$want"
}

problem() { echo "$*" >>"$CUR/problems"; }

# ---------------------------------------------------------------------------
# checks

check_options() {
	run_sipp options 20 127.0.0.1:"$PBX_PORT" -sf "$HERE/options.xml" \
		-i 127.0.0.1 -p "$ALICE_PORT" -m 10 -r 10
	expect_sipp options 10
}

check_register() {
	run_sipp register 30 127.0.0.1:"$PBX_PORT" -sf "$HERE/register.xml" \
		-au alice -ap alice-secret -i 127.0.0.1 -p "$ALICE_PORT" -m 200 -r 50
	expect_sipp register 200
	admin_get /registrations | grep -q '"aor":"alice"' || problem "alice not in GET /registrations"
}

check_register_wrong_pw() {
	run_sipp register-wrong-pw 30 127.0.0.1:"$PBX_PORT" -sf "$HERE/register-wrong-password.xml" \
		-au alice -ap not-the-password -i 127.0.0.1 -p "$ALICE_PORT" -m 12 -r 10 \
		-trace_msg -message_file "$CUR/register-wrong-pw.msg"
	expect_sipp register-wrong-pw 12
	local n200 n403
	n200=$(grep -c '^SIP/2.0 200' "$CUR/register-wrong-pw.msg" 2>/dev/null)
	n403=$(grep -c '^SIP/2.0 403' "$CUR/register-wrong-pw.msg" 2>/dev/null)
	[ "${n200:-0}" = 0 ] || problem "$n200 x 200 received for a wrong password"
	[ "${n403:-0}" = 12 ] || problem "$n403 x 403 received (want 12)"
	admin_get /registrations | grep -q '"aor":"alice"' && problem "alice is registered after wrong-password REGISTERs"
	SUMMARY_SIPP="$SUMMARY_SIPP 403s=${n403:-0} 200s=${n200:-0}"
}

# call_check ALICE_SCENARIO BOB_MODE CALLS WANT_CDR
call_check() {
	local scen=$1 mode=$2 n=$3 want=$4
	# bob registers from the port its UAS will listen on
	run_sipp bob-register 15 127.0.0.1:"$PBX_PORT" -sf "$HERE/register.xml" \
		-au bob -ap bob-secret -set user bob -i 127.0.0.1 -p "$BOB_PORT" -m 1
	expect_sipp bob-register 1
	[ -s "$CUR/problems" ] && return
	local gen=$(( (n + RATE - 1) / RATE ))
	local tmo=$(( gen + HOLD_MS / 1000 + 20 ))
	start_sipp_bg bob $((tmo + 5)) -sf "$HERE/uas-bob.xml" -set mode "$mode" \
		-i 127.0.0.1 -p "$BOB_PORT" -mp 17000 -cp 18889 -m "$n" -d "$HOLD_MS"
	local bob=$BG_PID
	sleep 0.3
	run_sipp alice "$tmo" 127.0.0.1:"$PBX_PORT" -sf "$HERE/$scen.xml" \
		-au alice -ap alice-secret -i 127.0.0.1 -p "$ALICE_PORT" -mp 16000 -cp 18888 \
		-m "$n" -r "$RATE" -d "$HOLD_MS" -l "$n"
	expect_sipp alice "$n"
	wait_bg "$bob"
	expect_sipp bob "$n"
	local left
	left=$(calls_left)
	[ "$left" = 0 ] || problem "GET /status still shows $left call(s) after the run"
	stop_server
	local got
	got=$(cdr_counts "$CUR/state/cdr.sqlite")
	[ "$got" = "$want" ] || problem "CDR end_reason counts: got '$got', want '$want'"
	SUMMARY_SIPP="$SUMMARY_SIPP cdr:[$got]"
}

# relay-rtp: media relay mode. SIPp's built-in uac_pcap (from the gateway trunk address)
# plays a G.711 recording and RFC 2833 events to the callee, SIPp's uas (the carrier trunk)
# echoes the RTP; every packet crosses the relay twice. The CDR's per-direction packet
# counters must match what the recordings hold within 1 %.
check_relay_rtp() {
	local n=3 pdir="$CUR/play"
	mkdir -p "$pdir/pcap"
	cp /usr/share/sip-tester/g711a.pcap /usr/share/sip-tester/dtmf_2833_1.pcap "$pdir/pcap/" 2>/dev/null \
		|| { problem "SIPp's pcap files are missing (/usr/share/sip-tester)"; return; }
	local per_call
	per_call=$(python3 - "$pdir/pcap/g711a.pcap" "$pdir/pcap/dtmf_2833_1.pcap" <<-'EOF'
	import struct, sys
	n = 0
	for f in sys.argv[1:]:
	    d = open(f, "rb").read(); off = 24
	    while off + 16 <= len(d):
	        incl = struct.unpack("<I", d[off + 8:off + 12])[0]; off += 16 + incl; n += 1
	print(n)
	EOF
	)
	start_sipp_bg uas 40 -sn uas -rtp_echo -i 127.0.0.1 -p 5070 -mp 17000 -m "$n"
	local uas=$BG_PID
	sleep 0.3
	pushd "$pdir" >/dev/null || return
	run_sipp uac 40 127.0.0.1:"$PBX_PORT" -sn uac_pcap -s 91234 \
		-i 127.0.0.1 -p 5080 -mp 16000 -m "$n" -r 1 -l "$n"
	popd >/dev/null || return
	expect_sipp uac "$n"
	wait_bg "$uas"
	stop_server
	python3 - "$CUR/state/cdr.sqlite" "$per_call" "$n" >>"$CUR/problems" <<-'EOF'
	import sqlite3, sys
	db, per_call, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
	rows = sqlite3.connect(db).execute(
	    "select end_reason, a_to_b_packets, b_to_a_packets from cdr").fetchall()
	if len(rows) != n:
	    print(f"{len(rows)} CDR rows, want {n}")
	for reason, ab, ba in rows:
	    for name, got in (("a_to_b", ab), ("b_to_a", ba)):
	        if got is None or abs(got - per_call) > per_call / 100:
	            print(f"CDR {name}_packets={got}, sent {per_call} (more than 1 % apart)")
	    if reason != "normal":
	        print(f"end_reason {reason}")
	EOF
	SUMMARY_SIPP="$SUMMARY_SIPP rtp_per_call=$per_call"
}

check_call_basic()         { call_check call-basic         answer "$CALLS"       "normal=$CALLS"; }
check_call_callee_hangup() { call_check call-callee-hangup hangup "$CALLS_SMALL" "normal=$CALLS_SMALL"; }
check_call_cancel()        { call_check call-cancel        cancel "$CALLS_SMALL" "cancelled=$CALLS_SMALL"; }
check_call_busy()          { call_check call-busy          busy   "$CALLS_SMALL" "busy=$CALLS_SMALL"; }

# run_check NAME FUNCTION
run_check() {
	local name=$1 fn=$2 t0 t1
	if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $name "* ]]; then return; fi
	CUR="$WORK/$name"; mkdir -p "$CUR"; : >"$CUR/problems"; : >"$CUR/notes"
	SUMMARY_SIPP=""
	t0=$(date +%s.%N)
	if start_server "$CUR"; then
		"$fn"
	else
		problem "server did not start (or /status did not answer within 10 s)"
	fi
	stop_server
	t1=$(date +%s.%N)
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	if [ -s "$CUR/problems" ]; then
		FAILED=$((FAILED + 1)); FAILED_NAMES="$FAILED_NAMES $name"
		echo "FAIL $name (${secs}s)$SUMMARY_SIPP"
		sed 's/^/  - /' "$CUR/problems"
		cat "$CUR/notes"
		echo "  --- server log (last 30 lines): $CUR/server.log"
		tail -n 30 "$CUR/server.log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g; s/^/  | /'
		local f
		for f in "$CUR"/*.err "$CUR"/*.stderr; do
			[ -s "$f" ] || continue
			echo "  --- $(basename "$f") (last 20 lines)"
			grep -v "^Resolving remote host" "$f" | tail -n 20 | sed 's/^/  | /'
		done
	else
		PASSED=$((PASSED + 1))
		echo "PASS $name (${secs}s)$SUMMARY_SIPP"
	fi
}

echo "understudy functional checks: $BIN, SIP 127.0.0.1:$PBX_PORT, admin 127.0.0.1:$ADMIN_PORT, logs in $WORK"
T0=$(date +%s)
run_check options            check_options
run_check register           check_register
run_check register-wrong-pw  check_register_wrong_pw
run_check call-basic         check_call_basic
run_check call-callee-hangup check_call_callee_hangup
run_check call-cancel        check_call_cancel
run_check call-busy          check_call_busy
MEDIA_MODE=relay run_check relay-rtp check_relay_rtp
T1=$(date +%s)

echo "SUMMARY functional passed=$PASSED failed=$FAILED${FAILED_NAMES:+ (failed:$FAILED_NAMES)} seconds=$((T1 - T0)) logs=$WORK"
if [ "$FAILED" = 0 ] && [ "$KEEP" != 1 ]; then
	rm -rf "$WORK"
fi
[ "$FAILED" = 0 ]
