#!/usr/bin/env bash
# Takeover benchmark: a main and a stand-by understudy, N calls held through the
# main by the SIPp smart endpoints, kill -9 of the main, then how fast and how
# completely the stand-by takes the calls over.
#
#   SIPp smart-uac.xml 127.0.0.1:5080 --> main 127.0.0.1:5060 --> SIPp smart-uas.xml 127.0.0.1:5070
#   (trunk "gateway", no auth;           (kill -9)               (trunk "carrier" /
#    -oocsf smart-notify.xml)             stand-by 127.0.0.1:5062  static users u<K>)
#
# Usage:
#   sipp-scenarios/bench-takeover.sh [query | nodialog | both | link] [N]
#
# Modes (default both = query, then nodialog, then link):
#   query     [pair] dialog_digest = false: the new active knows nothing and
#             finds the calls by asking every endpoint (SUBSCRIBE Event: dialog).
#             Every call is between two "phones", c<K> (caller) and u<K>
#             (callee), configured as static users whose contacts are the
#             SIPps (sip:c<K>@127.0.0.1:5080, sip:u<K>@127.0.0.1:5070), so the
#             new active sends 2N + 2 queries (phones and both trunks); each
#             phone reports its one dialog (smart-notify.xml / smart-uas.xml
#             read it from a per-phone file; the calls log their dialog,
#             -set publish log, and smart-dialogs.py writes the files).
#             The caller dials u<K>.
#   nodialog  dialog_digest = true, no endpoint supports the dialog package:
#             no static users; the caller dials 9<K> (trunk "carrier", strip 1)
#             and the only endpoints, the two trunks (dialog_query = true),
#             answer "489 Bad Event". The calls can only come from the digest
#             that rode on the keep-alives.
#   load      takeover under steady load: digest on, trunk calls as in
#             nodialog; calls arrive at LOAD_RATE/s (default 100) and are held
#             HOLD_MARGIN_S s longer than the whole run; once the main has
#             answered LOAD_KILL_AT calls (default 1000) -- calls still
#             arriving -- the main is killed and the caller SIPp paused (its
#             control port) at the same moment. Every call answered before the
#             kill must end normally through the new active (SIPp UAC
#             successful == calls the new active recovered >= calls the main had
#             answered at the last poll before the kill), the rest fail (ringing
#             ones get 503, ones sent to the dead main time out), and re-INVITE
#             retransmissions (SIPp UAC + UAS) stay <= 1 %.
#   link      the pair link's digest traffic: a fresh pair (digest on, trunk
#             calls as in nodialog), LINK_RATE calls/s set up for LINK_SECS s,
#             held, then hung up at the same rate; main's digest.bytes_sent and
#             understudy_keepalives_total{dir="sent"} are sampled every 0.5 s.
#             Prints bytes/s while calls are set up, while they are hung up,
#             and bytes per keep-alive (idle, set-up, tear-down).
#
# Per takeover run (query / nodialog):
#   1. fresh state dirs and configs (temp), start the main, then the stand-by;
#      wait until the main is active and the stand-by standby, both seeing
#      each other.
#   2. N calls at RATE calls/s (caller hangs up: HANGUP=uac; HANGUP=uas makes
#      the callee do it), each held HOLD_MARGIN_S s longer than the whole
#      set-up takes, so no call ends by itself before the takeover.
#   3. wait until the main's /status counts.calls == N, all N "confirmed" in
#      its /calls, and (digest on) the stand-by's digest.calls_known == N and
#      digest.backlog on the main is 0, or (query) all 2N phones have
#      published their dialog. Print the keep-alive size: main
#      digest.bytes_sent / keep-alives sent (over the whole set-up).
#   4. kill -9 the main; poll the stand-by's /status every 10 ms: detection =
#      kill -> role "active"; then every 20 ms until takeover.recovered == N
#      (or REBIND_BOUND_S): polled_rebind = active -> recovered == N. Also
#      takeover.rebind_ms (takeover start -> last successful re-bind, the
#      server's own figure), the whole takeover report, and the times of the
#      stand-by's log lines "now ACTIVE", "takeover started", "takeover
#      finished" after the kill (same clock).
#   5. every phone, once re-bound, waits BYE_AFTER_MS + 0..BYE_SPREAD_MS and
#      hangs up through the new active (the re-INVITE's Contact). Calls that
#      were not re-bound hang up at the end of the hold towards the dead main
#      and fail. Wait for SIPp; assert: UAC SuccessfulCall == N, FailedCall == 0
#      (a call succeeds only if its re-INVITE was answered, the ACK carried the
#      SDP answer, and the BYE got 200 via the new active), UAS FailedCall == 0,
#      no call left on the new active, and its CDRs: N rows end_reason=normal,
#      recovered=1.
#   6. PASS/FAIL per target:
#        detection <= 1.0 s (both modes)
#        query:    recovered == N (100 %) and takeover.rebind_ms <= 2000 ms for
#                  N <= 1000, <= 10000 ms for larger N (the 10,000-call target)
#        nodialog: recovered == N and takeover.rebind_ms <= max(2000, N / 5) ms
#                  (10,000 calls in 2 s, 100,000 in 20 s)
#        SIPp's retransmissions (re-INVITE answers and BYEs) <= 1 % per call leg
#      (targets are checked against the server's rebind_ms, measured from
#      the start of the takeover = detection; polled_rebind is printed too)
#
# Output: one line per measurement ("RESULT ..."), one "TARGET PASS|FAIL ..."
# line per target, a final "SUMMARY bench-takeover ..." line. Exit status 1 if
# a target or an assertion failed, 2 on a setup error.
#
# Every SIPp run is bounded by -m/-timeout and an outer `timeout`; everything
# started here is stopped by PID; all traffic stays on 127.0.0.1. Builds
# nothing: cargo build --release first.
#
# Environment knobs (defaults in brackets):
#   UNDERSTUDY_BIN   [./target/release/understudy, relative to the repo root]
#   N [1000]  (or the second argument)   RATE [200] calls/s set-up rate
#   HANGUP [uac]         uac | uas: who sends the BYE after the takeover
#   HOLD_MARGIN_S [40]   hold = N/RATE + this (s)
#   BYE_AFTER_MS [2000]  BYE_SPREAD_MS [2*N]: after its re-bind each call waits
#                        BYE_AFTER_MS + uniform(0..BYE_SPREAD_MS) (~500 BYE/s)
#   REBIND_BOUND_S [30 + N/500]  stop polling for recovered == N after this
#   PARALLEL [64]  QUERY_TIMEOUT_MS [2000]   [takeover] parallel / query_timeout_ms
#   KEEPALIVE_MS [200]  MISSED [3]  PROBE_MS [200]   [pair] timers
#   LINK_RATE [200]  LINK_SECS [10]           link mode
#   MAIN_PORT [5060] STANDBY_PORT [5062] MAIN_ADMIN [8060] STANDBY_ADMIN [8062]
#   UAC_PORT [5080] UAS_PORT [5070]   (the trunk addresses in the generated config)
#   STATE_CHANNEL [tcp]  tcp: the nodes listen on TCP too (sip_tcp, as the example configs
#                        do), so the digest rides the TCP state channel; udp: UDP only, the
#                        digest in keep-alive-sized chunks (the fallback)
#   SERVER_LOG [info]    RUST_LOG of both nodes
#   TRACE [0]            1: SIPp -trace_msg on both sides and RUST_LOG
#                        understudy=debug (big files at N=10000)
#   SIPP_BUF [4194304]   OUT [/tmp/understudy-bench/takeover-<epoch>]
#   KEEP [1]             0: delete OUT when everything passed
#   PERF_OUT             perf record -g (cpu-clock) of the stand-by from the kill until
#                        the takeover is measured, written to this file
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

