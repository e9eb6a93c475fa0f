#!/usr/bin/env bash
# The pair of compose.yaml without Docker: runs the two nodes with exactly main.toml and
# standby.toml, each in its own network namespace holding the compose network's address
# (198.51.100.10 and .11, joined by a veth pair) and its own /var/lib (a mount namespace over
# a temporary directory). Checks both configs, waits until the main is active and the stand-by
# is in sync with it (/ready), kills the main with SIGKILL and checks that the stand-by becomes
# active.
#
#   deploy/docker/test-pair.sh        # as root (ip netns, mount)
#
# UNDERSTUDY_BIN names the binary to run (default: a release build, built when missing).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${UNDERSTUDY_BIN:-$TARGET/release/understudy}
# The compose network's addresses, in the order compose.yaml lists the services (main first).
MAIN_IP=$(sed -n 's/^ *ipv4_address: *\([0-9.]*\).*/\1/p' "$HERE/compose.yaml" | sed -n 1p)
STANDBY_IP=$(sed -n 's/^ *ipv4_address: *\([0-9.]*\).*/\1/p' "$HERE/compose.yaml" | sed -n 2p)
NS_MAIN=understudy-main-$$
NS_STANDBY=understudy-standby-$$

fail() {
    echo "docker pair test: FAILED: $*" >&2
    for n in main standby; do
        [[ -f ${TMP:-}/$n.log ]] && { echo "--- $n.log" >&2; tail -20 "$TMP/$n.log" >&2; }
    done
    exit 1
}

[[ $(id -u) == 0 ]] || fail "must run as root (ip netns, mount)"
for tool in curl python3; do command -v "$tool" >/dev/null || fail "$tool not found"; done
if [[ -z ${UNDERSTUDY_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --bin understudy --quiet) || fail "cargo build"
fi

TMP=$(mktemp -d /tmp/understudy-pair.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    ip netns del "$NS_MAIN" 2>/dev/null || true
    ip netns del "$NS_STANDBY" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "docker pair test: FAILED at line $LINENO" >&2' ERR

for n in main standby; do
    echo "check-config $n.toml: $("$BIN" check-config "$HERE/$n.toml")" || fail "$n.toml"
done
token() { sed -n 's/^token *= *"\([^"]*\)".*/\1/p' "$HERE/$1.toml"; }
# compose.yaml and the two files agree: each service mounts its file, the file's SIP and admin
# addresses are the service's, its peer is the other one, and the CLI gets the file's token.
for n in main standby; do
    if [[ $n == main ]]; then me=$MAIN_IP peer=$STANDBY_IP; else me=$STANDBY_IP peer=$MAIN_IP; fi
    grep -q "^ *- ./$n.toml:/etc/understudy/understudy.toml:ro" "$HERE/compose.yaml" ||
        fail "compose.yaml does not mount $n.toml"
    for line in "sip_udp = \"$me:5060\"" "listen = \"$me:8060\"" "peer = \"$peer:5060\""; do
        grep -q "^$line" "$HERE/$n.toml" || fail "$n.toml: no $line"
    done
    grep -q "UNDERSTUDY_ADMIN: http://$me:8060" "$HERE/compose.yaml" || fail "compose.yaml: UNDERSTUDY_ADMIN of $n"
    grep -q "UNDERSTUDY_TOKEN: $(token $n)\b" "$HERE/compose.yaml" || fail "compose.yaml: UNDERSTUDY_TOKEN of $n"
done

# The compose network: two namespaces, one veth pair between them, nothing on the host side.
ip netns add "$NS_MAIN"
ip netns add "$NS_STANDBY"
ip link add "usm$$" netns "$NS_MAIN" type veth peer name "uss$$" netns "$NS_STANDBY"
ip -n "$NS_MAIN" addr add "$MAIN_IP/24" dev "usm$$"
ip -n "$NS_STANDBY" addr add "$STANDBY_IP/24" dev "uss$$"
for ns in "$NS_MAIN" "$NS_STANDBY"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_MAIN" link set "usm$$" up
ip -n "$NS_STANDBY" link set "uss$$" up

# start NAME NAMESPACE: the node with deploy/docker/NAME.toml; its /var/lib is $TMP/NAME.
start() {
    mkdir -p "$TMP/$1/understudy"
    NO_COLOR=1 ip netns exec "$2" unshare --mount --propagation private \
        sh -c 'mount --bind "$0" /var/lib && exec "$1" run --config "$2"' \
        "$TMP/$1" "$BIN" "$HERE/$1.toml" >"$TMP/$1.log" 2>&1 &
    PIDS+=($!)
}
start main "$NS_MAIN"
MAIN_PID=$!
start standby "$NS_STANDBY"

# status NAMESPACE IP NAME: the node's /status JSON (through the CLI, with its token).
status() {
    ip netns exec "$1" "$BIN" status --json --admin "http://$2:8060" --token "$(token "$3")"
}
role() { status "$@" | python3 -c 'import json, sys; print(json.load(sys.stdin)["role"])'; }

# The stand-by's /ready (200: in sync with an active peer; 503 and the reason otherwise).
ready_standby() {
    ip netns exec "$NS_STANDBY" curl -sS "$@" -H "Authorization: Bearer $(token standby)" \
        "http://$STANDBY_IP:8060/ready"
}

echo "waiting for the stand-by to be in sync with the main"
ready=
for _ in $(seq 150); do
    if [[ $(role "$NS_MAIN" "$MAIN_IP" main 2>/dev/null) == active ]] &&
        ready_standby -f >"$TMP/ready" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
[[ -n $ready ]] || fail "the stand-by is not ready: $(ready_standby)"
echo "standby /ready: $(cat "$TMP/ready")"
[[ $(role "$NS_STANDBY" "$STANDBY_IP" standby) == standby ]] || fail "the stand-by is not stand-by"
ip netns exec "$NS_STANDBY" "$BIN" status --admin "http://$STANDBY_IP:8060" --token "$(token standby)"
[[ -f $TMP/main/understudy/cdr.sqlite && -f $TMP/main/understudy/epoch ]] ||
    fail "no epoch or CDR file in the main's /var/lib/understudy"

echo "kill -9 the main"
[[ $(cat "/proc/$MAIN_PID/comm") == understudy ]] || fail "$MAIN_PID is not the main node"
kill -KILL "$MAIN_PID"
wait "$MAIN_PID" 2>/dev/null || true
start_ns=$(date +%s%N)
active=
for _ in $(seq 100); do
    if [[ $(role "$NS_STANDBY" "$STANDBY_IP" standby 2>/dev/null) == active ]]; then
        active=1
        break
    fi
    sleep 0.05
done
[[ -n $active ]] || fail "the stand-by did not become active within 5 s"
echo "the stand-by is active after $((($(date +%s%N) - start_ns) / 1000000)) ms"
ip netns exec "$NS_STANDBY" "$BIN" status --admin "http://$STANDBY_IP:8060" --token "$(token standby)"

echo "docker pair test: ok"
