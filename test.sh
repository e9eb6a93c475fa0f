#!/usr/bin/env bash
# Run every test: the sans-IO guard, fmt and clippy, unit and integration tests, a fuzz
# smoke of every fuzz target, the SIPp scenarios and the real soft-phones (baresip, PJSIP,
# linphone, Twinkle) across a takeover.
# Installs what the tests need when it is missing (Debian packages: SIPp from sip-tester,
# baresip-core, linphone-cli, twinkle-console, kamailio (the HEP capture receiver), prometheus
# (promtool checks /metrics), postgresql (a CDR database the test starts), debootstrap and
# systemd-container (a fresh Debian booted to install the package in), procps, nftables (the NAT test bed), dnsmasq-base (a DNS server with SRV records
# for trunk host names), openssl (test certificates), python3-pip; the pjsua2 wheel from PyPI via sip-tests/real/run.sh).
set -euo pipefail
cd "$(dirname "$0")"

# command -> Debian package; the missing ones are installed in one go.
missing=()
for pair in sipp:sip-tester unshare:util-linux ip:iproute2 nft:nftables curl:curl ps:procps \
    baresip:baresip-core linphone-daemon:linphone-cli twinkle-console:twinkle-console \
    dnsmasq:dnsmasq-base openssl:openssl kamailio:kamailio \
    promtool:prometheus pg_ctlcluster:postgresql runuser:util-linux \
    debootstrap:debootstrap systemd-nspawn:systemd-container; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  # Packages that ship a daemon (kamailio, prometheus) must not start it here: the tests run
  # their own instances. policy-rc.d tells the maintainer scripts so.
  rc_policy=/usr/sbin/policy-rc.d
  ours=""
  if [ ! -e "$rc_policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$rc_policy" >/dev/null
    as_root chmod +x "$rc_policy"
    ours=1
    trap 'as_root rm -f "$rc_policy"' EXIT
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$ours" ]; then as_root rm -f "$rc_policy"; trap - EXIT; fi
fi
# pjsua2 (PyPI) is installed by sip-tests/real/run.sh, which also runs on its own.
# cargo-deb (crates.io) builds the Debian package for deploy/test-package.sh.
cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb

echo "== sans-IO layers read no clock and touch no sockets (STYLE 4.1)"
sans_io="src/sip src/transaction src/dialog src/b2bua src/registrar src/pair src/server src/media/sdp.rs src/media/ports.rs src/media/stats.rs src/media/latch.rs src/entropy.rs src/trunkreg.rs src/dns.rs src/metrics.rs src/capture.rs"
# (Assigned on its own line: if find or awk fails, set -e stops here instead of skipping.)
offenders=$(find $sans_io -name '*.rs' ! -name '*tests.rs' -print0 \
    | xargs -0 awk 'FNR == 1 { t = 0 } t && /^mod [a-z_]+ \{/ { nextfile } { t = /^#\[cfg\(test\)\]/ }
        /Instant::now|SystemTime::now|tokio::|std::net::UdpSocket|TcpStream/ { print FILENAME ":" FNR ": " $0 }')
if [ -n "$offenders" ]; then
  echo "$offenders"
  echo "test.sh: protocol layers must take time as an input and do no I/O" >&2
  exit 1
fi

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== unit and integration tests"
cargo test --workspace

echo "== fuzz smoke: every target for 20 s from the committed seeds (cargo fuzz, nightly)"
fuzz/run.sh 20

echo "== SIPp scenarios"
cargo build --release
UNDERSTUDY_BIN=./target/release/understudy sipp-scenarios/run-functional.sh

echo "== real soft-phones (baresip + PJSIP) across a takeover"
UNDERSTUDY_BIN=./target/release/understudy sip-tests/real/run.sh

echo "== real soft-phones (PJSIP) behind two NATs across a takeover (the NAT test bed)"
timeout -k 10 180 python3 sip-tests/real/nat.py --bin ./target/release/understudy
echo "== real soft-phones (PJSIP) over SIP/TLS across a takeover"
timeout -k 10 120 python3 sip-tests/real/tls.py --bin ./target/release/understudy
echo "== four real soft-phones (baresip, PJSIP, linphone, Twinkle): hold, transfers, takeover"
UNDERSTUDY_BIN=./target/release/understudy sip-tests/real/run-four.sh
echo "== rolling upgrade: a main of the previous release (wave 1) hands over to a stand-by of this one"
sip-tests/upgrade.sh
echo "== the Debian package on a fresh bookworm booted in systemd-nspawn"
timeout -k 10 600 deploy/test-package.sh
echo "== the Docker compose pair's configurations, run in network namespaces"
UNDERSTUDY_BIN=./target/release/understudy timeout -k 10 120 deploy/docker/test-pair.sh
echo "== all tests passed"