MODE=${1:-both}
case $MODE in
	query|nodialog|both|link|load) ;;
	-h|--help|help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "usage: $0 [query | nodialog | both | link | load] [N]" >&2; exit 2 ;;
esac
N=${2:-${N:-1000}}

resolve_bin
RATE=${RATE:-200}
HANGUP=${HANGUP:-uac}
HOLD_MARGIN_S=${HOLD_MARGIN_S:-40}
BYE_AFTER_MS=${BYE_AFTER_MS:-2000}
BYE_SPREAD_MS=${BYE_SPREAD_MS:-$((2 * N))}
REBIND_BOUND_S=${REBIND_BOUND_S:-$((30 + N / 500))}
PARALLEL=${PARALLEL:-64}
QUERY_TIMEOUT_MS=${QUERY_TIMEOUT_MS:-2000}
KEEPALIVE_MS=${KEEPALIVE_MS:-200}
MISSED=${MISSED:-3}
PROBE_MS=${PROBE_MS:-200}
LINK_RATE=${LINK_RATE:-200}
LOAD_RATE=${LOAD_RATE:-100}
LOAD_KILL_AT=${LOAD_KILL_AT:-1000}
UAC_CP=${UAC_CP:-8898}
LINK_SECS=${LINK_SECS:-10}
MAIN_PORT=${MAIN_PORT:-5060}
STANDBY_PORT=${STANDBY_PORT:-5062}
MAIN_ADMIN=${MAIN_ADMIN:-8060}
STANDBY_ADMIN=${STANDBY_ADMIN:-8062}
UAC_PORT=${UAC_PORT:-5080}
UAS_PORT=${UAS_PORT:-5070}
STATE_CHANNEL=${STATE_CHANNEL:-tcp}
SERVER_LOG=${SERVER_LOG:-info}
TRACE=${TRACE:-0}
SIPP_BUF=${SIPP_BUF:-4194304}
KEEP=${KEEP:-1}
OUT=${OUT:-/tmp/understudy-bench/takeover-$(date +%s)}
[ "$TRACE" = 1 ] && SERVER_LOG=understudy=debug

[ -x "$BIN" ] || die "understudy binary not found at $BIN: run 'cargo build --release' first (or set UNDERSTUDY_BIN)"
need_cmd sipp "apt-get install sip-tester"
need_cmd python3
need_cmd ss "apt-get install iproute2"
case $HANGUP in uac|uas) ;; *) die "HANGUP must be uac or uas" ;; esac
[ "$N" -ge 1 ] 2>/dev/null || die "N must be a positive number"

check_ports() {
	! ports_in_use "$MAIN_PORT u" "$STANDBY_PORT u" "$UAC_PORT u" "$UAS_PORT u" "$MAIN_ADMIN t" "$STANDBY_ADMIN t" \
		"16000 u" "16001 u" "17000 u" "17001 u"
}
check_ports || die "a port we need on 127.0.0.1 is in use (SIP $MAIN_PORT $STANDBY_PORT $UAC_PORT $UAS_PORT, admin $MAIN_ADMIN $STANDBY_ADMIN, media 16000/17000): another server or SIPp running?"

mkdir -p "$OUT" || die "cannot create $OUT"

# ---------------------------------------------------------------------------
# process tracking: everything we start is stopped by PID (track, lib.sh)

cleanup() { stop_tracked; }
trap cleanup EXIT
trap 'exit 130' INT TERM

metric() { # ADMIN_PORT NAME_WITH_LABELS -> value
	curl -sf -m 2 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v m="$2" '$1 == m {print $2}' | head -1
}

# ---------------------------------------------------------------------------
# configs

