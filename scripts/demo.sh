#!/usr/bin/env bash
# The main job end to end: generate a model, encrypt it into a store for two users, inspect
# it, get it back byte-exact, then mount the store and load the model through the mount with
# Python safetensors as another Unix user (uid 1001), while a user without a key (uid 1003)
# is refused. Needs root (FUSE allow_other, running commands as other uids).
# Work files go to ${DEMO_DIR:-/tmp/tvault-demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
W="${DEMO_DIR:-/tmp/tvault-demo}"
PY="${TVAULT_VENV:-/var/tmp/tvault-venv}/bin/python"
MNT="$W/mnt"
cleanup() {
  if grep -qs " $MNT " /proc/self/mountinfo; then "$TV" umount "$MNT" >/dev/null 2>&1 || umount -l "$MNT" || true; fi
}
trap cleanup EXIT
cleanup_previous() { [ -d "$MNT" ] && grep -qs " $MNT " /proc/self/mountinfo && umount -l "$MNT"; rm -rf "$W"; }
cleanup_previous || true
mkdir -p "$W" "$MNT"; chmod 755 "$W" "$MNT"
# A copy of the binary that other uids can execute.
TV="$W/tvault"; install -m 755 target/release/tvault "$TV"
as_uid() { local uid=$1; shift; setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Generate a model directory"
"$PY" scripts/make_model.py "$W/demo-model" 64

step "Create a store and two users (passphrases from files, as a script would)"
printf 'alice-secret\n' > "$W/alice.pass"; printf 'bob-secret\n' > "$W/bob.pass"
chown 1001:1001 "$W/alice.pass"; chmod 600 "$W/alice.pass"
"$TV" init "$W/store"
"$TV" user add "$W/store" alice --uid 1001 --passphrase-file "$W/alice.pass"
"$TV" user add "$W/store" bob --uid 1002 --passphrase-file "$W/bob.pass"
"$TV" user list "$W/store"

step "Encrypt the whole model directory for alice and bob"
"$TV" put "$W/store" "$W/demo-model" --to alice,bob
find "$W/store" -name '*.tvlt' -printf '%p  %s bytes\n'

step "Inspect the encrypted model (decrypts only the header chunks)"
"$TV" inspect "$W/store" demo-model/model.safetensors --user bob --passphrase-file "$W/bob.pass" | sed -n 1,12p

step "Get it back and compare"
"$TV" get "$W/store" demo-model/model.safetensors -o "$W/roundtrip.safetensors" --user alice --passphrase-file "$W/alice.pass"
sha256sum "$W/demo-model/model.safetensors" "$W/roundtrip.safetensors"
[ "$(sha256sum < "$W/demo-model/model.safetensors")" = "$(sha256sum < "$W/roundtrip.safetensors")" ] && echo "round trip: identical"

step "Mount the store; alice (uid 1001) unlocks her keyring against the mount"
"$TV" mount "$W/store" "$MNT"
ls -l "$MNT/demo-model"
as_uid 1001 "$TV" unlock "$MNT" --passphrase-file "$W/alice.pass"

step "Load the model through the mount with Python safetensors, as uid 1001"
chmod 644 "$W/demo-model/model.safetensors"
as_uid 1001 "$PY" - "$MNT/demo-model" "$W/demo-model/model.safetensors" <<'PYEOF'
import json, sys, time
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
mounted, plain = sys.argv[1], sys.argv[2]
t = time.perf_counter()
weights = load_file(f"{mounted}/model.safetensors")
dt = time.perf_counter() - t
config = json.load(open(f"{mounted}/config.json"))
reference = load_file(plain)
same = all(weights[k].tobytes() == reference[k].tobytes() for k in reference)
size = sum(v.nbytes for v in weights.values())
print(f"loaded {len(weights)} tensors ({size / 2**20:.0f} MiB) in {dt:.2f} s; config: {config['model_type']}; identical to the original: {same}")
with safe_open(f"{mounted}/model.safetensors", framework="numpy") as f:
    print("one tensor via safe_open:", f.get_slice("layers.0.attn.weight").get_shape())
PYEOF

step "A user without a keyring (uid 1003) is refused"
as_uid 1003 head -c 16 "$MNT/demo-model/model.safetensors" || echo "(refused, as expected)"
echo "tvault why, as uid 1003:"
as_uid 1003 "$TV" why "$MNT/demo-model/model.safetensors" || true

step "Mount status"
"$TV" status "$MNT"

step "Unmount"
"$TV" umount "$MNT"
