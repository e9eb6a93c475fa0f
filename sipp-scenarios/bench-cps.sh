#!/usr/bin/env bash
# Load benchmark: understudy vs Kamailio 5.6 between the same SIPp endpoints.
#
#   SIPp -sn uac 127.0.0.1:5080  ->  server 127.0.0.1:5060  ->  SIPp -sn uas 127.0.0.1:5070
#
# The UAC sends from the "gateway" trunk address (no digest auth) and dials
# 91234, which understudy's dial plan routes to the "carrier" trunk
# (127.0.0.1:5070, leading 9 stripped): a full B2BUA call, two legs, with a
# CDR written to SQLite. The reference is Kamailio as a transaction-stateful
# proxy (tm + sl + rr, sipp-scenarios/kamailio-proxy.cfg) doing the same
# routing. Each call: INVITE / (100) / 180 / 200 / ACK / hold PAUSE_MS / BYE / 200.
#
# Usage:
#   sipp-scenarios/bench-cps.sh                   max calls/s + CPU per call
#   sipp-scenarios/bench-cps.sh concurrent [N]    memory per concurrent call (N=10000)
#
# cps mode: for each system and each rate in RATES, TRIALS bounded trials
# (calls = max(MIN_CALLS, SECS x rate), fresh server per trial). A trial
# passes when < MAX_FAIL_PCT % of the calls were not successful AND SIPp
# achieved >= MIN_RATE_FRAC of the target rate (slope of TotalCallCreated);
# a call is successful only if both the UAC and the UAS completed it (the
# built-in uac alone can miscount under packet loss, see trial()). A rate
# passes when most trials pass; max_cps is the highest rate passed before
# the first failing one. Stepping stops at the first failing rate >= 2000
# (1000 and 2000 are always run: the CPU figures are taken there).
# clean_max_cps is the same with a stricter test: mean INVITE->200 time
# <= CLEAN_MAX_RT_MS and retransmissions <= CLEAN_MAX_RETRANS_PCT per 100
# calls, i.e. the rate it sustains without leaning on SIPp's 500 ms retries.
# CPU is utime+stime from /proc/<pid>/stat of the server process (summed
# over all Kamailio processes), over the steady part of each trial, divided
# by the calls created in that window -> microseconds of CPU per call.
# Each trial line also shows datagrams dropped on the server's and the UAS's
# UDP sockets (receive buffer full, from /proc/net/udp), and for understudy
# the calls still up after the run and the CDR end_reason counts.
#
# concurrent mode: ramps N calls at CONC_RATE calls/s, each held until
# SETTLE_S seconds after the ramp ends (plus a margin), and reads memory at
# that plateau: understudy VmRSS (minus idle) / N; Kamailio with the dialog
# module (KAM_DIALOG=1): shm in use, summed PSS and summed RSS (minus idle) / N.
# SETTLE_S defaults to 35 s so that transactions of the ramp (RFC 6026 Timer L
# 32 s in understudy, tm wt_timer 5 s in Kamailio) have expired.
#
# Every SIPp run is bounded by -m and -timeout plus an outer `timeout`; all
# traffic goes to 127.0.0.1; everything started here is stopped by PID.
# The machine may be shared: before each trial the script waits (up to
# QUIET_WAIT s) for other processes to use < QUIET_BUSY % of a core, and each
# trial reports others=% (CPU of processes that are not ours during the
# measured window). Distrust trials with others above ~10.
#
# Needs: cargo build --release (builds nothing itself), sipp 3.6
# (apt-get install sip-tester), kamailio 5.6 + kamcmd (apt-get install
# kamailio), python3, curl, ss (iproute2).
#
# Environment knobs (defaults in brackets):
#   UNDERSTUDY_BIN   [./target/release/understudy, relative to the repo root]
#   SYSTEMS          ["understudy kamailio"]
#   RATES            ["1000 2000 3000 4000 5000 6000 7000 8000 10000 12000 14000 16000"]
#   TRIALS [1]  SECS [8]  MIN_CALLS [5000]  PAUSE_MS [1000]
#   MAX_FAIL_PCT [0.1]  MIN_RATE_FRAC [0.97]  STOP_AFTER_FAIL [1]
#   CLEAN_MAX_RT_MS [10]  CLEAN_MAX_RETRANS_PCT [1]
#   CDR [1]          understudy writes CDRs (0: [cdr] enabled = false)
#   SERVER_LOG [warn] RUST_LOG for understudy
#   ADMIN_PORT [8060] understudy admin API
#   KAM_CHILDREN [4]  KAM_SHM_MB [2048]  KAM_PKG_MB [16]
#   KAM_DIALOG [0 in cps mode, 1 in concurrent mode]
#   CONC_RATE [500]   SETTLE_S [35]     (concurrent mode)
#   LATE_1XX_OK [1]  SIPp ignores (instead of failing the call on) unexpected
#                    messages: -default_behaviors all,-abortunexp on both
#                    SIPps. Kamailio's UDP workers relay a 180 and the 200 of
#                    one INVITE in parallel and sometimes send the 180 last;
#                    the built-in uac would abort such a call (~0.4 % of calls
#                    at 1000 cps with 4 workers), a real UA ignores it. Calls
#                    that really go wrong still fail: they never complete.
#                    The count of ignored messages is reported (unexpected=).
#                    0 = strict.
#   QUIET_BUSY [10]  QUIET_WAIT [30]  SIPP_BUF [4194304]
#   OUT [/tmp/understudy-bench/<mode>-<epoch>]   per-trial logs and CSVs
# Prints one line per trial, one per rate, and a final SUMMARY line.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