# gen_config DIR DIGEST(true|false) PHONES(0|N): main.toml and standby.toml;
# PHONES > 0 adds static users c1..cPHONES (contact at the UAC) and u1..uPHONES (at the UAS)
gen_config() {
	local d=$1 digest=$2 phones=$3 name role sip admin peer
	for name in main standby; do
		if [ $name = main ]; then
			role=main sip=$MAIN_PORT admin=$MAIN_ADMIN peer=$STANDBY_PORT
		else
			role=standby sip=$STANDBY_PORT admin=$STANDBY_ADMIN peer=$MAIN_PORT
		fi
		{
			cfg_node "$name" "$role" "$sip" "$admin" "$d/$name" "$STATE_CHANNEL"
			printf '[cdr]\npath = "%s"\n\n' "$d/$name/cdr.sqlite"
			cfg_pair "$peer" bench-takeover-secret hot "$digest" "$KEEPALIVE_MS" "$MISSED" "$PROBE_MS" "$PARALLEL" "$QUERY_TIMEOUT_MS"
			cfg_registrar
			printf '[calls]\nmax_calls = 100000\n\n[media]\nmode = "bypass"\n\n'
			cfg_trunk carrier "$UAS_PORT" 9 1 "dialog_query = true" "priority = 0"
			cfg_trunk gateway "$UAC_PORT" 0 0 "dialog_query = true" "priority = 1"
			cfg_phones "$phones" "$UAC_PORT" "$UAS_PORT"
		} >"$d/$name.toml"
	done
}

# make_qdir DIR N: empty dialog files for every phone (SIPp's [file] must find them)
make_qdir() {
	python3 - "$1" "$2" <<-'EOF'
	import os, sys
	d, n = sys.argv[1], int(sys.argv[2])
	os.makedirs(d, exist_ok=True)
	for name in ["_trunk"] + ["c%d" % k for k in range(1, n + 1)] + ["u%d" % k for k in range(1, n + 1)]:
	    open(os.path.join(d, name + ".xml"), "w").close()
	EOF
}

# start_node DIR NAME ADMIN -> NODE_PID
start_node() {
	local d=$1 name=$2 admin=$3
	mkdir -p "$d/$name"
	RUST_LOG=$SERVER_LOG understudy_bg "$d/$name.toml" "$d/$name.log"
	track "$NODE_PID"
	wait_status "$NODE_PID" "$admin" 150
	case $? in
		1) die "$name exited at start-up, see $d/$name.log" ;;
		2) die "$name admin API did not answer within 15 s, see $d/$name.log" ;;
	esac
}

# start_pair DIR -> MAIN_PID STANDBY_PID; waits until main active + standby standby, peers alive
start_pair() {
	local d=$1
	start_node "$d" main "$MAIN_ADMIN"; MAIN_PID=$NODE_PID
	start_node "$d" standby "$STANDBY_ADMIN"; STANDBY_PID=$NODE_PID
	wait_pair "$MAIN_ADMIN" "$STANDBY_ADMIN" 100 0.2 ||
		die "pair did not form within 20 s ($PAIR_SEEN), see $d/*.log"
}

stop_node() { # PID: SIGTERM (CDRs are flushed), 10 s, then KILL
	stop_pid "$1"
	untrack "$1"
}

# ---------------------------------------------------------------------------
# SIPp

# smart_bg TAG TIMEOUT_S DIR ARGS... -> BG_PID (timeout wrapper), BG_SIPP (sipp); DIR/TAG.{csv,err,screen,stderr}
smart_bg() {
	local tag=$1 tmo=$2 d=$3; shift 3
	local trace=()
	[ "$TRACE" = 1 ] && trace=(-trace_msg -message_file "$d/$tag.msg")
	sipp_tracked "$d/$tag" "$tmo" 0.3 "$@" -buff_size "$SIPP_BUF" "${trace[@]}"
}

# sipp_stats CSV -> "created successful failed regexp_failed retrans"
sipp_stats() {
	python3 - "$1" <<-'EOF'
	import sys
	try:
	    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
	    h, x = rows[0], rows[-1]
	    g = lambda k: int(x[h.index(k)]) if k in h else 0
	    print(g("TotalCallCreated"), g("SuccessfulCall(C)"), g("FailedCall(C)"),
	          g("FailedRegexpDoesntMatch(C)") + g("FailedRegexpShouldntMatch(C)") + g("FailedRegexpHdrNotFound(C)"),
	          g("Retransmissions(C)"))
	except Exception:
	    print("NA NA NA NA NA")
	EOF
}

# wait for a SIPp run (timeout wrapper PID, sipp PID) to end by itself; bounded
wait_sipp() { # WRAPPER SIPP BOUND_S -> SIPP_RC
	local i
	for i in $(seq 1 $(($3 * 5))); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
	if kill -0 "$1" 2>/dev/null; then
		echo "  note: SIPp $2 still running after $3 s; stopping it" >&2
		kill -USR1 "$2" 2>/dev/null; sleep 3; kill -TERM "$2" 2>/dev/null
	fi
	wait "$1"; SIPP_RC=$?
	untrack "$1" "$2"
}

# stop a server-mode SIPp gracefully (SIGUSR1: no new calls, exit when the current ones end)
stop_sipp() { # WRAPPER SIPP BOUND_S -> SIPP_RC
	kill -USR1 "$2" 2>/dev/null
	wait_sipp "$@"
}

# ---------------------------------------------------------------------------
# a takeover run

FAILS=0
SUMMARY=""
target() { # NAME OK(0|1) TEXT
	if [ "$2" = 1 ]; then echo "TARGET PASS $1: $3"; else echo "TARGET FAIL $1: $3"; FAILS=$((FAILS + 1)); fi
}

