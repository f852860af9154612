#!/usr/bin/env bash
# The test command. Two tiers:
#   scripts/test.sh --fast   the fast tier: formatting, lints, unit tests, and the tests on
#                            checked-in fixtures (differ, run-pre matching, klp conversion,
#                            host conflict rules, malformed input). Offline: no network, no
#                            kernel cache, no QEMU; seconds once built.
#   scripts/test.sh          both tiers: the fast one, then every test on the real target
#                            kernels booted in QEMU (the first run fetches and prepares them;
#                            later runs reuse the cache in ~/.cache/graft or $GRAFT_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=false
[ "${1:-}" = --fast ] && fast=true
if ! $fast; then
	scripts/setup.sh
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fast tier.
cargo test --workspace --locked --lib --bins
cargo test --locked -p graft-build --test fixtures --test malformed
cargo test --locked -p graft-host --test conflicts
cargo test --locked -p graft-elf --test round_trip
# The fleet on loopback: the agent against a real server, and the server's API on SQLite (the
# slow tier runs the same suite on PostgreSQL too).
cargo test --locked -p graft-agent --test fleet
cargo test --locked -p graft --test fleet_cli
cargo test --locked -p graft-server --test api -- --skip postgres
$fast && exit 0
# The slow tier: the real kernels, the archive, the lab.
cargo test --workspace --locked --tests