MODE=${1:-cps}
case $MODE in
	cps) ;;
	concurrent) CONC_N=${2:-10000} ;;
	-h|--help|help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "usage: $0 [cps | concurrent [N]]" >&2; exit 2 ;;
esac

resolve_bin
SYSTEMS=${SYSTEMS:-"understudy kamailio"}
RATES=${RATES:-"1000 2000 3000 4000 5000 6000 7000 8000 10000 12000 14000 16000"}
TRIALS=${TRIALS:-1}
SECS=${SECS:-8}
MIN_CALLS=${MIN_CALLS:-5000}
PAUSE_MS=${PAUSE_MS:-1000}
MAX_FAIL_PCT=${MAX_FAIL_PCT:-0.1}
MIN_RATE_FRAC=${MIN_RATE_FRAC:-0.97}
STOP_AFTER_FAIL=${STOP_AFTER_FAIL:-1}
CDR=${CDR:-1}
SERVER_LOG=${SERVER_LOG:-warn}
ADMIN_PORT=${ADMIN_PORT:-8060}
KAM_CHILDREN=${KAM_CHILDREN:-4}
KAM_SHM_MB=${KAM_SHM_MB:-2048}
KAM_PKG_MB=${KAM_PKG_MB:-16}
if [ "$MODE" = concurrent ]; then KAM_DIALOG=${KAM_DIALOG:-1}; else KAM_DIALOG=${KAM_DIALOG:-0}; fi
CONC_RATE=${CONC_RATE:-500}
SETTLE_S=${SETTLE_S:-35}
QUIET_BUSY=${QUIET_BUSY:-10}
QUIET_WAIT=${QUIET_WAIT:-30}
SIPP_BUF=${SIPP_BUF:-4194304}
CLEAN_MAX_RT_MS=${CLEAN_MAX_RT_MS:-10}
CLEAN_MAX_RETRANS_PCT=${CLEAN_MAX_RETRANS_PCT:-1}
LATE_1XX_OK=${LATE_1XX_OK:-1}
SIPP_BEHAVIOR=()
[ "$LATE_1XX_OK" = 1 ] && SIPP_BEHAVIOR=(-default_behaviors all,-abortunexp)
OUT=${OUT:-/tmp/understudy-bench/$MODE-$(date +%s)}

SRV_PORT=5060 UAS_PORT=5070 UAC_PORT=5080
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------
# prerequisites

need_cmd sipp "apt-get install sip-tester"
for s in $SYSTEMS; do
	case $s in
		understudy) [ -x "$BIN" ] || die "understudy binary not found at $BIN: run 'cargo build --release' first (or set UNDERSTUDY_BIN)" ;;
		kamailio)
			need_cmd kamailio "apt-get install kamailio (or SYSTEMS=understudy)"
			need_cmd kamcmd "apt-get install kamailio" ;;
		*) die "unknown system '$s' in SYSTEMS (understudy, kamailio)" ;;
	esac
done
need_cmd python3
need_cmd curl
need_cmd ss "apt-get install iproute2"

ports_in_use "$SRV_PORT u" "$SRV_PORT t" "$UAS_PORT u" "$UAC_PORT u" "$ADMIN_PORT t" &&
	die "port $BUSY on 127.0.0.1 is in use (another server or SIPp running?)"

mkdir -p "$OUT" || die "cannot create $OUT"
KAM_RUN=$(mktemp -d /tmp/understudy-bench-kam.XXXXXX)

# ---------------------------------------------------------------------------
# process tracking: everything we start is stopped by PID (track, lib.sh)

