#!/usr/bin/env bash
# Same-run A/B of metadata-heavy work through the mount: `find | xargs stat` of 1000 small
# files in 10 directories (each a lookup and a getattr, so the owner, mode and search checks)
# on a fresh mount, then `cat` of them all once unlocked. Each binary gets a store it made
# itself (an older binary may not read newer containers). Prints each rep and the medians.
#
#   scripts/bench-meta.sh NAME=BIN [NAME=BIN ...]      (env BENCH_REPS, default 5)
#
# Needs root (it mounts and registers a keyring for uid 0).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 NAME=BIN [NAME=BIN ...]" >&2; exit 2; }
REPS="${BENCH_REPS:-5}"
W=$(mktemp -d /tmp/tvault-bench-meta.XXXXXX)
cleanup() {
  for m in "$W"/mnt-*; do [ -d "$m" ] && umount -l "$m" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/src"
for d in $(seq 1 10); do
  mkdir -p "$W/src/a$d/b"
  for f in $(seq 1 100); do echo "$d-$f" > "$W/src/a$d/b/f$f"; done
done
for pair in "$@"; do
  name=${pair%%=*} bin=${pair#*=}
  "$bin" init "$W/store-$name" >/dev/null
  echo pw | "$bin" user add "$W/store-$name" root --uid 0 --kdf-memory 1024 --kdf-iterations 1 >/dev/null 2>&1
  "$bin" put "$W/store-$name" "$W/src" --to root --as t >/dev/null
done
now() { date +%s.%N; }
for rep in $(seq 1 "$REPS"); do
  for pair in "$@"; do
    name=${pair%%=*} bin=${pair#*=} m="$W/mnt-$name"
    mkdir -p "$m"
    TVAULT_STATE_DIR="$W/state" "$bin" mount "$W/store-$name" "$m" >/dev/null
    t0=$(now); find "$m" -type f | xargs stat -c %s >/dev/null; t1=$(now)
    echo pw | "$bin" unlock "$m" >/dev/null
    t2=$(now); find "$m" -type f | xargs cat >/dev/null; t3=$(now)
    "$bin" umount "$m" >/dev/null
    printf '%s %s %.3f %.3f\n' "$name" "$rep" "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)"
  done
done | tee "$W/results"
echo "medians (s): name, find+stat of 1000 files, cat of 1000 files"
for pair in "$@"; do
  name=${pair%%=*}
  med() { grep "^$name " "$W/results" | awk "{print \$$1}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  echo "$name $(med 3) $(med 4)"
done