# measure_takeover MAIN_PID N BOUND_S -> key=value lines (kills the main)
measure_takeover() { # MAIN_PID N BOUND_S [SIPP_CONTROL_PORT to pause at the kill]
	python3 - "$1" "$2" "$3" "$STANDBY_ADMIN" ${4:+"$4"} <<-'EOF'
	import json, os, signal, socket, sys, time, urllib.request
	pid, n, bound, admin = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
	pause = int(sys.argv[5]) if len(sys.argv) > 5 else 0
	url = "http://127.0.0.1:%s/status" % admin
	def status():
	    try:
	        with urllib.request.urlopen(url, timeout=1) as r:
	            return json.load(r)
	    except Exception:
	        return None
	t_kill = time.time()
	os.kill(pid, signal.SIGKILL)
	if pause:
	    # no new calls from the caller SIPp from now on (its remote control: "p")
	    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"p", ("127.0.0.1", pause))
	print("t_kill=%.6f" % t_kill)
	t_active = None
	while time.time() - t_kill < 10:
	    s = status()
	    if s and s.get("role") == "active":
	        t_active = time.time(); break
	    time.sleep(0.01)
	out = {"detection_s": "NA" if t_active is None else "%.3f" % (t_active - t_kill)}
	t_all, last = None, None
	if t_active is not None:
	    while time.time() - t_active < bound:
	        s = status()
	        tk = (s or {}).get("takeover") or {}
	        if s:
	            last = s
	        if tk.get("recovered", 0) >= n:
	            t_all = time.time(); break
	        time.sleep(0.02)
	    # let the report settle (queries still running, in_progress)
	    t_end = time.time() + 5
	    while time.time() < t_end:
	        s = status()
	        if s:
	            last = s
	            if not (s.get("takeover") or {}).get("in_progress", True):
	                break
	        time.sleep(0.1)
	out["polled_rebind_s"] = "NA" if t_all is None else "%.3f" % (t_all - t_active)
	tk = (last or {}).get("takeover") or {}
	for k in ("rebind_ms", "total_ms", "endpoints", "queried", "answered", "not_notifiers", "calls_found",
	          "recovered", "recovered_via_query", "recovered_via_digest", "ended", "failed", "orphaned",
	          "ringing_failed", "in_progress"):
	    v = tk.get(k)
	    out[k] = "NA" if v is None else v
	out["calls_on_new_active"] = ((last or {}).get("counts") or {}).get("calls", "NA")
	for k, v in out.items():
	    print("%s=%s" % (k, v))
	EOF
}