cleanup() {
	stop_tracked
	rm -rf "$KAM_RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime+stime (ticks) summed over PIDs
ticks() {
	local p t=0 v
	for p in "$@"; do
		[ -r "/proc/$p/stat" ] || continue
		v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

# "pid ticks" for every process on the machine
proc_snapshot() {
	awk '{ pid = FILENAME; sub(/^\/proc\//, "", pid); sub(/\/stat$/, "", pid)
	       sub(/^.*\) /, ""); print pid, $12 + $13 }' /proc/[0-9]*/stat 2>/dev/null
}

# others_pct SNAP0 SNAP1 "OUR PIDS" SECONDS -> CPU % of one core used by other processes
others_pct() {
	awk -v dt="$4" -v hz="$CLK_TCK" -v ours="$3" '
	BEGIN { n = split(ours, o, " "); for (i = 1; i <= n; i++) skip[o[i]] = 1 }
	FNR == NR { a[$1] = $2; next }
	!($1 in skip) { d = $2 - (($1 in a) ? a[$1] : 0); if (d > 0) s += d }
	END { printf "%.0f\n", 100 * s / hz / dt }' "$1" "$2"
}

# Wait (up to QUIET_WAIT s) until other processes use < QUIET_BUSY % of a core. Sets PRE_BUSY.
wait_quiet() {
	local waited=0 f0 f1
	f0=$(mktemp) f1=$(mktemp)
	while :; do
		proc_snapshot >"$f0"; sleep 1; proc_snapshot >"$f1"
		PRE_BUSY=$(others_pct "$f0" "$f1" "$$" 1)
		[ "$PRE_BUSY" -lt "$QUIET_BUSY" ] && break
		[ $waited -ge "$QUIET_WAIT" ] && break
		sleep 2; waited=$((waited + 3))
	done
	rm -f "$f0" "$f1"
}

# datagrams dropped (receive buffer full) on the UDP socket(s) bound to 127.0.0.1:PORT
udp_drops() {
	local hex
	hex=$(printf '0100007F:%04X' "$1")
	awk -v a="$hex" 'NR > 1 && $2 == a { d += $NF } END { print d + 0 }' /proc/net/udp
}

# wait (up to 10 s) until nothing is bound to UDP 127.0.0.1:PORT
wait_port_free() {
	local i
	for i in $(seq 1 50); do port_busy "$1" u || return 0; sleep 0.2; done
	return 1
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null; }

# "pss_kb rss_kb" summed over PIDs
mem_sum_kb() {
	local p pss=0 rss=0 a b
	for p in "$@"; do
		[ -r "/proc/$p/smaps_rollup" ] || continue
		a=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup")
		b=$(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup")
		pss=$((pss + ${a:-0})); rss=$((rss + ${b:-0}))
	done
	echo "$pss $rss"
}

# ---------------------------------------------------------------------------
# servers: start_<system> DIR sets SRV_PIDS (all processes to meter) and
# SRV_MAIN; stop_<system> stops them.

start_understudy() {
	local d=$1
	wait_port_free "$SRV_PORT" || die "UDP port $SRV_PORT still in use"
	mkdir -p "$d/state"
	local cdr_enabled=true
	[ "$CDR" = 1 ] || cdr_enabled=false
	{
		echo "# config/single.toml with the state and CDRs in the trial directory"
		cfg_node bench main "$SRV_PORT" "$ADMIN_PORT" "$d/state" tcp
		cfg_alice_bob
		cfg_trunks "$UAS_PORT" "$UAC_PORT"
		printf '[media]\nmode = "bypass"\n\n'
		printf '[cdr]\nenabled = %s\npath = "%s"\n' "$cdr_enabled" "$d/state/cdr.sqlite"
	} >"$d/understudy.toml"
	RUST_LOG=$SERVER_LOG understudy_bg "$d/understudy.toml" "$d/server.log"
	SRV_MAIN=$NODE_PID
	track "$SRV_MAIN"
	wait_status "$SRV_MAIN" "$ADMIN_PORT" 100
	case $? in
		1) die "understudy exited at start-up, see $d/server.log" ;;
		2) die "understudy admin API did not answer, see $d/server.log" ;;
	esac
	SRV_PIDS=$SRV_MAIN
}

stop_understudy() {
	stop_pid "$SRV_MAIN"
	untrack "$SRV_MAIN"
}

