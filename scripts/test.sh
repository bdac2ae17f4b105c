#!/usr/bin/env bash
# Runs every test: unit, property, vector and integration tests (the integration tests mount
# real FUSE filesystems and read them as other uids, so they need root and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TVAULT_PYTHON="$PWD/.venv/bin/python"
cargo test --release -- --test-threads=2 "$@"