# takeover_run MODE(query|nodialog)
takeover_run() {
	local mode=$1 d="$OUT/$1-$N" digest phones notifier publish callee
	mkdir -p "$d"
	case $mode in
		query) digest=false phones=$N notifier=1 publish=log callee=u ;;
		nodialog) digest=true phones=0 notifier=489 publish=0 callee=9 ;;
	esac
	echo "== $mode: N=$N rate=$RATE/s dialog_digest=$digest hangup=$HANGUP out=$d"
	check_ports || die "ports still in use before the $mode run"
	gen_config "$d" "$digest" "$phones"
	local helper=""
	if [ "$publish" = log ]; then
		# the phones' dialog files, from the SIPps' log lines (see smart-dialogs.py)
		python3 "$HERE/smart-dialogs.py" --qdir "$d/q" --init "c:$phones,u:$phones" --status "$d/published" \
			"$d/uac.log" "$d/uas.log" 2>"$d/smart-dialogs.err" &
		helper=$!
		track "$helper"
	else
		make_qdir "$d/q" 0
	fi
	start_pair "$d"
	if [ -n "$helper" ]; then
		for i in $(seq 1 300); do [ -s "$d/published" ] && break; sleep 0.1; done
		[ -s "$d/published" ] || die "smart-dialogs.py did not start, see $d/smart-dialogs.err"
	fi
	local setup_s=$(( (N + RATE - 1) / RATE ))
	local hold_ms=$(( (setup_s + HOLD_MARGIN_S) * 1000 ))
	local tmo=$(( setup_s + HOLD_MARGIN_S + 60 + BYE_AFTER_MS / 1000 + BYE_SPREAD_MS / 1000 ))
	local common=(-set qdir "$d/q" -set hangup "$HANGUP" -set notifier "$notifier" -set publish "$publish"
		-set bye_after "$BYE_AFTER_MS" -set bye_spread "$BYE_SPREAD_MS" -d "$hold_ms" -recv_timeout $(( hold_ms + 60000 )))
	smart_bg uas "$tmo" "$d" -sf "$HERE/smart-uas.xml" "${common[@]}" -i 127.0.0.1 -p "$UAS_PORT" -mp 17000 \
		-trace_logs -log_file "$d/uas.log"
	local uas=$BG_PID uas_sipp=$BG_SIPP
	local t0; t0=$(now)
	smart_bg uac "$tmo" "$d" 127.0.0.1:"$MAIN_PORT" -sf "$HERE/smart-uac.xml" -oocsf "$HERE/smart-notify.xml" \
		"${common[@]}" -set callee "$callee" -set callee_suffix 1 \
		-i 127.0.0.1 -p "$UAC_PORT" -mp 16000 -m "$N" -r "$RATE" -l $((N + 10)) \
		-trace_logs -log_file "$d/uac.log"
	local uac=$BG_PID uac_sipp=$BG_SIPP
	# 3. all calls up on the main (and known to the stand-by through the digest)
	# "up" = the main has N calls, all confirmed (GET /calls), and: digest on: the
	# stand-by knows N calls and nothing is waiting to be sent; query mode: all
	# 2N phones have published their dialog
	local i calls known backlog pubd confirmed=NA ok=0 bound=$(( setup_s + 60 ))
	for i in $(seq 1 $((bound * 2))); do
		sleep 0.5
		calls=$(status_field "$MAIN_ADMIN" 's["counts"]["calls"]')
		if [ "$digest" = true ]; then
			known=$(status_field "$STANDBY_ADMIN" 's["digest"]["calls_known"]')
			backlog=$(status_field "$MAIN_ADMIN" 's["digest"]["backlog"]')
		else
			known=$calls backlog=0
		fi
		pubd=-
		[ -n "$helper" ] && pubd=$(awk -F'[= ]' '{print int($6 / 2)}' "$d/published" 2>/dev/null)
		if [ "$calls" = "$N" ] && [ "$known" = "$N" ] && [ "$backlog" = 0 ] && { [ -z "$helper" ] || [ "$pubd" = "$N" ]; }; then
			# /calls lists at most 5,000 calls per answer: page through them.
			confirmed=$(python3 - "$MAIN_ADMIN" <<-'PY' 2>/dev/null || echo NA
			import json, sys, urllib.request
			port, offset, n = sys.argv[1], 0, 0
			while True:
			    with urllib.request.urlopen(f"http://127.0.0.1:{port}/calls?offset={offset}", timeout=10) as r:
			        page = json.load(r)
			    calls = page.get("calls", [])
			    n += sum(1 for c in calls if c.get("state") == "confirmed")
			    offset += len(calls)
			    if not calls or offset >= page.get("total", 0):
			        break
			print(n)
			PY
			)
			[ "$confirmed" = "$N" ] && { ok=1; break; }
		fi
		kill -0 "$uac" 2>/dev/null || break
		[ $((i % 20)) = 0 ] && echo "  t=$((i / 2))s main_calls=$calls standby_digest_calls=$known backlog=$backlog published_pairs=$pubd confirmed=$confirmed"
	done
	local t_up; t_up=$(now)
	local up_s; up_s=$(awk -v a="$t0" -v b="$t_up" 'BEGIN{printf "%.1f", b - a}')
	if [ $ok != 1 ]; then
		echo "RESULT mode=$mode n=$N setup=INCOMPLETE main_calls=$calls standby_digest_calls=$known backlog=$backlog published_pairs=$pubd confirmed=$confirmed after ${up_s}s"
		target "$mode-setup" 0 "only $calls of $N calls up on the main (digest $known) after ${up_s}s; see $d"
		SUMMARY="$SUMMARY $mode:setup_failed"
		cleanup
		return
	fi
	local kb ka ka_size link_bps
	kb=$(status_field "$MAIN_ADMIN" 's["digest"]["bytes_sent"]')
	ka=$(metric "$MAIN_ADMIN" 'understudy_keepalives_total{dir="sent"}')
	ka_size=$(awk -v b="$kb" -v k="$ka" 'BEGIN{ if (k + 0 > 0) printf "%.0f", b / k; else print "NA" }')
	[ "$digest" = true ] || ka_size="off"
	# the pair link's digest bytes per second while the calls were set up (main -> stand-by)
	link_bps=$(awk -v b="$kb" -v t="$up_s" 'BEGIN{ if (t + 0 > 0 && b ~ /^[0-9]+$/) printf "%.0f", b / t; else print "NA" }')
	[ "$digest" = true ] || link_bps="off"
	echo "RESULT mode=$mode n=$N calls_up=$N setup_s=$up_s main_digest_bytes_sent=$kb main_keepalives_sent=$ka digest_bytes_per_keepalive=$ka_size link_digest_bytes_per_s_setup=$link_bps"
	sleep 1
	# 4. kill -9 the main and watch the stand-by (and its memory, before and after)
	local m rss_before rss_after
	rss_before=$(awk '/^VmRSS/ { print $2 }' "/proc/$STANDBY_PID/status" 2>/dev/null || echo NA)
	local perf_pid=
	if [ -n "${PERF_OUT:-}" ]; then
		perf record -q -g -e cpu-clock -p "$STANDBY_PID" -o "$PERF_OUT" >/dev/null 2>&1 &
		perf_pid=$!
	fi
	m=$(measure_takeover "$MAIN_PID" "$N" "$REBIND_BOUND_S")
	[ -z "$perf_pid" ] || { kill -INT "$perf_pid"; wait "$perf_pid"; }
	rss_after=$(awk '/^VmRSS/ { print $2 }' "/proc/$STANDBY_PID/status" 2>/dev/null || echo NA)
	wait "$MAIN_PID" 2>/dev/null; untrack "$MAIN_PID"
	local det prb rms tms rec rq rd fnd ended failed orph eps queried answered nn left
	det=$(echo "$m" | awk -F= '$1=="detection_s"{print $2}')
	prb=$(echo "$m" | awk -F= '$1=="polled_rebind_s"{print $2}')
	rms=$(echo "$m" | awk -F= '$1=="rebind_ms"{print $2}')
	tms=$(echo "$m" | awk -F= '$1=="total_ms"{print $2}')
	rec=$(echo "$m" | awk -F= '$1=="recovered"{print $2}')
	rq=$(echo "$m" | awk -F= '$1=="recovered_via_query"{print $2}')
	rd=$(echo "$m" | awk -F= '$1=="recovered_via_digest"{print $2}')
	fnd=$(echo "$m" | awk -F= '$1=="calls_found"{print $2}')
	ended=$(echo "$m" | awk -F= '$1=="ended"{print $2}')
	failed=$(echo "$m" | awk -F= '$1=="failed"{print $2}')
	orph=$(echo "$m" | awk -F= '$1=="orphaned"{print $2}')
	eps=$(echo "$m" | awk -F= '$1=="endpoints"{print $2}')
	queried=$(echo "$m" | awk -F= '$1=="queried"{print $2}')
	answered=$(echo "$m" | awk -F= '$1=="answered"{print $2}')
	nn=$(echo "$m" | awk -F= '$1=="not_notifiers"{print $2}')
	echo "$m" >"$d/takeover.txt"
	local pct
	pct=$(awk -v r="$rec" -v n="$N" 'BEGIN{ if (r ~ /^[0-9]+$/) printf "%.2f", 100 * r / n; else print "NA" }')
	# the stand-by's own view (its log, same clock): kill -> "now ACTIVE" -> "takeover started"
	local tkill logt
	tkill=$(echo "$m" | awk -F= '$1=="t_kill"{print $2}')
	logt=$(python3 - "$d/standby.log" "$tkill" <<-'EOF'
	import datetime, re, sys
	t_kill = float(sys.argv[2])
	marks = {"now ACTIVE": "log_active_s", "takeover started": "log_takeover_started_s", "takeover finished": "log_takeover_finished_s"}
	out = {}
	for line in open(sys.argv[1], errors="replace"):
	    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
	    for k, name in marks.items():
	        if k in line and name not in out:
	            ts = line.split()[0].rstrip("Z")
	            t = datetime.datetime.fromisoformat(ts[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
	            if t >= t_kill - 1:
	                out[name] = "%.3f" % (t - t_kill)
	print(" ".join("%s=%s" % (v, out.get(v, "NA")) for v in marks.values()))
	EOF
	)
	echo "RESULT mode=$mode n=$N detection_s=$det (kill -> /status role active) standby_log: $logt (kill -> log line)"
	echo "RESULT mode=$mode n=$N rebind_ms=$rms (takeover start -> last call re-bound, server) polled_rebind_s=$prb (active -> recovered==N, polled) takeover_total_ms=$tms"
	echo "RESULT mode=$mode n=$N standby_rss_kib before_kill=$rss_before after_takeover=$rss_after"
	echo "RESULT mode=$mode n=$N recovered=$rec/$N ($pct %) via_query=$rq via_digest=$rd calls_found=$fnd ended=$ended failed=$failed orphaned=$orph endpoints=$eps queried=$queried answered=$answered not_notifiers=$nn"
	# 5. every call hangs up through the new active
	wait_sipp "$uac" "$uac_sipp" $(( tmo + 20 )); local uac_rc=$SIPP_RC
	stop_sipp "$uas" "$uas_sipp" 30; local uas_rc=$SIPP_RC
	sleep 1
	left=$(status_field "$STANDBY_ADMIN" 's["counts"]["calls"]')
	stop_node "$STANDBY_PID"
	if [ -n "$helper" ]; then
		kill -TERM "$helper" 2>/dev/null; wait "$helper" 2>/dev/null; untrack "$helper"
	fi
	local cdr; cdr=$(cdr_counts "$d/standby/cdr.sqlite" recovered)
	local a_cr a_ok a_ko a_re a_rt b_cr b_ok b_ko b_re b_rt
	read -r a_cr a_ok a_ko a_re a_rt < <(sipp_stats "$d/uac.csv")
	read -r b_cr b_ok b_ko b_re b_rt < <(sipp_stats "$d/uas.csv")
	echo "RESULT mode=$mode n=$N byes: uac rc=$uac_rc created=$a_cr successful=$a_ok failed=$a_ko (regexp=$a_re) retrans=$a_rt; uas rc=$uas_rc instances=$b_cr successful=$b_ok failed=$b_ko (regexp=$b_re) retrans=$b_rt; calls_left_on_new_active=$left; new_active_cdr=$cdr"
	# 6. targets
	local detok=0 recok=0 rbok=0 byeok=0 limit
	awk -v x="$det" 'BEGIN{exit !(x ~ /^[0-9.]+$/ && x <= 1.0)}' && detok=1
	[ "$rec" = "$N" ] && recok=1
	if [ "$mode" = query ]; then
		if [ "$N" -le 1000 ]; then limit=2000; else limit=10000; fi
	else
		# 10,000 calls in 2 s, 100,000 in 20 s: 0.2 ms per call, never under 2 s
		limit=$(( N / 5 > 2000 ? N / 5 : 2000 ))
	fi
	awk -v x="$rms" -v l="$limit" 'BEGIN{exit !(x ~ /^[0-9]+$/ && x <= l)}' && [ $recok = 1 ] && rbok=1
	[ "$a_ok" = "$N" ] && [ "$a_ko" = 0 ] && [ "$b_ko" = 0 ] && [ "$left" = 0 ] && [ "$cdr" = "normal/recovered=1:$N" ] && byeok=1
	target "$mode-detection" $detok "detection ${det}s (target <= 1.0 s)"
	target "$mode-recovered" $recok "recovered $rec of $N ($pct %, target 100 %)"
	target "$mode-rebind" $rbok "all $N re-bound ${rms} ms after detection (target <= $limit ms; polled ${prb}s)"
	target "$mode-byes" $byeok "every call hung up through the new active: uac $a_ok/$N ok, $a_ko failed; uas $b_ko failed; $left left; CDR $cdr"
	# SIPp's retransmissions (of its answers to the re-INVITEs and of its BYEs), per call leg
	local retrans_pct
	retrans_pct=$(awk -v a="$a_rt" -v b="$b_rt" -v n="$N" 'BEGIN{ if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) printf "%.2f", 100 * (a + b) / (2 * n); else print "NA" }')
	local rtok=0
	awk -v x="$retrans_pct" 'BEGIN{exit !(x ~ /^[0-9.]+$/ && x <= 1.0)}' && rtok=1
	target "$mode-retrans" $rtok "SIPp retransmissions ${retrans_pct} % per call leg (target <= 1 %)"
	SUMMARY="$SUMMARY $mode:[detection=${det}s rebind_ms=$rms recovered=$rec/$N byes_ok=$a_ok/$N keepalive_digest_bytes=$ka_size link_bytes_per_s_setup=$link_bps standby_rss_kib=${rss_before}->${rss_after} sipp_retrans_pct=$retrans_pct]"
}

# ---------------------------------------------------------------------------
# link mode: digest bytes on the pair link at LINK_RATE calls/s

link_run() {
	local d="$OUT/link" calls=$((LINK_RATE * LINK_SECS))
	mkdir -p "$d"
	echo "== link: $calls calls at $LINK_RATE/s, each held $(( LINK_SECS + 5 ))s, dialog_digest=true, out=$d"
	check_ports || die "ports still in use before the link run"
	gen_config "$d" true 0
	make_qdir "$d/q" 0
	start_pair "$d"
	local hold_ms=$(( (LINK_SECS + 5) * 1000 )) tmo=$(( 2 * LINK_SECS + 60 ))
	local common=(-set qdir "$d/q" -set hangup uac -set notifier 489 -set publish 0 -d "$hold_ms" -recv_timeout $(( hold_ms + 30000 )))
	# sampler: t bytes keepalives calls, every 0.5 s
	python3 - "$MAIN_ADMIN" "$d/samples.txt" $(( 2 * LINK_SECS + 20 )) <<-'EOF' &
	import json, sys, time, urllib.request
	admin, path, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
	t0 = time.time()
	with open(path, "w") as f:
	    while time.time() - t0 < secs:
	        try:
	            s = json.load(urllib.request.urlopen("http://127.0.0.1:%s/status" % admin, timeout=1))
	            m = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % admin, timeout=1).read().decode()
	            ka = next((l.split()[1] for l in m.splitlines() if l.startswith('understudy_keepalives_total{dir="sent"}')), "0")
	            f.write("%.3f %d %s %d\n" % (time.time(), s["digest"]["bytes_sent"], ka, s["counts"]["calls"]))
	            f.flush()
	        except Exception:
	            pass
	        time.sleep(0.5)
	EOF
	local sampler=$!
	track "$sampler"
	sleep 3 # idle keep-alives
	smart_bg uas "$tmo" "$d" -sf "$HERE/smart-uas.xml" "${common[@]}" -i 127.0.0.1 -p "$UAS_PORT" -mp 17000
	local uas=$BG_PID uas_sipp=$BG_SIPP
	local t_start; t_start=$(now)
	smart_bg uac "$tmo" "$d" 127.0.0.1:"$MAIN_PORT" -sf "$HERE/smart-uac.xml" -oocsf "$HERE/smart-notify.xml" \
		"${common[@]}" -set callee 9 -set callee_suffix 1 \
		-i 127.0.0.1 -p "$UAC_PORT" -mp 16000 -m "$calls" -r "$LINK_RATE" -l $((calls + 10))
	local uac=$BG_PID uac_sipp=$BG_SIPP
	wait_sipp "$uac" "$uac_sipp" $(( tmo + 20 )); local uac_rc=$SIPP_RC
	sleep 2
	kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; untrack "$sampler"
	stop_sipp "$uas" "$uas_sipp" 20
	stop_node "$MAIN_PID"; stop_node "$STANDBY_PID"
	local a_cr a_ok a_ko a_re a_rt
	read -r a_cr a_ok a_ko a_re a_rt < <(sipp_stats "$d/uac.csv")
	# windows: idle = before the first call; setup = 1 s after the start to 1 s
	# before the last set-up; teardown = the same LINK_SECS window shifted by the hold
	local r
	r=$(python3 - "$d/samples.txt" "$t_start" "$LINK_SECS" "$(( LINK_SECS + 5 ))" <<-'EOF'
	import sys
	rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
	t0, secs, hold = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
	def window(a, b):
	    w = [r for r in rows if a <= r[0] <= b]
	    if len(w) < 2:
	        return "NA", "NA"
	    dt, db, dk = w[-1][0] - w[0][0], w[-1][1] - w[0][1], w[-1][2] - w[0][2]
	    return "%.0f" % (db / dt), ("%.0f" % (db / dk) if dk > 0 else "NA")
	idle = window(t0 - 3, t0)
	setup = window(t0 + 1, t0 + secs - 1)
	down = window(t0 + hold + 1, t0 + hold + secs - 1)
	peak = max((r[3] for r in rows), default=0)
	print("idle_bytes_per_s=%s idle_bytes_per_keepalive=%s setup_bytes_per_s=%s setup_bytes_per_keepalive=%s "
	      "teardown_bytes_per_s=%s teardown_bytes_per_keepalive=%s peak_calls=%d" % (idle + setup + down + (peak,)))
	EOF
	)
	echo "RESULT mode=link rate=$LINK_RATE secs=$LINK_SECS calls=$calls ok=$a_ok failed=$a_ko rc=$uac_rc $r"
	local setup_bps
	setup_bps=$(echo "$r" | tr ' ' '\n' | awk -F= '$1=="setup_bytes_per_s"{print $2}')
	SUMMARY="$SUMMARY link:[setup_bytes_per_s@${LINK_RATE}cps=$setup_bps]"
	[ "$a_ok" = "$calls" ] || target link-calls 0 "only $a_ok of $calls link-run calls completed"
}

