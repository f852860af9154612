#!/usr/bin/env bash
# Regenerates the fast tier's fixtures from the real target kernels: tests/fixtures/*/captured
# (compiled units, the slices of the code image and kallsyms that matching reads, small modules)
# and tests/fixtures/sysfs (recordings of /sys/kernel/livepatch taken in the lab).
# Needs the kernel cache (fetches targets as needed). Name fixtures to bless only those.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release --locked -q -p graft-build --example bless_fixtures -- "$@"
# The recordings of the kernel's livepatch interface, taken in the lab.
if [ $# = 0 ]; then
	GRAFT_BLESS=1 cargo test --release --locked -q -p graft --test host_recordings
fi
