#!/usr/bin/env bash
# The test command: formatting, lints, then every test, including the ones that boot the real
# target kernel in QEMU (the first run fetches and prepares it, about a minute; later runs reuse
# the cache in ~/.cache/graft or $GRAFT_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