start_kamailio() {
	local d=$1 defs
	defs=(-A "UAS_URI=\"sip:127.0.0.1:$UAS_PORT\"" -A "LISTEN_ADDR=udp:127.0.0.1:$SRV_PORT"
		-A "CTL_SOCK=\"unix:$KAM_RUN/ctl.sock\"")
	[ "$KAM_DIALOG" = 1 ] && defs+=(-A WITH_DIALOG)
	wait_port_free "$SRV_PORT" || die "UDP port $SRV_PORT still in use"
	rm -f "$KAM_RUN/kamailio.pid" "$KAM_RUN/ctl.sock"
	# -DD: stay in the foreground (no daemon, never the systemd unit); -E: log to stderr
	kamailio -f "$HERE/kamailio-proxy.cfg" "${defs[@]}" -DD -E -n "$KAM_CHILDREN" \
		-m "$KAM_SHM_MB" -M "$KAM_PKG_MB" -P "$KAM_RUN/kamailio.pid" -Y "$KAM_RUN" \
		>"$d/kamailio.log" 2>&1 &
	local creator=$!
	track "$creator"
	local i
	for i in $(seq 1 75); do
		[ -S "$KAM_RUN/ctl.sock" ] && [ -s "$KAM_RUN/kamailio.pid" ] && port_busy "$SRV_PORT" u && break
		kill -0 "$creator" 2>/dev/null || die "kamailio exited at start-up, see $d/kamailio.log"
		sleep 0.2
	done
	sleep 0.5
	SRV_MAIN=$(cat "$KAM_RUN/kamailio.pid" 2>/dev/null)
	[ -n "$SRV_MAIN" ] || die "kamailio did not write its PID file, see $d/kamailio.log"
	# creator (parent of the attendant with -DD) + attendant + all its children
	SRV_PIDS="$creator $SRV_MAIN $(ps -o pid= --ppid "$SRV_MAIN" | tr '\n' ' ')"
	KAM_CREATOR=$creator
	track $SRV_PIDS
}

kamcmd_() { kamcmd -s "unix:$KAM_RUN/ctl.sock" "$@" 2>/dev/null; }

stop_kamailio() {
	kill -TERM "$SRV_MAIN" 2>/dev/null
	local i p
	for i in $(seq 1 25); do kill -0 "$SRV_MAIN" 2>/dev/null || break; sleep 0.2; done
	for p in $SRV_PIDS; do kill -KILL "$p" 2>/dev/null; done
	wait "$KAM_CREATOR" 2>/dev/null
	for i in $(seq 1 25); do
		local alive=0
		for p in $SRV_PIDS; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.2
	done
	untrack $SRV_PIDS
}

# ---------------------------------------------------------------------------
# SIPp: built-in uac and uas scenarios

# start_uas CALLS TIMEOUT_S DIR -> UAS_PID (timeout wrapper), UAS_SIPP (sipp); DIR/uas.{csv,err,screen,stderr}
start_uas() {
	sipp_tracked "$3/uas" "$2" 0.3 -sn uas -i 127.0.0.1 -p "$UAS_PORT" -mp 17000 -cp 18889 -m "$1" \
		-buff_size "$SIPP_BUF" "${SIPP_BEHAVIOR[@]}"
	UAS_PID=$BG_PID UAS_SIPP=$BG_SIPP
}

# start_uac RATE CALLS TIMEOUT_S DIR [extra sipp args] -> UAC_PID, UAC_SIPP; DIR/uac.{csv,err,screen,stderr}
start_uac() {
	local rate=$1 calls=$2 tmo=$3 d=$4; shift 4
	sipp_tracked "$d/uac" "$tmo" 0.2 -sn uac 127.0.0.1:"$SRV_PORT" -s 91234 \
		-i 127.0.0.1 -p "$UAC_PORT" -mp 16000 -cp 18888 \
		-r "$rate" -m "$calls" -timeout_error -buff_size "$SIPP_BUF" "${SIPP_BEHAVIOR[@]}" "$@"
	UAC_PID=$BG_PID UAC_SIPP=$BG_SIPP
}

stop_uas() {
	kill -TERM "$UAS_SIPP" 2>/dev/null
	wait "$UAS_PID" 2>/dev/null
	untrack "$UAS_PID" "$UAS_SIPP"
}

