#!/usr/bin/env bash
# Real soft-phones through an Understudy pair: baresip + PJSIP (pjsua2) in a call through the
# main, kill -9 of the main, re-bind by the stand-by, RTP continuity, hang-up from each side.
#
#   UNDERSTUDY_BIN=./target/debug/understudy sip-tests/real/run.sh [softphones.py options]
#
# Installs baresip (Debian baresip-core) and the pjsua2 wheel (PyPI pjsua2-python) when they
# are missing. Exits non-zero when any scenario fails or the whole run exceeds REAL_TIMEOUT
# seconds (default 180).
#
# linphone and Twinkle (four phones, hold/resume, REFER probes): sip-tests/real/run-four.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v baresip >/dev/null 2>&1; then
  echo "run.sh: installing baresip-core"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq baresip-core >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import pjsua2' >/dev/null 2>&1; then
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "run.sh: installing python3-pip"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "run.sh: installing pjsua2-python (PyPI; wheels exist for CPython 3.11 and 3.12)"
  "$PYTHON" -m pip install -q pjsua2-python \
    || "$PYTHON" -m pip install -q --break-system-packages pjsua2-python
  "$PYTHON" -c 'import pjsua2' || { echo "run.sh: FAIL: pjsua2 still not importable" >&2; exit 2; }
fi

bin="${UNDERSTUDY_BIN:-./target/debug/understudy}"
if [ ! -x "$bin" ]; then
  echo "run.sh: FAIL: understudy binary not found at '$bin'" >&2
  echo "run.sh: build it (cargo build) or set UNDERSTUDY_BIN" >&2
  exit 2
fi

# -k: SIGKILL 10 s after the SIGTERM if the driver has not stopped its children by then.
exec timeout -k 10 "${REAL_TIMEOUT:-180}" "$PYTHON" "$here/softphones.py" --bin "$bin" "$@"
