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
#   relay-rtp            media relay: RTP packet counts in the CDRs
#   takeover-query       a main + stand-by pair ([pair] dialog_digest = false),
#                        TAKEOVER_CALLS trunk calls between the SIPp smart
#                        endpoints (smart-uac.xml / smart-uas.xml, phones
#                        c<K>/u<K> as static users), kill -9 of the main: the
#                        stand-by is active within 2 s and re-binds every call
#                        from the endpoints' answers to its dialog SUBSCRIBEs
#                        (recovered_via_query == calls) within 5 s; every call
#                        then hangs up through it (BYE -> 200), its CDRs are
#                        all normal + recovered
#   takeover-digest      the same with dialog_digest = true and endpoints that
#                        answer the dialog SUBSCRIBE "489 Bad Event": the calls
#                        come from the keep-alive digest (recovered_via_digest)
#   takeover-cold        a pair in [pair] mode = "cold" (dialog digest on, so the
#                        stand-by knows all TAKEOVER_CALLS calls before the kill;
#                        static users c<K>/u<K>), smart endpoints with -set on_reset
#                        bye, kill -9 of the main: the new active resets every
#                        endpoint (2N contacts + 2 trunks) with exactly one
#                        out-of-dialog NOTIFY (Event: check-sync;reboot=true,
#                        Subscription-State: terminated, no body; counted from the
#                        endpoints' RESET log lines), GET /calls on it is empty when
#                        it becomes active and when the takeover ends, every phone
#                        then sends a BYE in its old dialog to it and gets 481, and
#                        it writes no CDR with recovered = 1
#
# Each check: SIPp exit code 0, SuccessfulCall == calls, FailedCall == 0
# (from SIPp's -trace_stat CSV), for the call checks the same on bob's side,
# no call left in GET /status after the run, and the CDR end_reason counts.
# One PASS/FAIL line per check; exit status 1 if any failed. On a failure the
# server log tail and SIPp's error log are printed. Takes ~55 s.
#
# Builds nothing: run `cargo build --release` first.
#
# Environment knobs (defaults in brackets):
#   UNDERSTUDY_BIN [./target/release/understudy, relative to the repo root]
#   PBX_PORT [5060]    SIP port (UDP+TCP) of the server under test, 127.0.0.1
#   ADMIN_PORT [8060]  its admin HTTP port
#   ALICE_PORT [5091]  BOB_PORT [5090]   the SIPp phones (not 5070/5080:
#                      those are trunk addresses that skip authentication)
#   STANDBY_PORT [PBX_PORT+2]  STANDBY_ADMIN_PORT [ADMIN_PORT+2]   the stand-by
#                      of the takeover checks (they also use 127.0.0.1:5070 and
#                      :5080, the trunk addresses, for the smart endpoints)
#   CALLS [20]  CALLS_SMALL [10]  RATE [10] (calls/s)  HOLD_MS [500]
#   TAKEOVER_CALLS [20]
#   ONLY ["" = all]    space-separated check names to run, e.g. "call-cancel"
#   KEEP [0]           1 = keep the temp dir with logs even when all pass
#   RUST_LOG [debug]   server log level (the log is only shown on failure)
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

resolve_bin
PBX_PORT=${PBX_PORT:-5060}
ADMIN_PORT=${ADMIN_PORT:-8060}
ALICE_PORT=${ALICE_PORT:-5091}
BOB_PORT=${BOB_PORT:-5090}
CALLS=${CALLS:-20}
CALLS_SMALL=${CALLS_SMALL:-10}
RATE=${RATE:-10}
HOLD_MS=${HOLD_MS:-500}
STANDBY_PORT=${STANDBY_PORT:-$((PBX_PORT + 2))}
STANDBY_ADMIN_PORT=${STANDBY_ADMIN_PORT:-$((ADMIN_PORT + 2))}
TAKEOVER_CALLS=${TAKEOVER_CALLS:-20}
ONLY=${ONLY:-}
KEEP=${KEEP:-0}
export RUST_LOG=${RUST_LOG:-debug}

