#!/usr/bin/env bash
# The Debian package on a fresh machine: builds it with `cargo deb`, boots a minimal Debian
# bookworm (debootstrap --variant=minbase, with systemd) in systemd-nspawn with its own
# network namespace, installs the package there with apt-get, and checks that the service
# starts and behaves: active, the CLI and /health answer, the node's start line is in the
# journal, it runs as user understudy without capabilities, its files are under
# /var/lib/understudy, `systemctl reload` applies a user added to the file, systemd restarts
# it after a SIGKILL, and `apt-get purge` stops it and removes its state.
#
#   deploy/test-package.sh            # as root; needs debootstrap and systemd-container
#
# The bookworm tree is kept in <target>/package-test/bookworm (about 250 MB) and copied for
# each run, so only the first run downloads it; delete that directory to rebuild it.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/package-test
CACHE=$WORK/bookworm
MACHINE=$WORK/machine
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=systemd,systemd-sysv,dbus,curl
STAMP="bookworm minbase include=$INCLUDE"

fail() {
    echo "package test: FAILED: $*" >&2
    if [[ -n ${INIT:-} ]]; then
        echo "--- journalctl -u understudy" >&2
        inside journalctl -u understudy --no-pager 2>&1 | tail -30 >&2 || true
    fi
    exit 1
}
step() { echo "== $*"; }

[[ $(id -u) == 0 ]] || fail "must run as root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter cargo; do
    command -v "$tool" >/dev/null || fail "$tool not found (apt-get install debootstrap systemd-container)"
done
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb not found (cargo install cargo-deb --locked)"

mkdir -p "$WORK"
exec 9>"$WORK/lock"
flock 9