# parse_stat CSV CALLS [T0 T1] -> "created successful failed retrans achieved_cps rt_avg_ms created_in_window"
# achieved_cps: slope of TotalCallCreated over the 1-s dumps while calls were
# still being created; created_in_window: calls created between T0 and T1 (epoch s),
# interpolated.
parse_stat() {
	python3 - "$@" <<-'EOF'
	import sys
	path, n = sys.argv[1], int(sys.argv[2])
	t0 = float(sys.argv[3]) if len(sys.argv) > 3 else None
	t1 = float(sys.argv[4]) if len(sys.argv) > 4 else None
	try:
	    rows = [l.rstrip("\n").split(";") for l in open(path) if l.strip()]
	except OSError:
	    print("0 0 0 0 0 0 0"); sys.exit()
	if len(rows) < 2:
	    print("0 0 0 0 0 0 0"); sys.exit()
	h = {name: i for i, name in enumerate(rows[0])}
	pts, last = [], rows[-1]
	for r in rows[1:]:
	    t = float(r[h["CurrentTime"]].split("\t")[-1])
	    pts.append((t, int(r[h["TotalCallCreated"]])))
	mid = [(t, c) for t, c in pts if 0 < c < n]
	rate = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 1 and mid[-1][0] > mid[0][0] else 0
	def created_at(t):
	    if t <= pts[0][0]: return pts[0][1]
	    for (ta, ca), (tb, cb) in zip(pts, pts[1:]):
	        if ta <= t <= tb:
	            return ca + (cb - ca) * (t - ta) / (tb - ta) if tb > ta else cb
	    return pts[-1][1]
	win = created_at(t1) - created_at(t0) if t0 is not None else 0
	rtcol = next((i for name, i in h.items() if name.startswith("ResponseTime1(C)")), None)
	rt = 0.0
	if rtcol is not None:
	    p = last[rtcol].split(":")
	    if len(p) == 4:
	        rt = (int(p[0]) * 3600 + int(p[1]) * 60 + int(p[2])) * 1000 + int(p[3]) / 1000
	print(int(last[h["TotalCallCreated"]]), int(last[h["SuccessfulCall(C)"]]), int(last[h["FailedCall(C)"]]),
	      int(last[h["Retransmissions(C)"]]), f"{rate:.1f}", f"{rt:.2f}", f"{win:.0f}")
	EOF
}

