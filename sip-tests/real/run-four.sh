#!/usr/bin/env bash
# Four real soft-phones through an Understudy pair: linphone (linphone-daemon) and Twinkle
# (twinkle-console), each against baresip, PJSIP or each other: register, call through the
# main, hold/resume, kill -9 of the main, re-bind by the stand-by, RTP after the re-bind,
# refused-REFER check, hang-up, CDR; then blind, attended and INVITE/Replaces transfers with
# real transferors (one followed by a kill -9 of the main).
#
#   UNDERSTUDY_BIN=./target/release/understudy sip-tests/real/run-four.sh [four.py options]
#
# Installs linphone-cli, twinkle-console, baresip-core (Debian) and the pjsua2 wheel (PyPI
# pjsua2-python) when they are missing. Exits non-zero when any scenario fails or the whole run
# exceeds REAL_TIMEOUT seconds (default 240).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pkgs=()
command -v linphone-daemon >/dev/null 2>&1 || pkgs+=(linphone-cli)
command -v twinkle-console >/dev/null 2>&1 || pkgs+=(twinkle-console)
command -v baresip >/dev/null 2>&1 || pkgs+=(baresip-core)
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "run-four.sh: installing ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import pjsua2' >/dev/null 2>&1; then
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "run-four.sh: installing python3-pip"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "run-four.sh: installing pjsua2-python (PyPI; wheels exist for CPython 3.11 and 3.12)"
  "$PYTHON" -m pip install -q pjsua2-python \
    || "$PYTHON" -m pip install -q --break-system-packages pjsua2-python
  "$PYTHON" -c 'import pjsua2' || { echo "run-four.sh: FAIL: pjsua2 still not importable" >&2; exit 2; }
fi

bin="${UNDERSTUDY_BIN:-./target/debug/understudy}"
if [ ! -x "$bin" ]; then
  echo "run-four.sh: FAIL: understudy binary not found at '$bin'" >&2
  echo "run-four.sh: build it (cargo build) or set UNDERSTUDY_BIN" >&2
  exit 2
fi

# -k: SIGKILL 10 s after the SIGTERM if the driver has not stopped its children by then.
exec timeout -k 10 "${REAL_TIMEOUT:-240}" "$PYTHON" "$here/four.py" --bin "$bin" "$@"
