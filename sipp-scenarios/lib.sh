# Shared helpers of the sipp-scenarios scripts (run-functional.sh, bench-cps.sh,
# bench-takeover.sh). Sourced, never run: `. "$HERE/lib.sh"`, after `set -u`.
# Defines functions only (and BIN through resolve_bin); each script keeps its
# own knobs, checks and output lines.

LIB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "ERROR: $*" >&2; exit 2; }

# need_cmd CMD [HINT]: die unless CMD is on the PATH
need_cmd() {
	command -v "$1" >/dev/null || die "$1 not found${2:+: $2}"
}

# resolve_bin: BIN = $UNDERSTUDY_BIN (relative to the current directory) or
# ./target/release/understudy relative to the repo root
resolve_bin() {
	BIN=${UNDERSTUDY_BIN:-./target/release/understudy}
	case $BIN in /*) ;; *) [ -n "${UNDERSTUDY_BIN:-}" ] && BIN="$PWD/$BIN" || BIN="$LIB_REPO/${BIN#./}" ;; esac
}

now() { date +%s.%N; }

# ---------------------------------------------------------------------------
# ports

# port_busy PORT u|t: is anything bound to 127.0.0.1:PORT (any wildcard too)?
port_busy() {
	ss -Hln"$2" 2>/dev/null | awk '{print $4}' | grep -qE "^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]|\[::ffff:127\.0\.0\.1\]):$1\$"
}

# ports_in_use "PORT u|t"...: true if any of them is bound; BUSY = "PORT (u|t)" of the first
ports_in_use() {
	local spec
	BUSY=""
	for spec in "$@"; do
		set -- $spec
		port_busy "$1" "$2" && { BUSY="$1 ($2)"; return 0; }
	done
	return 1
}

# ---------------------------------------------------------------------------
# process tracking: everything started is stopped by PID

PIDS=()
track() { PIDS+=("$@"); }
untrack() {
	local keep=() p q drop
	for p in "${PIDS[@]}"; do
		drop=0
		for q in "$@"; do [ "$p" = "$q" ] && drop=1; done
		[ $drop = 0 ] && keep+=("$p")
	done
	PIDS=("${keep[@]}")
}
# stop_tracked: SIGTERM to every tracked PID, up to 3 s, then KILL
stop_tracked() {
	local p i alive
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for i in 1 2 3 4 5 6 7 8 9 10; do
		alive=0
		for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.3
	done
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	PIDS=()
}

# ---------------------------------------------------------------------------
# understudy

# understudy_bg CONFIG LOG: starts "$BIN run --config CONFIG" in the background
# (stdout + stderr to LOG, RUST_LOG from the environment); NODE_PID
understudy_bg() {
	"$BIN" run --config "$1" >"$2" 2>&1 &
	NODE_PID=$!
}

# wait_status PID ADMIN_PORT TRIES: polls GET /status every 0.1 s, up to TRIES
# times; 0 once it answers, 1 if PID exited first (reaped), 2 if it never answered
wait_status() {
	local i
	for i in $(seq 1 "$3"); do
		if ! kill -0 "$1" 2>/dev/null; then
			wait "$1" 2>/dev/null
			return 1
		fi
		curl -sf -m 1 "http://127.0.0.1:$2/status" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 2
}

# status_field ADMIN_PORT EXPR: a python expression over the /status JSON (s),
# e.g. 's["counts"]["calls"]'; NA on error
status_field() {
	curl -sf -m 2 "http://127.0.0.1:$1/status" 2>/dev/null |
		python3 -c "import json,sys; s=json.load(sys.stdin); print($2)" 2>/dev/null || echo NA
}

# wait_pair MAIN_ADMIN STANDBY_ADMIN TRIES INTERVAL_S [PID...]: until the main is
# "active" and the stand-by "standby", each seeing its peer alive; 1 after TRIES
# polls or as soon as one of the PIDs is gone. PAIR_SEEN = "main R/P, standby R/P".
wait_pair() {
	local ma=$1 sa=$2 tries=$3 every=$4 i m s p
	shift 4
	PAIR_SEEN=""
	for i in $(seq 1 "$tries"); do
		for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done
		m=$(status_field "$ma" 's["role"]+"/"+s["peer"]["state"]')
		s=$(status_field "$sa" 's["role"]+"/"+s["peer"]["state"]')
		PAIR_SEEN="main $m, standby $s"
		[ "$m" = active/alive ] && [ "$s" = standby/alive ] && return 0
		sleep "$every"
	done
	return 1
}

# stop_pid PID [TRIES]: SIGTERM (understudy flushes its CDRs), up to TRIES x 0.1 s
# (100), then KILL; reaps it. 1 if it had to be killed.
stop_pid() {
	local i rc=0
	kill -TERM "$1" 2>/dev/null
	for i in $(seq 1 "${2:-100}"); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$1" 2>/dev/null; then
		kill -KILL "$1" 2>/dev/null
		rc=1
	fi
	wait "$1" 2>/dev/null
	return $rc
}

# ---------------------------------------------------------------------------
# config pieces (TOML on stdout)

# cfg_node NAME ROLE SIP_PORT ADMIN_PORT STATE_DIR [tcp]: [node] (SIP over UDP,
# and TCP on the same port with "tcp"), [admin] and [state]
cfg_node() {
	printf '[node]\nname = "%s"\nhome_role = "%s"\nsip_udp = "127.0.0.1:%s"\n' "$1" "$2" "$3"
	[ "${6:-}" = tcp ] && printf 'sip_tcp = "127.0.0.1:%s"\n' "$3"
	printf 'domain = "pbx.local"\n\n[admin]\nlisten = "127.0.0.1:%s"\n\n[state]\ndir = "%s"\n\n' "$4" "$5"
}

# cfg_pair PEER_PORT SECRET MODE DIGEST KEEPALIVE_MS MISSED PROBE_MS PARALLEL QUERY_TIMEOUT_MS:
# [pair] and [takeover] (fallback none)
cfg_pair() {
	cat <<-EOF
	[pair]
	peer = "127.0.0.1:$1"
	secret = "$2"
	keepalive_ms = $5
	missed_keepalives = $6
	probe_timeout_ms = $7
	mode = "$3"
	dialog_digest = $4

	[takeover]
	parallel = $8
	query_timeout_ms = $9
	fallback = "none"

	EOF
}

cfg_registrar() {
	printf '[registrar]\nmin_expires = 60\nmax_expires = 3600\ndefault_expires = 3600\n\n'
}

# cfg_alice_bob: the users of config/single.toml
cfg_alice_bob() {
	printf '[[users]]\nname = "alice"\npassword = "alice-secret"\n\n'
	printf '[[users]]\nname = "bob"\npassword = "bob-secret"\n\n'
}

# cfg_trunk NAME PORT PREFIX STRIP [LINE...]: one [[trunks]] at 127.0.0.1:PORT, plus LINEs
cfg_trunk() {
	printf '[[trunks]]\nname = "%s"\naddress = "127.0.0.1:%s"\nprefixes = ["%s"]\nstrip = %s\n' "$1" "$2" "$3" "$4"
	shift 4
	[ $# = 0 ] || printf '%s\n' "$@"
	echo
}

# cfg_trunks CARRIER_PORT GATEWAY_PORT [LINE...]: the trunks of config/single.toml,
# carrier (9, strip 1) and gateway (0), both with LINEs
cfg_trunks() {
	local c=$1 g=$2
	shift 2
	cfg_trunk carrier "$c" 9 1 "$@"
	cfg_trunk gateway "$g" 0 0 "$@"
}

# cfg_phones N UAC_PORT UAS_PORT: static users c1..cN (contact at the caller SIPp,
# 127.0.0.1:UAC_PORT) and u1..uN (at the callee SIPp): the smart endpoints' phones
cfg_phones() {
	local k
	for k in $(seq 1 "$1"); do
		printf '[[users]]\nname = "c%d"\npassword = ""\ncontact = "sip:c%d@127.0.0.1:%s"\n\n' "$k" "$k" "$2"
		printf '[[users]]\nname = "u%d"\npassword = ""\ncontact = "sip:u%d@127.0.0.1:%s"\n\n' "$k" "$k" "$3"
	done
}

# ---------------------------------------------------------------------------
# SIPp

# sipp_cmd PREFIX TIMEOUT_S ARGS...: SIPP_CMD = SIPp with ARGS, bounded by
# -timeout and an outer `timeout`, never reading stdin; statistics every second
# in PREFIX.csv, errors in PREFIX.err, the screen in PREFIX.screen
sipp_cmd() {
	local out=$1 tmo=$2
	shift 2
	SIPP_CMD=(timeout -k 5 $((tmo + 10)) sipp "$@" -timeout "${tmo}s" -nostdin
		-trace_stat -stf "$out.csv" -fd 1
		-trace_err -error_file "$out.err"
		-trace_screen -screen_file "$out.screen")
}

# sipp_run PREFIX TIMEOUT_S ARGS...: sipp_cmd in the foreground, its stderr in
# PREFIX.stderr; sets SIPP_RC
sipp_run() {
	sipp_cmd "$@"
	"${SIPP_CMD[@]}" >/dev/null 2>"$1.stderr"
	SIPP_RC=$?
}

# sipp_bg PREFIX TIMEOUT_S ARGS...: the same in the background; BG_PID = the
# timeout wrapper
sipp_bg() {
	sipp_cmd "$@"
	"${SIPP_CMD[@]}" >/dev/null 2>"$1.stderr" &
	BG_PID=$!
}

# sipp_pid WRAPPER: the PID of the sipp under a timeout wrapper (empty once gone)
sipp_pid() { ps -o pid= --ppid "$1" | tr -d ' '; }

# sipp_tracked PREFIX TIMEOUT_S SETTLE_S ARGS...: sipp_bg with both PIDs tracked;
# after SETTLE_S s: BG_PID (timeout wrapper), BG_SIPP (sipp)
sipp_tracked() {
	local out=$1 tmo=$2 settle=$3
	shift 3
	sipp_bg "$out" "$tmo" "$@"
	track "$BG_PID"
	sleep "$settle"
	BG_SIPP=$(sipp_pid "$BG_PID")
	[ -n "$BG_SIPP" ] && track "$BG_SIPP"
}

# cdr_counts DB [recovered|by_count]: CDRs grouped by end_reason. Default
# "busy=1 normal=20" (by name, space-separated); recovered: grouped by
# end_reason and recovered, "normal/recovered=1:20,..." (most first); by_count:
# "normal:20,busy:1" (most first). "none" if empty, "nodb" if DB is missing.
cdr_counts() {
	python3 - "$1" "${2:-}" <<-'EOF'
	import os, sqlite3, sys
	if not os.path.exists(sys.argv[1]):
	    print("nodb"); sys.exit()
	db = sqlite3.connect(sys.argv[1])
	if sys.argv[2] == "recovered":
	    rows = db.execute("select end_reason, recovered, count(*) from cdr group by 1, 2 order by 3 desc").fetchall()
	    print(",".join(f"{r}/recovered={v}:{n}" for r, v, n in rows) or "none")
	elif sys.argv[2] == "by_count":
	    rows = db.execute("select end_reason, count(*) from cdr group by 1 order by 2 desc").fetchall()
	    print(",".join(f"{r}:{n}" for r, n in rows) or "none")
	else:
	    rows = db.execute("select end_reason, count(*) from cdr group by end_reason order by end_reason").fetchall()
	    print(" ".join(f"{r}={n}" for r, n in rows) or "none")
	EOF
}

# cdr_recovered DB: the number of CDRs with recovered = 1 (0 if DB is missing)
cdr_recovered() {
	python3 -c 'import os, sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from cdr where recovered = 1").fetchone()[0] if os.path.exists(sys.argv[1]) else 0)' "$1" 2>/dev/null
}