median() { tr ' ' '\n' | grep -v '^$' | grep -v NA | sort -g | awk '{a[NR]=$1} END{ if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# ---------------------------------------------------------------------------
# cps mode

# trial SYSTEM RATE DIR -> prints one line, sets T_PASS, T_US (CPU us/call), T_ACH
trial() {
	local sys=$1 rate=$2 d=$3
	mkdir -p "$d"
	local calls=$((rate * SECS)); [ $calls -lt "$MIN_CALLS" ] && calls=$MIN_CALLS
	local gen=$(( (calls + rate - 1) / rate ))
	local tmo=$(( gen + PAUSE_MS / 1000 + 30 ))
	wait_quiet
	"start_$sys" "$d"
	start_uas "$calls" $((tmo + 10)) "$d"
	start_uac "$rate" "$calls" "$tmo" "$d" -d "$PAUSE_MS"
	# meter the steady part: 2 s after the start until ~1 s before the last call is created
	local win=$((gen - 3)); [ $win -lt 2 ] && win=2
	sleep 2
	local s0 s1 a0 a1 b0 b1 k0 k1 t0 t1
	proc_snapshot >"$d/ps0"
	a0=$(ticks $UAC_SIPP); b0=$(ticks $UAS_SIPP); k0=$(ticks $SRV_PIDS); t0=$(now)
	sleep "$win"
	a1=$(ticks $UAC_SIPP); b1=$(ticks $UAS_SIPP); k1=$(ticks $SRV_PIDS); t1=$(now)
	proc_snapshot >"$d/ps1"
	local dt others
	dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')
	others=$(others_pct "$d/ps0" "$d/ps1" "$$ $UAC_PID $UAC_SIPP $UAS_PID $UAS_SIPP $SRV_PIDS" "$dt")
	wait "$UAC_PID"; local rc=$?
	untrack "$UAC_PID" "$UAC_SIPP"
	local left=NA drops_srv drops_uas i
	drops_srv=$(udp_drops "$SRV_PORT") drops_uas=$(udp_drops "$UAS_PORT")
	# the UAS exits by itself once all its calls are done; give it up to 5 s
	for i in $(seq 1 50); do kill -0 "$UAS_SIPP" 2>/dev/null || break; sleep 0.1; done
	if [ "$sys" = understudy ]; then
		# calls still up in the server after the run, and (if any) after up to 10 s more
		left=$(status_field "$ADMIN_PORT" 's["counts"]["calls"]')
		if [ "$left" != 0 ]; then
			local l2=$left
			for i in $(seq 1 20); do
				sleep 0.5
				l2=$(status_field "$ADMIN_PORT" 's["counts"]["calls"]')
				[ "$l2" = 0 ] && break
			done
			curl -sf -m 5 "http://127.0.0.1:$ADMIN_PORT/calls" >"$d/calls_left.json" 2>/dev/null
			left="$left->$l2"
		fi
	fi
	stop_uas
	"stop_$sys"
	local created ok failed retr ach rt inwin uas_ok x
	read -r created ok failed retr ach rt inwin < <(parse_stat "$d/uac.csv" "$calls" "$t0" "$t1")
	read -r x uas_ok x < <(parse_stat "$d/uas.csv" "$calls")
	# A call counts as successful only if BOTH SIPps completed it: SIPp's built-in
	# uac takes any 200 after its BYE as the BYE's 200, including a retransmitted
	# 200 for the INVITE whose ACK was lost, so under loss it can count calls the
	# server never saw end. The UAS only completes a call when the BYE reached it.
	local ok_eff=$ok
	[ "${uas_ok:-0}" -lt "$ok_eff" ] && ok_eff=${uas_ok:-0}
	local failpct cpu_srv cpu_uac cpu_uas us
	failpct=$(awk -v n="$calls" -v s="$ok_eff" 'BEGIN{printf "%.3f", 100 * (n - s) / n}')
	read -r cpu_srv cpu_uac cpu_uas us < <(awk -v k0="$k0" -v k1="$k1" -v a0="$a0" -v a1="$a1" \
		-v b0="$b0" -v b1="$b1" -v dt="$dt" -v hz="$CLK_TCK" -v w="$inwin" 'BEGIN{
		printf "%.0f %.0f %.0f %s\n", 100*(k1-k0)/hz/dt, 100*(a1-a0)/hz/dt, 100*(b1-b0)/hz/dt,
			(w > 0) ? sprintf("%.0f", 1e6*(k1-k0)/hz/w) : "NA" }')
	T_PASS=$(awk -v f="$failpct" -v mf="$MAX_FAIL_PCT" -v a="$ach" -v r="$rate" -v fr="$MIN_RATE_FRAC" \
		'BEGIN{print (f < mf && a >= fr * r) ? "PASS" : "FAIL"}')
	# clean: passed, and without leaning on retransmissions (SIPp T1 = 500 ms)
	T_CLEAN=$(awk -v p="$T_PASS" -v rt="$rt" -v rx="$retr" -v n="$calls" -v mrt="$CLEAN_MAX_RT_MS" -v mrx="$CLEAN_MAX_RETRANS_PCT" \
		'BEGIN{print (p == "PASS" && rt <= mrt && 100 * rx / n <= mrx) ? "clean" : "unclean"}')
	T_US=$us T_ACH=$ach T_CPU=$cpu_srv T_OTHERS=$others
	local unexp cdr=""
	unexp=$(cat "$d/uac.err" "$d/uas.err" 2>/dev/null | grep -c 'call on unexpected message')
	if [ "$sys" = understudy ] && [ "$CDR" = 1 ]; then
		cdr=" cdr=$(cdr_counts "$d/state/cdr.sqlite" by_count 2>/dev/null || echo NA)"
	fi
	echo "trial system=$sys rate=$rate calls=$calls ok=$ok uas_ok=$uas_ok failed=$failed fail%=$failpct achieved_cps=$ach retrans=$retr unexpected=$unexp udp_drops=server:$drops_srv,uas:$drops_uas rt_avg_ms=$rt cpu%: server=$cpu_srv uac=$cpu_uac uas=$cpu_uas us_per_call=$us others=$others pre_others=$PRE_BUSY calls_left=$left$cdr rc=$rc $T_PASS $T_CLEAN"
}

declare -A MAXCPS CLEANMAX US1000 US2000

cps_system() {
	local sys=$1 rate best=0 clean_best=0 verdict
	FAILED_ONCE=0 CLEAN_FAILED=0
	for rate in $RATES; do
		local npass=0 nclean=0 uss="" achs="" t
		for t in $(seq 1 "$TRIALS"); do
			trial "$sys" "$rate" "$OUT/$sys-r$rate-t$t"
			[ "$T_PASS" = PASS ] && npass=$((npass + 1))
			[ "$T_CLEAN" = clean ] && nclean=$((nclean + 1))
			uss="$uss $T_US"; achs="$achs $T_ACH"
			sleep 1
		done
		if [ $((2 * npass)) -gt "$TRIALS" ]; then verdict=PASS; else verdict=FAIL; fi
		local mus
		mus=$(echo "$uss" | median)
		echo "RATE system=$sys rate=$rate passed=$npass/$TRIALS clean=$nclean/$TRIALS median_achieved_cps=$(echo "$achs" | median) median_us_per_call=$mus $verdict"
		[ $((2 * nclean)) -gt "$TRIALS" ] && [ "$CLEAN_FAILED" = 0 ] && clean_best=$rate
		[ $((2 * nclean)) -gt "$TRIALS" ] || CLEAN_FAILED=1
		[ "$rate" = 1000 ] && US1000[$sys]=$mus
		[ "$rate" = 2000 ] && US2000[$sys]=$mus
		# the max is the highest rate passed before the first failing one
		if [ $verdict = PASS ]; then
			[ "$FAILED_ONCE" = 1 ] || best=$rate
		else
			FAILED_ONCE=1
			if [ "$STOP_AFTER_FAIL" = 1 ] && [ "$rate" -ge 2000 ]; then break; fi
		fi
	done
	MAXCPS[$sys]=$best
	CLEANMAX[$sys]=$clean_best
}

run_cps() {
	echo "bench-cps: systems='$SYSTEMS' rates='$RATES' trials=$TRIALS secs=$SECS pause_ms=$PAUSE_MS cdr=$CDR kam_children=$KAM_CHILDREN out=$OUT"
	local sys
	for sys in $SYSTEMS; do
		FAILED_ONCE=0
		cps_system "$sys"
	done
	local u=${MAXCPS[understudy]:-NA} k=${MAXCPS[kamailio]:-NA}
	local ratio cpu1 cpu2
	ratio=$(awk -v u="$u" -v k="$k" 'BEGIN{ if (u+0 > 0 && k+0 > 0) printf "%.2f", u/k; else print "NA" }')
	cpu1=$(awk -v u="${US1000[understudy]:-NA}" -v k="${US1000[kamailio]:-NA}" 'BEGIN{ if (u+0 > 0 && k+0 > 0) printf "%.2f", u/k; else print "NA" }')
	cpu2=$(awk -v u="${US2000[understudy]:-NA}" -v k="${US2000[kamailio]:-NA}" 'BEGIN{ if (u+0 > 0 && k+0 > 0) printf "%.2f", u/k; else print "NA" }')
	local cu=${CLEANMAX[understudy]:-NA} ck=${CLEANMAX[kamailio]:-NA} cratio
	cratio=$(awk -v u="$cu" -v k="$ck" 'BEGIN{ if (u+0 > 0 && k+0 > 0) printf "%.2f", u/k; else print "NA" }')
	echo "SUMMARY bench-cps understudy_max_cps=$u kamailio_max_cps=$k ratio=$ratio" \
		"clean_max_cps: understudy=$cu kamailio=$ck ratio=$cratio" \
		"cpu_us_per_call@1000: understudy=${US1000[understudy]:-NA} kamailio=${US1000[kamailio]:-NA} ratio=$cpu1" \
		"cpu_us_per_call@2000: understudy=${US2000[understudy]:-NA} kamailio=${US2000[kamailio]:-NA} ratio=$cpu2" \
		"trials=$TRIALS secs=$SECS pause_ms=$PAUSE_MS cdr=$CDR kam_children=$KAM_CHILDREN out=$OUT"
}

# ---------------------------------------------------------------------------
# concurrent mode

# concurrent SYSTEM -> prints samples and one result line; sets C_RESULT
concurrent() {
	local sys=$1 n=$CONC_N d="$OUT/$1"
	mkdir -p "$d"
	local ramp=$(( (n + CONC_RATE - 1) / CONC_RATE ))
	local hold_ms=$(( (ramp + SETTLE_S + 10) * 1000 ))
	local tmo=$(( ramp + hold_ms / 1000 + 40 ))
	wait_quiet
	"start_$sys" "$d"
	sleep 1
	local idle_rss idle_pss idle_rsum idle_shm=NA
	if [ "$sys" = understudy ]; then
		idle_rss=$(rss_kb "$SRV_MAIN")
	else
		read -r idle_pss idle_rsum < <(mem_sum_kb $SRV_PIDS)
		idle_shm=$(kamcmd_ core.shmmem | awk '$1=="real_used:"{print int($2/1024)}')
	fi
	start_uas "$n" $((tmo + 10)) "$d"
	start_uac "$CONC_RATE" "$n" "$tmo" "$d" -d "$hold_ms" -l $((n + 100))
	local t_start plateau_at el sampled=0 line
	t_start=$(now)
	plateau_at=$((ramp + SETTLE_S))
	local p_calls=NA p_rss=NA p_pss=NA p_rsum=NA p_shm=NA p_tx=NA p_sipp=NA peak_rss=0
	while kill -0 "$UAC_SIPP" 2>/dev/null; do
		sleep 2
		el=$(awk -v a="$t_start" -v b="$(now)" 'BEGIN{printf "%.0f", b - a}')
		[ "$el" -gt $((tmo + 20)) ] && { echo "outer time limit hit"; break; }
		local sipp_open calls rss pss rsum shm tx
		sipp_open=$(tail -1 "$d/uac.csv" 2>/dev/null | awk -F';' '{print $14 + 0}')
		if [ "$sys" = understudy ]; then
			rss=$(rss_kb "$SRV_MAIN")
			read -r calls tx < <(curl -sf -m 2 "http://127.0.0.1:$ADMIN_PORT/status" 2>/dev/null |
				python3 -c 'import json,sys; c=json.load(sys.stdin)["counts"]; print(c["calls"], c["server_transactions"] + c["client_transactions"])' 2>/dev/null || echo "NA NA")
			[ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
			line="t=$el sipp_open_calls=$sipp_open server_calls=$calls transactions=$tx rss_kb=$rss"
		else
			read -r pss rsum < <(mem_sum_kb $SRV_PIDS)
			shm=$(kamcmd_ core.shmmem | awk '$1=="real_used:"{print int($2/1024)}')
			calls=$(kamcmd_ stats.get_statistics all | awk '$1=="dialog:active_dialogs"{print $3}')
			[ "${rsum:-0}" -gt "$peak_rss" ] && peak_rss=$rsum
			line="t=$el sipp_open_calls=$sipp_open active_dialogs=${calls:-NA} shm_used_kb=$shm pss_sum_kb=$pss rss_sum_kb=$rsum"
		fi
		echo "$line" >>"$d/samples.log"
		if [ $sampled = 0 ] && [ "$el" -ge "$plateau_at" ]; then
			sampled=1
			p_calls=$calls p_sipp=$sipp_open
			if [ "$sys" = understudy ]; then p_rss=$rss p_tx=$tx; else p_pss=$pss p_rsum=$rsum p_shm=$shm; fi
			echo "plateau $sys: $line"
		elif [ $((el % 10)) -lt 2 ]; then
			echo "  $sys $line"
		fi
	done
	wait "$UAC_PID"; local rc=$?
	untrack "$UAC_PID" "$UAC_SIPP"
	sleep 1
	local after=NA
	if [ "$sys" = understudy ]; then
		after="calls_left=$(status_field "$ADMIN_PORT" 's["counts"]["calls"]') rss_after_kb=$(rss_kb "$SRV_MAIN")"
	else
		after="dialogs_left=$(kamcmd_ stats.get_statistics all | awk '$1=="dialog:active_dialogs"{print $3}')"
	fi
	stop_uas
	"stop_$sys"
	local created ok failed retr ach rt w
	read -r created ok failed retr ach rt w < <(parse_stat "$d/uac.csv" "$n")
	if [ "$sys" = understudy ]; then
		local per
		per=$(awk -v a="$p_rss" -v b="$idle_rss" -v n="$n" 'BEGIN{ if (a+0 > 0) printf "%.0f", (a - b) * 1024 / n; else print "NA" }')
		C_RESULT="understudy: calls=$n ok=$ok failed=$failed retrans=$retr plateau_calls=$p_calls (sipp_open=$p_sipp) transactions_at_plateau=$p_tx rss_idle_kb=$idle_rss rss_plateau_kb=$p_rss rss_peak_kb=$peak_rss bytes_rss_per_call=$per $after rc=$rc"
		C_US=$per
	else
		local per_shm per_pss per_rss
		per_shm=$(awk -v a="$p_shm" -v b="$idle_shm" -v n="$n" 'BEGIN{ if (a+0 > 0) printf "%.0f", (a - b) * 1024 / n; else print "NA" }')
		per_pss=$(awk -v a="$p_pss" -v b="$idle_pss" -v n="$n" 'BEGIN{ if (a+0 > 0) printf "%.0f", (a - b) * 1024 / n; else print "NA" }')
		per_rss=$(awk -v a="$p_rsum" -v b="$idle_rsum" -v n="$n" 'BEGIN{ if (a+0 > 0) printf "%.0f", (a - b) * 1024 / n; else print "NA" }')
		C_RESULT="kamailio(dialog=$KAM_DIALOG,children=$KAM_CHILDREN): calls=$n ok=$ok failed=$failed retrans=$retr plateau_dialogs=$p_calls (sipp_open=$p_sipp) shm_idle_kb=$idle_shm shm_plateau_kb=$p_shm bytes_shm_per_call=$per_shm pss_sum_idle_kb=$idle_pss pss_sum_plateau_kb=$p_pss bytes_pss_per_call=$per_pss rss_sum_idle_kb=$idle_rsum rss_sum_plateau_kb=$p_rsum bytes_rss_sum_per_call=$per_rss $after rc=$rc"
		C_KAM="shm=$per_shm pss=$per_pss rss_sum=$per_rss"
	fi
	echo "RESULT $C_RESULT"
}

run_concurrent() {
	echo "bench-cps concurrent: systems='$SYSTEMS' calls=$CONC_N rate=$CONC_RATE settle_s=$SETTLE_S kam_dialog=$KAM_DIALOG out=$OUT"
	local sys C_US=NA C_KAM=NA
	for sys in $SYSTEMS; do
		concurrent "$sys"
	done
	echo "SUMMARY bench-cps concurrent calls=$CONC_N rate=$CONC_RATE understudy_bytes_rss_per_call=$C_US kamailio_bytes_per_dialog: $C_KAM out=$OUT"
}

if [ "$MODE" = cps ]; then run_cps; else run_concurrent; fi