[ -x "$BIN" ] || die "understudy binary not found at $BIN: build it with 'cargo build --release' or set UNDERSTUDY_BIN"
need_cmd sipp "apt-get install sip-tester"
need_cmd python3
need_cmd curl
for p in 5070 5080; do
	[ "$ALICE_PORT" = $p ] || [ "$BOB_PORT" = $p ] && die "ALICE_PORT/BOB_PORT must not be a trunk port (5070/5080)"
done

ports_in_use "$PBX_PORT u" "$PBX_PORT t" "$ADMIN_PORT t" "$ALICE_PORT u" "$BOB_PORT u" "$STANDBY_PORT u" "$STANDBY_ADMIN_PORT t" &&
	die "port $BUSY on 127.0.0.1 is in use; stop whatever uses it or set PBX_PORT/ADMIN_PORT/ALICE_PORT/BOB_PORT/STANDBY_PORT/STANDBY_ADMIN_PORT"

WORK=$(mktemp -d /tmp/understudy-functional.XXXXXX)
SERVER_PID=""
STANDBY_PID=""
SIPP_PIDS=()
cleanup() {
	local p
	for p in "${SIPP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	if [ -n "$STANDBY_PID" ]; then
		kill -TERM "$STANDBY_PID" 2>/dev/null
		sleep 0.5
		kill -KILL "$STANDBY_PID" 2>/dev/null
	fi
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
	if [ -n "${PAIR:-}" ]; then start_pair "$d"; return; fi
	mkdir -p "$d/state"
	{
		cfg_node functional main "$PBX_PORT" "$ADMIN_PORT" "$d/state" tcp
		cfg_registrar
		cfg_alice_bob
		cfg_trunks 5070 5080
		printf '[media]\nmode = "%s"\nrtp_ports = "31000-31999"\n\n' "${MEDIA_MODE:-bypass}"
		printf '[cdr]\nenabled = true\npath = "%s"\n' "$d/state/cdr.sqlite"
	} >"$d/understudy.toml"
	understudy_bg "$d/understudy.toml" "$d/server.log"
	SERVER_PID=$NODE_PID
	wait_status "$SERVER_PID" "$ADMIN_PORT" 100 && return 0
	[ $? = 1 ] && SERVER_PID=""
	return 1
}

# pair_config NAME ROLE SIP ADMIN PEER DIR: one node of a pair, [pair] dialog_digest = $PAIR,
# mode = $PAIR_MODE (hot unless set); with PAIR=false or PAIR_MODE=cold also static users c1..cN
# (contact at the UAC, 127.0.0.1:5080) and u1..uN (at the UAS, 127.0.0.1:5070),
# N = TAKEOVER_CALLS: the phones the new active asks (hot) or resets (cold).
pair_config() {
	local name=$1 role=$2 sip=$3 admin=$4 peer=$5 d=$6
	cfg_node "$name" "$role" "$sip" "$admin" "$d/$name"
	printf '[cdr]\npath = "%s"\n\n' "$d/$name/cdr.sqlite"
	cfg_pair "$peer" functional-pair-secret "${PAIR_MODE:-hot}" "$PAIR" 200 3 200 64 2000
	cfg_registrar
	cfg_alice_bob
	cfg_trunks 5070 5080 "dialog_query = true"
	printf '[media]\nmode = "bypass"\n\n'
	[ "$PAIR" = false ] || [ "${PAIR_MODE:-hot}" = cold ] || return 0
	cfg_phones "$TAKEOVER_CALLS" 5080 5070
}

