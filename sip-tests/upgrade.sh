#!/usr/bin/env bash
# Rolling upgrade: build the previous release (wave 1, commit e0aa50b) beside this one and
# run the takeover scenario where its main hands over to a stand-by of this build
# (`sip-tests/tests/takeover/upgrade.rs`).
#
#   sip-tests/upgrade.sh            (OLD_REV=<commit> for another release)
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${OLD_REV:-e0aa50b}"
work="${UPGRADE_WORK:-/tmp/understudy-upgrade-$rev}"
if [ ! -x "$work/target/release/understudy" ]; then
  # A shallow clone (CI) may not have the previous release: fetch it.
  if ! git cat-file -e "$rev^{commit}" 2>/dev/null; then
    git fetch -q --unshallow 2>/dev/null || git fetch -q origin "$rev" 2>/dev/null || true
  fi
  git cat-file -e "$rev^{commit}" 2>/dev/null \
    || { echo "upgrade.sh: commit $rev (the previous release) is not in this clone" >&2; exit 2; }
  rm -rf "$work/src"
  mkdir -p "$work"
  git worktree add --detach --force "$work/src" "$rev" >/dev/null
  (cd "$work/src" && CARGO_TARGET_DIR="$work/target" cargo build -q --release --bin understudy)
  git worktree remove --force "$work/src"
fi
UNDERSTUDY_OLD_BIN="$work/target/release/understudy" \
  cargo test -q -p sip-tests --test main takeover::upgrade -- --nocapture
