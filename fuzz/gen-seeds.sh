#!/usr/bin/env bash
# Regenerate the committed seed corpora (fuzz/seeds/<target>/) from real traffic through the
# server: see src/fuzzing/seeds.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf fuzz/seeds
cargo run --quiet --example fuzz-seeds -- fuzz/seeds