# start_pair DIR: main (PBX_PORT, ADMIN_PORT) then stand-by (STANDBY_PORT,
# STANDBY_ADMIN_PORT); returns once the main is active and the stand-by standby, each
# seeing the other. SERVER_PID = main, STANDBY_PID = stand-by.
start_pair() {
	local d=$1
	mkdir -p "$d/main" "$d/standby"
	pair_config main main "$PBX_PORT" "$ADMIN_PORT" "$STANDBY_PORT" "$d" >"$d/main.toml"
	pair_config standby standby "$STANDBY_PORT" "$STANDBY_ADMIN_PORT" "$PBX_PORT" "$d" >"$d/standby.toml"
	understudy_bg "$d/main.toml" "$d/server.log"
	SERVER_PID=$NODE_PID
	understudy_bg "$d/standby.toml" "$d/standby.log"
	STANDBY_PID=$NODE_PID
	wait_pair "$ADMIN_PORT" "$STANDBY_ADMIN_PORT" 100 0.1 "$SERVER_PID" "$STANDBY_PID"
}

# stop_server: SIGTERM (CDRs are flushed), wait up to 5 s, then KILL (the stand-by too).
stop_server() {
	if [ -n "$STANDBY_PID" ]; then
		local p=$SERVER_PID
		SERVER_PID=$STANDBY_PID STANDBY_PID=""
		stop_server
		SERVER_PID=$p
	fi
	[ -n "$SERVER_PID" ] || return 0
	stop_pid "$SERVER_PID" 50 || echo "  server did not exit within 5 s of SIGTERM; killing" >>"$CUR/notes"
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

# ---------------------------------------------------------------------------
# SIPp

# run_sipp TAG TIMEOUT_S ARGS... : runs SIPp in the foreground, bounded.
# Leaves $CUR/TAG.{csv,err,screen,stderr} and sets SIPP_RC.
run_sipp() {
	local tag=$1
	shift
	sipp_run "$CUR/$tag" "$@"
}

# start_sipp_bg TAG TIMEOUT_S ARGS... : same, in the background; sets BG_PID.
start_sipp_bg() {
	local tag=$1
	shift
	sipp_bg "$CUR/$tag" "$@"
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
	# A crash of the check (traceback on stderr, exit 1) is a problem too, not a pass.
	python3 - "$CUR/state/cdr.sqlite" "$per_call" "$n" >>"$CUR/problems" 2>&1 <<-'EOF' \
		|| problem "the CDR check failed to run"
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

# smart_ports_free: the smart endpoints' UDP ports (the trunk addresses and their
# media ports) are free; else a problem
smart_ports_free() {
	ports_in_use "5070 u" "5080 u" "16000 u" "17000 u" || return 0
	problem "UDP 127.0.0.1:${BUSY%% *} (smart endpoint) is in use"
	return 1
}

# start_smart TIMEOUT_S CALLEE N LOGS ARGS...: the smart callee (smart-uas.xml on
# 127.0.0.1:5070), then the smart caller (smart-uac.xml + smart-notify.xml on
# 127.0.0.1:5080: N calls at 20/s to CALLEE<K> through the main), both with ARGS and
# their message traces, LOGS=1: their logs too ($CUR/smart-ua[cs].log).
# SMART_UAS, SMART_UAC = their BG_PIDs.
start_smart() {
	local tmo=$1 callee=$2 n=$3 logs=$4
	shift 4
	local trace_uas=(-trace_msg -message_file "$CUR/smart-uas.msg") trace_uac=(-trace_msg -message_file "$CUR/smart-uac.msg")
	if [ "$logs" = 1 ]; then
		trace_uas+=(-trace_logs -log_file "$CUR/smart-uas.log")
		trace_uac+=(-trace_logs -log_file "$CUR/smart-uac.log")
	fi
	start_sipp_bg smart-uas "$tmo" -sf "$HERE/smart-uas.xml" "$@" -i 127.0.0.1 -p 5070 -mp 17000 "${trace_uas[@]}"
	SMART_UAS=$BG_PID
	sleep 0.3
	start_sipp_bg smart-uac "$tmo" 127.0.0.1:"$PBX_PORT" -sf "$HERE/smart-uac.xml" -oocsf "$HERE/smart-notify.xml" \
		"$@" -set callee "$callee" -i 127.0.0.1 -p 5080 -mp 16000 -m "$n" -r 20 -l "$n" "${trace_uac[@]}"
	SMART_UAC=$BG_PID
}

# stop_smart UAC UAS: stops both smart endpoints at once (the calls did not come up)
stop_smart() {
	kill -TERM "$1" "$2" 2>/dev/null
	wait_bg "$1"; wait_bg "$2"
}

# kill_main: kill -9 of the main of the pair
kill_main() {
	kill -KILL "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=""
}

# finish_smart UAC UAS N: waits for the caller side (N successful calls, expect_sipp),
# then stops the callee side (SIGUSR1: exit once its calls are done) and wants
# rc 0, no failed call and >= N successful from it
finish_smart() {
	local uac=$1 uas=$2 n=$3 usipp ok ko
	wait_bg "$uac"
	expect_sipp smart-uac "$n"
	usipp=$(sipp_pid "$uas")
	[ -n "$usipp" ] && kill -USR1 "$usipp" 2>/dev/null
	wait_bg "$uas"
	read -r ok ko < <(sipp_counts smart-uas)
	[ "$SIPP_RC" = 0 ] && [ "$ko" = 0 ] && [ "${ok:-0}" -ge "$n" ] 2>/dev/null ||
		problem "sipp smart-uas: rc=$SIPP_RC successful=$ok failed=$ko (want rc=0, failed=0, >= $n successful)"
	SUMMARY_SIPP="$SUMMARY_SIPP smart-uas=$ok"
}

# new_active_cdrs: no call left on the new active (GET /status), then stops the pair;
# CDR_GOT = the new active's CDR end_reason counts, CDR_RECOVERED = how many have
# recovered = 1 (both in the summary)
new_active_cdrs() {
	local left
	left=$(ADMIN_PORT=$STANDBY_ADMIN_PORT calls_left)
	[ "$left" = 0 ] || problem "GET /status on the new active still shows $left call(s)"
	stop_server
	CDR_GOT=$(cdr_counts "$CUR/standby/cdr.sqlite")
	CDR_RECOVERED=$(cdr_recovered "$CUR/standby/cdr.sqlite")
	SUMMARY_SIPP="$SUMMARY_SIPP cdr:[$CDR_GOT recovered=$CDR_RECOVERED]"
}

# takeover-query / takeover-digest: see the header. PAIR = dialog_digest (false | true).
check_takeover() {
	local n=$TAKEOVER_CALLS q="$CUR/q" notifier publish callee via k
	if [ "$PAIR" = false ]; then
		notifier=1 publish=1 callee=u via=recovered_via_query
	else
		notifier=489 publish=0 callee=9 via=recovered_via_digest
	fi
	smart_ports_free || return
	# every phone the new active may ask needs its dialog file (see smart-notify.xml)
	mkdir -p "$q"
	: >"$q/_trunk.xml"
	for k in $(seq 1 "$n"); do : >"$q/c$k.xml"; : >"$q/u$k.xml"; done
	start_smart 60 "$callee" "$n" 0 -set qdir "$q" -set hangup uac -set notifier "$notifier" -set publish "$publish" \
		-set bye_after 500 -d 30000 -recv_timeout 60000
	local uas=$SMART_UAS uac=$SMART_UAC
	# all calls confirmed on the main; the stand-by knows them (digest) or the phones
	# have written their dialog files (query)
	local i st=""
	for i in $(seq 1 75); do
		sleep 0.2
		st=$(python3 - "$ADMIN_PORT" "$STANDBY_ADMIN_PORT" "$q" "$PAIR" <<-'EOF'
		import json, os, sys, urllib.request
		main, sb, q, query = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "false"
		get = lambda port, path: json.load(urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=2))
		try:
		    confirmed = sum(1 for c in get(main, "/calls")["calls"] if c["state"] == "confirmed")
		    known = get(sb, "/status")["digest"]["calls_known"]
		    files = sum(1 for f in os.listdir(q) if os.path.getsize(os.path.join(q, f)) > 0)
		    print(confirmed, known if not query else "-", files if query else "-")
		except Exception as e:
		    print("error", e)
		EOF
		)
		[ "$PAIR" = false ] && [ "$st" = "$n - $((2 * n))" ] && break
		[ "$PAIR" = true ] && [ "$st" = "$n $n -" ] && break
	done
	SUMMARY_SIPP=" up=[$st]"
	if ! { [ "$st" = "$n - $((2 * n))" ] || [ "$st" = "$n $n -" ]; }; then
		problem "calls not all up before the kill (confirmed, digest-known, dialog files): $st, want $n calls"
		stop_smart "$uac" "$uas"
		return
	fi
	# kill -9 the main; the stand-by must take over and re-bind every call
	kill_main
	local res
	res=$(python3 - "$STANDBY_ADMIN_PORT" "$n" "$via" <<-'EOF'
	import json, sys, time, urllib.request
	port, n, via = sys.argv[1], int(sys.argv[2]), sys.argv[3]
	t0 = time.time(); active = None; tk = {}
	while time.time() - t0 < 7:
	    try:
	        s = json.load(urllib.request.urlopen("http://127.0.0.1:%s/status" % port, timeout=1))
	    except Exception:
	        s = {}
	    if active is None and s.get("role") == "active":
	        active = time.time() - t0
	    tk = s.get("takeover") or tk
	    if active is not None and tk.get("recovered", 0) >= n and not tk.get("in_progress", True):
	        break
	    time.sleep(0.02)
	print("%s %s %s %s" % ("%.2f" % active if active is not None else "none", tk.get("recovered"), tk.get(via), tk.get("rebind_ms")))
	EOF
	)
	local active rec recvia rbms
	read -r active rec recvia rbms <<<"$res"
	SUMMARY_SIPP="$SUMMARY_SIPP detection=${active}s recovered=$rec $via=$recvia rebind_ms=$rbms"
	awk -v a="$active" 'BEGIN{exit !(a ~ /^[0-9.]+$/ && a <= 2.0)}' || problem "stand-by not active within 2 s of kill -9 (got $active)"
	[ "$rec" = "$n" ] && [ "$recvia" = "$n" ] || problem "takeover.recovered=$rec $via=$recvia within 7 s, want $n"
	# every call hangs up through the new active; then stop the callee side
	finish_smart "$uac" "$uas" "$n"
	new_active_cdrs
	[ "$CDR_GOT" = "normal=$n" ] && [ "$CDR_RECOVERED" = "$n" ] ||
		problem "new active's CDRs: '$CDR_GOT', recovered=$CDR_RECOVERED; want normal=$n, recovered=$n"
}

# takeover-cold: see the header. A cold pair with the dialog digest on (so the stand-by
# knows every call before the kill and must still start with none) and the static
# users c<K>/u<K> of takeover-query; both smart endpoints run with -set on_reset bye.
check_takeover_cold() {
	local n=$TAKEOVER_CALLS q="$CUR/q"
	smart_ports_free || return
	mkdir -p "$q"
	# hold 8 s: a call that is never reset fails by then (smart-uac.xml "no_reset");
	# the callee side waits for a BYE that never comes and fails by -recv_timeout
	start_smart 25 u "$n" 1 -set qdir "$q" -set on_reset bye -set publish 0 -set hangup uac -d 8000 -recv_timeout 10000
	local uas=$SMART_UAS uac=$SMART_UAC
	# all calls confirmed on the main, known to the stand-by (digest), and every phone has
	# written its Call-ID for the reset poke
	local i st=""
	for i in $(seq 1 50); do
		sleep 0.2
		st=$(python3 - "$ADMIN_PORT" "$STANDBY_ADMIN_PORT" "$q" <<-'EOF'
		import json, os, sys, urllib.request
		main, sb, q = sys.argv[1], sys.argv[2], sys.argv[3]
		get = lambda port, path: json.load(urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=2))
		try:
		    confirmed = sum(1 for c in get(main, "/calls")["calls"] if c["state"] == "confirmed")
		    known = get(sb, "/status")["digest"]["calls_known"]
		    cids = sum(1 for f in os.listdir(q) if f.endswith(".cid") and os.path.getsize(os.path.join(q, f)) > 0)
		    print(confirmed, known, cids)
		except Exception as e:
		    print("error", e)
		EOF
		)
		[ "$st" = "$n $n $((2 * n))" ] && break
	done
	SUMMARY_SIPP=" up=[$st]"
	if [ "$st" != "$n $n $((2 * n))" ]; then
		problem "calls not all up before the kill (confirmed, digest-known, Call-ID files): $st, want $n $n $((2 * n))"
		stop_smart "$uac" "$uas"
		return
	fi
	# kill -9 the main; the stand-by takes over cold: resets every endpoint, keeps no call
	kill_main
	local res
	res=$(python3 - "$STANDBY_ADMIN_PORT" "$((2 * n + 2))" <<-'EOF'
	import json, sys, time, urllib.request
	port, want = sys.argv[1], int(sys.argv[2])
	get = lambda path: json.load(urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=1))
	def ncalls():
	    try:
	        return len(get("/calls")["calls"])
	    except Exception:
	        return "?"
	t0 = time.time(); active = None; first = "?"; tk = {}
	while time.time() - t0 < 7:
	    try:
	        s = get("/status")
	    except Exception:
	        s = {}
	    if active is None and s.get("role") == "active":
	        active = time.time() - t0
	        first = ncalls()
	    tk = s.get("takeover") or tk
	    if active is not None and tk.get("reset", 0) >= want and not tk.get("in_progress", True):
	        break
	    time.sleep(0.02)
	done = ncalls()
	print("%s %s %s %s %s %s %s" % ("%.2f" % active if active is not None else "none", first, done,
	      tk.get("mode"), tk.get("endpoints"), tk.get("reset"), tk.get("recovered")))
	EOF
	)
	local active first after mode eps resets rec
	read -r active first after mode eps resets rec <<<"$res"
	SUMMARY_SIPP="$SUMMARY_SIPP detection=${active}s mode=$mode endpoints=$eps reset=$resets recovered=$rec calls=$first/$after"
	awk -v a="$active" 'BEGIN{exit !(a ~ /^[0-9.]+$/ && a <= 2.0)}' || problem "stand-by not active within 2 s of kill -9 (got $active)"
	[ "$mode" = cold ] && [ "$eps" = $((2 * n + 2)) ] && [ "$resets" = $((2 * n + 2)) ] && [ "$rec" = 0 ] ||
		problem "takeover report: mode=$mode endpoints=$eps reset=$resets recovered=$rec, want cold, $((2 * n + 2)), $((2 * n + 2)), 0"
	[ "$first" = 0 ] && [ "$after" = 0 ] ||
		problem "GET /calls on the new active: $first call(s) when it became active, $after when the takeover finished; want 0"
	# every call drops on its reset: BYE in the old dialog -> 481; then stop the callee side
	finish_smart "$uac" "$uas" "$n"
	# one check-sync NOTIFY per endpoint (the RESET log lines of smart-notify.xml / smart-uas.xml),
	# and every stale BYE answered 481 (SIPp's message traces)
	local out
	out=$(python3 - "$CUR" "$n" <<-'EOF'
	import collections, re, sys
	cur, n = sys.argv[1], int(sys.argv[2])
	problems, summary = [], []
	for side, me in (("smart-uac", "c"), ("smart-uas", "u")):
	    want = {"%s%d" % (me, k) for k in range(1, n + 1)} | {"_trunk"}
	    lines = collections.defaultdict(list)
	    try:
	        log = open("%s/%s.log" % (cur, side), errors="replace").read()
	    except OSError:
	        log = ""
	    for m in re.finditer(r"RESET (phone=\S* callid=\S* event=\S* substate=\S* clen=\S*)", log):
	        f = dict(kv.split("=", 1) for kv in m.group(1).split(" "))
	        lines[f["phone"]].append(f)
	    got = set(lines)
	    if got != want:
	        problems.append("%s: check-sync NOTIFYs missing for %s, unexpected for %s" % (
	            side, sorted(want - got) or "none", sorted(got - want) or "none"))
	    many = sorted(p for p, fs in lines.items() if len({f["callid"] for f in fs}) != 1)
	    if many:
	        problems.append("%s: more than one check-sync NOTIFY for %s" % (side, many))
	    bad = sorted({"%s event=%s substate=%s clen=%s" % (f["phone"], f["event"], f["substate"], f["clen"])
	                  for fs in lines.values() for f in fs
	                  if (f["event"], f["substate"], f["clen"]) != ("check-sync;reboot=true", "terminated", "0")})
	    if bad:
	        problems.append("%s: reset NOTIFYs not 'check-sync;reboot=true', 'terminated', no body: %s" % (side, bad[:3]))
	    # responses to our BYEs, from the -trace_msg file
	    byes = collections.Counter()
	    try:
	        msgs = open("%s/%s.msg" % (cur, side), errors="replace").read()
	    except OSError:
	        msgs = ""
	    for block in re.split(r"\n-{20,}[^\n]*\n", msgs):
	        if "message received" not in block:
	            continue
	        m = re.search(r"^SIP/2\.0 (\d{3})", block, re.M)
	        if m and re.search(r"^CSeq:\s*\d+\s+BYE\s*$", block, re.M | re.I):
	            byes[m.group(1)] += 1
	    if dict(byes) != {"481": n}:
	        problems.append("%s: responses to BYE %s, want 481 x %d" % (side, dict(byes), n))
	    summary.append("%s:resets=%d,bye481=%d" % (side[6:], sum(len(v) for v in lines.values()), byes["481"]))
	print(" ".join(summary))
	for p in problems:
	    print("PROBLEM " + p)
	EOF
	)
	case $out in
	uac:resets=*) SUMMARY_SIPP="$SUMMARY_SIPP $(head -n 1 <<<"$out")" ;;
	*) problem "reset/BYE analysis failed: $out" ;;
	esac
	grep '^PROBLEM ' <<<"$out" | sed 's/^PROBLEM //' >>"$CUR/problems"
	new_active_cdrs
	[ "$CDR_RECOVERED" = 0 ] || problem "new active's CDRs: '$CDR_GOT', recovered=$CDR_RECOVERED; want no recovered call"
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
		if [ -f "$CUR/standby.log" ]; then
			echo "  --- stand-by log (last 30 lines): $CUR/standby.log"
			tail -n 30 "$CUR/standby.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/  | /'
		fi
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
PAIR=false run_check takeover-query  check_takeover
PAIR=true  run_check takeover-digest check_takeover
PAIR=true PAIR_MODE=cold run_check takeover-cold check_takeover_cold
T1=$(date +%s)

echo "SUMMARY functional passed=$PASSED failed=$FAILED${FAILED_NAMES:+ (failed:$FAILED_NAMES)} seconds=$((T1 - T0)) logs=$WORK"
if [ "$FAILED" = 0 ] && [ "$KEEP" != 1 ]; then
	rm -rf "$WORK"
fi
[ "$FAILED" = 0 ]
