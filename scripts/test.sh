#!/usr/bin/env bash
# Runs every test: unit, property, vector and integration tests (the integration tests mount
# real FUSE filesystems and read them as other uids, so they need root and /dev/fuse; the S3
# tests start a real S3-compatible server, s3s-fs, on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
export TVAULT_VENV="${TVAULT_VENV:-/var/tmp/tvault-venv}"
bash scripts/setup.sh --tests
export TVAULT_PYTHON="$TVAULT_VENV/bin/python"
# Audit keys made by tests go to a scratch state directory, never to /var/lib/tvault.
export TVAULT_STATE_DIR="${TVAULT_STATE_DIR:-$(mktemp -d /tmp/tvault-test-state.XXXXXX)}"
cargo test --release -- --test-threads=2 "$@"
