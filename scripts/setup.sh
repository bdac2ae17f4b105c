#!/usr/bin/env bash
# Installs what tvault's demo needs on Debian (idempotent; with --tests also what the tests
# need), then builds the release binary. Needs root (or sudo) for apt; the Rust toolchain
# must already be present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v getfattr >/dev/null 2>&1 || missing+=(attr)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The copy tests run `rsync -a` into the mount.
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# Debian's python (not a per-user install) so that the tests' other uids can run it too.
[ -x /usr/bin/python3 ] || missing+=(python3)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The demo and the tests run Python as other uids, so the venv lives where every uid can
# reach it (the checkout may sit in a private home directory).
VENV="${TVAULT_VENV:-/var/tmp/tvault-venv}"
# transformers (without torch: configs and tokenizers load without it) for the Hugging Face
# hub cache test.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import safetensors, numpy, transformers' >/dev/null 2>&1; then
  echo "setup: creating $VENV with safetensors, numpy and transformers" >&2
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check safetensors numpy transformers
fi

# `--tests`: also what only the tests need (the demo stays fast without it): the S3-compatible
# server the S3 tests start on loopback, built once into a cached tools directory.
if [ "${1:-}" = "--tests" ]; then
  TOOLS="${TVAULT_TOOLS:-/var/tmp/tvault-tools}"
  S3S_FS_VERSION=0.14.1   # 0.17 needs a newer rustc; tests/common/s3.rs checks this version
  if [ "$("$TOOLS/bin/s3s-fs" --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]; then
    echo "setup: building s3s-fs $S3S_FS_VERSION into $TOOLS (once; a few minutes)" >&2
    # Its own target directory: a CARGO_TARGET_DIR of the checkout must not collect its build.
    CARGO_TARGET_DIR="$TOOLS/build" cargo install --quiet --locked --force --root "$TOOLS" \
      --version "$S3S_FS_VERSION" --features binary s3s-fs
    rm -rf "$TOOLS/build"
  fi
fi

cargo build --release --quiet
echo "setup: ready (binary: target/release/tvault, python: $VENV/bin/python)" >&2
