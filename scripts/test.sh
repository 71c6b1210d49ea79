#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh, idempotent), then the Rust unit
# and integration tests, which also build and run the C example against the .so and replay the
# real-capture corpus in ../shared when it is there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
scripts/setup.sh
cargo test --release --workspace "$@"
