#!/usr/bin/env bash
# The main job: fetch the default target kernel, build a livepatch for it, and show it going
# live and being reversed on that exact kernel in a VM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --quiet
exec target/release/graft demo "$@"
