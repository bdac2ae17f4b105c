#!/usr/bin/env bash
# The main job end to end: generate a model, encrypt it into a store for two users, inspect it,
# and get it back byte-exact. Work files go to ${DEMO_DIR:-/tmp/tvault-demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TV="$PWD/target/release/tvault"
PY="${TVAULT_VENV:-$PWD/.venv}/bin/python"
W="${DEMO_DIR:-/tmp/tvault-demo}"
rm -rf "$W"; mkdir -p "$W"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Generate a model directory"
"$PY" scripts/make_model.py "$W/demo-model" 64

step "Create a store and two users (passphrases from files, as a script would)"
printf 'alice-secret\n' > "$W/alice.pass"; printf 'bob-secret\n' > "$W/bob.pass"
"$TV" init "$W/store"
"$TV" user add "$W/store" alice --uid 1001 --passphrase-file "$W/alice.pass"
"$TV" user add "$W/store" bob --uid 1002 --passphrase-file "$W/bob.pass"
"$TV" user list "$W/store"

step "Encrypt the whole model directory for alice and bob"
"$TV" put "$W/store" "$W/demo-model" --to alice,bob
find "$W/store" -name '*.tvlt' -printf '%p  %s bytes\n'

step "Inspect the encrypted model (decrypts only the header chunks)"
"$TV" inspect "$W/store" demo-model/model.safetensors --user bob --passphrase-file "$W/bob.pass" | head -8

step "Get it back and compare"
"$TV" get "$W/store" demo-model/model.safetensors -o "$W/roundtrip.safetensors" --user alice --passphrase-file "$W/alice.pass"
sha256sum "$W/demo-model/model.safetensors" "$W/roundtrip.safetensors"
a=$(sha256sum < "$W/demo-model/model.safetensors"); b=$(sha256sum < "$W/roundtrip.safetensors")
[ "$a" = "$b" ] && echo "round trip: identical"