NSPAWN=
INIT=
cleanup() {
    if [[ -n $NSPAWN ]] && kill -0 "$NSPAWN" 2>/dev/null; then
        # SIGTERM asks the container's systemd to power off; SIGKILL if it does not.
        kill -TERM "$NSPAWN" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NSPAWN" 2>/dev/null || true
        wait "$NSPAWN" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'echo "package test: FAILED at line $LINENO" >&2' ERR

# Run a command in the booted machine (all its namespaces: mount, PID, network, ...).
inside() { nsenter --target "$INIT" --all -- "$@"; }

# Poll `inside sh -c "$2"` for up to $1 tenths of a second.
wait_for() {
    local tries=$1 cond=$2
    for _ in $(seq "$tries"); do
        if inside sh -c "$cond" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

step "build the package (cargo deb)"
rm -rf "$WORK/deb"
(cd "$ROOT" && cargo deb --fast --no-dbgsym --output "$WORK/deb/") >"$WORK/cargo-deb.log" 2>&1 ||
    { tail -20 "$WORK/cargo-deb.log" >&2; fail "cargo deb"; }
DEB=$(ls "$WORK"/deb/understudy_*.deb)
echo "$DEB"

if [[ ! -f $CACHE/.understudy-test || $(cat "$CACHE/.understudy-test") != "$STAMP" ]]; then
    step "debootstrap bookworm into $CACHE (cached for later runs)"
    rm -rf "$CACHE" "$CACHE.tmp"
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$CACHE.tmp" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    echo "$STAMP" >"$CACHE.tmp/.understudy-test"
    mv "$CACHE.tmp" "$CACHE"
fi

step "a fresh machine: copy of the cached tree, booted with systemd-nspawn"
rm -rf "$MACHINE"
cp -a "$CACHE" "$MACHINE"
cp "$DEB" "$MACHINE/root/"
# --private-network: the machine has only its own loopback; --register=no --keep-unit: no
# machined or D-Bus needed on this side.
systemd-nspawn --quiet --directory="$MACHINE" --machine="understudy-test-$$" --boot \
    --private-network --register=no --keep-unit --console=passive \
    </dev/null >"$WORK/nspawn.log" 2>&1 &
NSPAWN=$!
# The machine's PID 1 is the process named systemd among systemd-nspawn's descendants.
for _ in $(seq 100); do
    for p in $(pgrep -P "$NSPAWN" || true) $(for c in $(pgrep -P "$NSPAWN" || true); do pgrep -P "$c" || true; done); do
        [[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]] && INIT=$p
    done
    [[ -n $INIT ]] && break
    kill -0 "$NSPAWN" 2>/dev/null || { cat "$WORK/nspawn.log" >&2; fail "systemd-nspawn exited"; }
    sleep 0.1
done
[[ -n $INIT ]] || fail "the machine's systemd did not start"
wait_for 600 'case $(systemctl is-system-running) in running|degraded) exit 0;; *) exit 1;; esac' ||
    fail "the machine did not finish booting: $(inside systemctl is-system-running 2>&1)"

step "apt-get install ./$(basename "$DEB")"
inside sh -c "cd /root && apt-get install -y ./$(basename "$DEB")" >"$WORK/apt.log" 2>&1 ||
    { tail -20 "$WORK/apt.log" >&2; fail "apt-get install"; }
inside systemd-analyze verify understudy.service || fail "systemd-analyze verify understudy.service"
inside understudy check-config /etc/understudy/understudy.toml >/dev/null ||
    fail "the installed configuration does not pass check-config"
[[ $(inside stat -c '%U:%G %a' /etc/understudy/understudy.toml) == "root:understudy 640" ]] ||
    fail "/etc/understudy/understudy.toml: $(inside stat -c '%U:%G %a' /etc/understudy/understudy.toml)"

step "the service is started and enabled"
wait_for 100 'systemctl is-active --quiet understudy' ||
    fail "understudy is $(inside systemctl is-active understudy)"
[[ $(inside systemctl is-enabled understudy) == enabled ]] || fail "understudy is not enabled"
wait_for 100 'curl -fsS http://127.0.0.1:8060/health' || fail "no answer on /health"
echo "/health: $(inside curl -fsS http://127.0.0.1:8060/health)"
status=$(inside understudy status) || fail "understudy status"
echo "$status"
grep -q 'role active' <<<"$status" || fail "understudy status does not say active"
inside journalctl -u understudy --no-pager | grep -q 'node started node="understudy-1"' ||
    fail "no start line in the journal"
pid=$(inside systemctl show -P MainPID understudy)
user=$(inside stat -c %U "/proc/$pid")
[[ $user == understudy ]] || fail "runs as $user, not understudy"
caps=$(inside awk '/^CapEff/ {print $2}' "/proc/$pid/status")
[[ $caps == 0000000000000000 ]] || fail "effective capabilities $caps, expected none"
echo "MainPID $pid runs as $user, CapEff $caps"
for f in /var/lib/understudy /var/lib/understudy/cdr.sqlite; do
    [[ $(inside stat -c %U "$f") == understudy ]] || fail "$f is not owned by understudy"
done

step "a user added, then systemctl reload: SIGHUP, same process"
inside sh -c 'printf "\n[[users]]\nname = \"alice\"\npassword = \"alice-secret\"\n" >>/etc/understudy/understudy.toml'
inside systemctl reload understudy || fail "systemctl reload"
wait_for 50 'journalctl -u understudy --no-pager | grep -q "configuration reloaded changes=\"users +alice\""' ||
    fail "no reload in the journal"
[[ $(inside systemctl show -P MainPID understudy) == "$pid" ]] || fail "reload restarted the process"

step "kill -9 the node: Restart=on-failure starts it again"
inside sh -c "kill -KILL $pid"
wait_for 100 "test \"\$(systemctl show -P MainPID understudy)\" != $pid && systemctl is-active --quiet understudy" ||
    fail "not restarted after SIGKILL"
wait_for 100 'curl -fsS http://127.0.0.1:8060/health' || fail "no /health after the restart"
echo "restarted: MainPID $(inside systemctl show -P MainPID understudy), NRestarts $(inside systemctl show -P NRestarts understudy)"

step "apt-get purge understudy"
inside apt-get purge -y understudy >>"$WORK/apt.log" 2>&1 || fail "apt-get purge"
if inside systemctl is-active --quiet understudy; then fail "still active after purge"; fi
if inside test -e /var/lib/understudy; then fail "/var/lib/understudy left after purge"; fi
if inside test -e /etc/understudy; then fail "/etc/understudy left after purge"; fi

cleanup
NSPAWN=
rm -rf "$MACHINE"
echo "package test: ok"