# ---------------------------------------------------------------------------
# load mode: kill -9 while calls keep arriving at LOAD_RATE/s

load_run() {
	local d="$OUT/load" calls=$N
	mkdir -p "$d"
	echo "== load: calls arrive at $LOAD_RATE/s, kill -9 at $LOAD_KILL_AT answered (of at most $calls), dialog_digest=true, out=$d"
	check_ports || die "ports still in use before the load run"
	gen_config "$d" true 0
	make_qdir "$d/q" 0
	start_pair "$d"
	local setup_s=$(( (calls + LOAD_RATE - 1) / LOAD_RATE ))
	local hold_ms=$(( (setup_s + HOLD_MARGIN_S) * 1000 ))
	local tmo=$(( setup_s + HOLD_MARGIN_S + 120 + BYE_AFTER_MS / 1000 + BYE_SPREAD_MS / 1000 ))
	local common=(-set qdir "$d/q" -set hangup "$HANGUP" -set notifier 489 -set publish 0
		-set bye_after "$BYE_AFTER_MS" -set bye_spread "$BYE_SPREAD_MS" -d "$hold_ms" -recv_timeout $(( hold_ms + 60000 )))
	smart_bg uas "$tmo" "$d" -sf "$HERE/smart-uas.xml" "${common[@]}" -i 127.0.0.1 -p "$UAS_PORT" -mp 17000 \
		-trace_logs -log_file "$d/uas.log"
	local uas=$BG_PID uas_sipp=$BG_SIPP
	smart_bg uac "$tmo" "$d" 127.0.0.1:"$MAIN_PORT" -sf "$HERE/smart-uac.xml" -oocsf "$HERE/smart-notify.xml" \
		"${common[@]}" -set callee 9 -set callee_suffix 1 -cp "$UAC_CP" \
		-i 127.0.0.1 -p "$UAC_PORT" -mp 16000 -m "$calls" -r "$LOAD_RATE" -l $((calls + 10)) \
		-trace_logs -log_file "$d/uac.log"
	local uac=$BG_PID uac_sipp=$BG_SIPP
	local answered=0 i
	for i in $(seq 1 $(( (setup_s + 30) * 20 ))); do
		answered=$(metric "$MAIN_ADMIN" 'understudy_calls_total{event="answered"}')
		[ "${answered:-0}" -ge "$LOAD_KILL_AT" ] && break
		kill -0 "$uac" 2>/dev/null || break
		sleep 0.05
	done
	[ "${answered:-0}" -ge "$LOAD_KILL_AT" ] || {
		target load-setup 0 "only ${answered:-0} calls answered on the main"
		cleanup
		return
	}
	local m
	m=$(measure_takeover "$MAIN_PID" 1 "$REBIND_BOUND_S" "$UAC_CP")
	wait "$MAIN_PID" 2>/dev/null; untrack "$MAIN_PID"
	echo "$m" >"$d/takeover.txt"
	local det rec rms fnd ring
	det=$(echo "$m" | awk -F= '$1=="detection_s"{print $2}')
	rec=$(echo "$m" | awk -F= '$1=="recovered"{print $2}')
	rms=$(echo "$m" | awk -F= '$1=="rebind_ms"{print $2}')
	fnd=$(echo "$m" | awk -F= '$1=="calls_found"{print $2}')
	ring=$(echo "$m" | awk -F= '$1=="ringing_failed"{print $2}')
	echo "RESULT mode=load answered_at_last_poll=$answered detection_s=$det calls_found=$fnd recovered=$rec ringing_failed=$ring rebind_ms=$rms"
	wait_sipp "$uac" "$uac_sipp" $(( tmo + 20 )); local uac_rc=$SIPP_RC
	stop_sipp "$uas" "$uas_sipp" 30; local uas_rc=$SIPP_RC
	sleep 1
	local left; left=$(status_field "$STANDBY_ADMIN" 's["counts"]["calls"]')
	stop_node "$STANDBY_PID"
	local cdr; cdr=$(cdr_counts "$d/standby/cdr.sqlite" recovered)
	local a_cr a_ok a_ko a_re a_rt b_cr b_ok b_ko b_re b_rt
	read -r a_cr a_ok a_ko a_re a_rt < <(sipp_stats "$d/uac.csv")
	read -r b_cr b_ok b_ko b_re b_rt < <(sipp_stats "$d/uas.csv")
	local retrans_pct
	retrans_pct=$(awk -v a="$a_rt" -v b="$b_rt" -v r="$rec" 'BEGIN{ if (r > 0) printf "%.2f", 100 * (a + b) / (2 * r); else print "NA" }')
	echo "RESULT mode=load uac: created=$a_cr successful=$a_ok failed=$a_ko retrans=$a_rt rc=$uac_rc; uas: successful=$b_ok failed=$b_ko retrans=$b_rt rc=$uas_rc; re-INVITE retransmissions ${retrans_pct}% of $((2 * ${rec:-0})); calls_left=$left cdr=$cdr"
	local keep=0 rt=0 detok=0
	[ "$a_ok" = "$rec" ] && [ "$rec" -ge "$answered" ] && [ "$left" = 0 ] && [ "$cdr" = "normal/recovered=1:$rec" ] && keep=1
	awk -v x="$retrans_pct" 'BEGIN{exit !(x ~ /^[0-9.]+$/ && x <= 1.0)}' && rt=1
	awk -v x="$det" 'BEGIN{exit !(x ~ /^[0-9.]+$/ && x <= 1.0)}' && detok=1
	target load-detection $detok "detection ${det}s (target <= 1.0 s)"
	target load-answered-calls-kept $keep "every call answered before the kill ended normally through the new active: $a_ok successful of $rec recovered (>= $answered answered at the last poll); $a_ko failed of $a_cr created (ringing or sent after the kill); CDR $cdr; $left left"
	target load-retransmissions $rt "re-INVITE retransmissions ${retrans_pct}% (target <= 1 %)"
	SUMMARY="$SUMMARY load:[rate=${LOAD_RATE}/s answered_before_kill>=${answered} recovered=$rec kept=$a_ok detection=${det}s rebind_ms=$rms retrans=${retrans_pct}%]"
}

echo "bench-takeover: mode=$MODE N=$N rate=$RATE hangup=$HANGUP bin=$BIN out=$OUT"
T0=$(date +%s)
case $MODE in
	query) takeover_run query ;;
	nodialog) takeover_run nodialog ;;
	link) link_run ;;
	load) load_run ;;
	both) takeover_run query; takeover_run nodialog; link_run ;;
esac
T1=$(date +%s)
echo "SUMMARY bench-takeover mode=$MODE n=$N targets_failed=$FAILS$SUMMARY seconds=$((T1 - T0)) out=$OUT"
if [ "$FAILS" = 0 ] && [ "$KEEP" = 0 ]; then rm -rf "$OUT"; fi
[ "$FAILS" = 0 ]
