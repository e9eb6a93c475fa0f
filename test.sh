#!/usr/bin/env bash
# Run every test: unit tests, the sip-tests integration suite, and the SIPp scenarios.
# Installs what the tests need when it is missing (SIPp from Debian's sip-tester).
set -euo pipefail
cd "$(dirname "$0")"

need_pkg() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "test.sh: installing $2 (for $1)"
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
  fi
}
need_pkg sipp sip-tester
need_pkg unshare util-linux
need_pkg ip iproute2
need_pkg curl curl
need_pkg baresip baresip-core
if ! python3 -c 'import pjsua2' 2>/dev/null; then
  echo "test.sh: installing pjsua2-python (PJSIP for the soft-phone test)"
  python3 -m pip install -q pjsua2-python
fi

echo "== sans-IO layers read no clock and touch no sockets (STYLE 4.1)"
sans_io="src/sip src/transaction src/dialog src/b2bua src/registrar src/pair src/server src/media/sdp.rs src/media/ports.rs src/media/stats.rs"
if offenders=$(find $sans_io -name '*.rs' ! -name '*tests.rs' -print0 \
    | xargs -0 awk 'FNR == 1 { t = 0 } t && /^mod [a-z_]+ \{/ { nextfile } { t = /^#\[cfg\(test\)\]/ }
        /Instant::now|SystemTime::now|tokio::|std::net::UdpSocket|TcpStream/ { print FILENAME ":" FNR ": " $0 }') \
    && [ -n "$offenders" ]; then
  echo "$offenders"
  echo "test.sh: protocol layers must take time as an input and do no I/O" >&2
  exit 1
fi

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== unit and integration tests"
cargo test --workspace

echo "== SIPp scenarios"
cargo build --release
UNDERSTUDY_BIN=./target/release/understudy sipp-scenarios/run-functional.sh

echo "== real soft-phones (baresip + PJSIP) across a takeover"
UNDERSTUDY_BIN=./target/release/understudy sip-tests/real/run.sh
echo "== all tests passed"
