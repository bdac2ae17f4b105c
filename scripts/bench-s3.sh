#!/usr/bin/env bash
# tvault over S3, side by side with the peers a user would pick instead (issue 14), in ONE
# run against ONE S3-compatible server (s3s-fs on loopback, its data in the page cache):
#   local       tvault on a local directory store (the reference without S3)
#   s3          tvault on s3://tvault/store
#   s3cache     the same with --disk-cache (ciphertext cache on local disk, 4 GiB bound; it
#               fills in the first rep and the same cache directory serves the later reps)
#   rclone      Debian's rclone mount of a `crypt` remote over an `s3` remote (read-only,
#               default VFS settings: --vfs-cache-mode off)
#   s3fs        Debian's s3fs, plain (no encryption)
# on one safetensors model (~1.1 GB, 40 tensors, made by scripts/bench.sh's helper),
# interleaved per repetition so that a shared machine's noise hits every target alike, each
# workload on a FRESH mount (mounted, measured, unmounted):
#   seq     dd if=FILE of=/dev/null bs=1M                                    GB/s (10^9)
#   load    safetensors.numpy.load_file(FILE)                                 s
#   tensor  safe_open + get_tensor of the small tensor nearest the middle     ms
#   first   time to first tensor: safe_open + get_tensor of the tensor stored first  ms
# Prints medians (min-max), ratios against rclone crypt and s3fs, and the issue's goals
# (ahead of rclone crypt on every row; within 1.5x of s3fs on sequential reads).
#
# Usage: scripts/bench-s3.sh   (as root: mounts, apt-get for rclone and s3fs)
# Environment (see scripts/bench.sh for the shared ones):
#   BENCH_REPS=5  BENCH_SIZE_MB=1100  BENCH_DIR=/var/tmp/tvault-bench-s3  BENCH_OUT=DIR
#   BENCH_TARGETS="local s3 s3cache rclone s3fs"   BENCH_PARTS="seq load tensor first"
#   TVAULT_BIN=PATH   TVAULT_VENV=/var/tmp/tvault-venv   BENCH_KEEP=1
set -euo pipefail
export BENCH_DIR="${BENCH_DIR:-/var/tmp/tvault-bench-s3}"
# shellcheck source=bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench.sh"
TARGETS="${BENCH_TARGETS:-local s3 s3cache rclone s3fs}"
PARTS="${BENCH_PARTS:-seq load tensor first}"

PORT=""
KEY=bench-access
SECRET=bench-secret-key
S3_PID=""
# The endpoint is plain http on loopback; rclone 1.60 refuses to start when AWS_CA_BUNDLE is
# set (it cannot load a custom CA bundle into its HTTP transport).
unset AWS_CA_BUNDLE

start_server() {
    mkdir -p "$W/s3data"/{tvault,rcrypt,plain}
    PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$KEY" --secret-key "$SECRET" "$W/s3data" \
        >"$W/s3s-fs.log" 2>&1 &
    S3_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0
        sleep 0.1
    done
    die "s3s-fs did not answer on port $PORT"
}
export_aws() {
    export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID="$KEY" AWS_SECRET_ACCESS_KEY="$SECRET"
}
# One bucket per peer: s3s-fs answers a HEAD of a key that is a "directory" with a 500, which
# rclone retries for a long while when its remote names a path inside a bucket.
write_rclone_conf() {
    cat >"$W/rclone.conf" <<EOF
[s3]
type = s3
provider = Other
access_key_id = $KEY
secret_access_key = $SECRET
endpoint = http://127.0.0.1:$PORT
region = us-east-1
force_path_style = true

[crypt]
type = crypt
remote = s3:rcrypt
password = $(rclone obscure "$PASS")
EOF
    printf '%s:%s\n' "$KEY" "$SECRET" >"$W/s3fs.passwd"
    chmod 600 "$W/s3fs.passwd" "$W/rclone.conf"
}
rcl() { rclone --config "$W/rclone.conf" "$@"; }

mnt_of() { echo "$W/mnt/$1"; }
store_of() { case "$1" in local) echo "$W/store" ;; *) echo "s3://tvault/store" ;; esac; }
mount_t() { # TARGET
    local t="$1" m
    m="$(mnt_of "$t")"
    case "$t" in
        local | s3 | s3cache)
            local extra=()
            [ "$t" = s3cache ] && extra=(--disk-cache "$W/dcache" --disk-cache-size 4G)
            "$TV" mount "$(store_of "$t")" "$m" --cache-size "$CACHE_SIZE" "${extra[@]}" >/dev/null
            "$TV" unlock "$m" --passphrase-file "$W/pass" >/dev/null
            TV_PID="$("$TV" status "$m" --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['pid'])")"
            ;;
        rclone) rcl mount crypt: "$m" --daemon --read-only ;;
        s3fs) s3fs plain "$m" -o "url=http://127.0.0.1:$PORT,use_path_request_style,endpoint=us-east-1,passwd_file=$W/s3fs.passwd,ro" ;;
    esac
    wait_mounted "$m" || die "$t did not mount at $m"
}
umount_t() {
    local t="$1" m
    m="$(mnt_of "$t")"
    case "$t" in
        local | s3 | s3cache) "$TV" umount "$m" >/dev/null ;;
        *) fusermount3 -u "$m" 2>/dev/null || umount "$m" ;;
    esac
    wait_unmounted "$m" || force_unmount "$m"
    if [ -n "$TV_PID" ]; then
        # The next mount of this mountpoint needs the old daemon (and its socket) gone.
        local i
        for ((i = 0; i < 200; i++)); do [ -d "/proc/$TV_PID" ] || break; sleep 0.05; done
        TV_PID=""
    fi
}
cleanup_s3() {
    local rc=$?
    set +e
    for d in "$W"/mnt/*; do [ -d "$d" ] && force_unmount "$d"; done
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null
    (exit "$rc")
    cleanup
}

# The tensor stored first in the file (lowest offset): what a loader touches first.
first_tensor() {
    "$PY" - "$1" <<'PYEOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
hdr.pop("__metadata__", None)
print(min(hdr, key=lambda k: hdr[k]["data_offsets"][0]))
PYEOF
}

w_seq() {
    mount_t "$1"
    record "$1" seq_GBps "$2" "$(dd_gbps "$(mnt_of "$1")/model.safetensors")"
    umount_t "$1"
}
w_load() {
    local v
    mount_t "$1"
    v="$(pyb load "$(mnt_of "$1")/model.safetensors")"
    record "$1" load_s "$2" "${v% *}"
    umount_t "$1"
}
w_tensor() {
    mount_t "$1"
    record "$1" tensor_ms "$2" "$(pyb tensor "$(mnt_of "$1")/model.safetensors" "$MIDDLE")"
    umount_t "$1"
}
w_first() {
    mount_t "$1"
    record "$1" first_ms "$2" "$(pyb tensor "$(mnt_of "$1")/model.safetensors" "$FIRST")"
    umount_t "$1"
}

summarize_s3() {
    "$PY" - "$RESULTS" "$OUT/meta.txt" <<'PYEOF'
import collections, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = collections.defaultdict(list)
targets, metrics = [], []
for t, m, r, v in rows:
    data[(t, m)].append(float(v))
    targets += [t] if t not in targets else []
    metrics += [m] if m not in metrics else []
med = {k: statistics.median(v) for k, v in data.items()}
higher = {"seq_GBps": True, "load_s": False, "tensor_ms": False, "first_ms": False}
names = {"seq_GBps": "seq read, GB/s ↑", "load_s": "load_file, s ↓",
         "tensor_ms": "one small tensor (safe_open+get_tensor), ms ↓",
         "first_ms": "time to first tensor (safe_open+get_tensor), ms ↓"}
labels = {"local": "tvault local", "s3": "tvault S3", "s3cache": "tvault S3 + disk cache",
          "rclone": "rclone crypt", "s3fs": "s3fs (plain)"}
def fmt(x):
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
def cell(t, m):
    v = data.get((t, m))
    if not v: return "–"
    return f"{fmt(med[(t, m)])} ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else fmt(v[0])
out = [open(sys.argv[2]).read().rstrip(), ""]
n = max(len(v) for v in data.values())
out.append(f"Medians of {n} (min–max), fresh mount per figure; ↑ higher is better, ↓ lower is better.\n")
out.append("| workload | " + " | ".join(labels.get(t, t) for t in targets) + " |")
out.append("|---|" + "---|" * len(targets))
for m in metrics:
    out.append(f"| {names.get(m, m)} | " + " | ".join(cell(t, m) for t in targets) + " |")
tvs = [t for t in ("s3", "s3cache", "local") if t in targets]
refs = [r for r in ("rclone", "s3fs") if r in targets]
def ratio(a, b, m):
    if (a, m) in med and (b, m) in med and med[(b, m)]:
        return med[(a, m)] / med[(b, m)]
if tvs and refs:
    pairs = [(a, b) for a in tvs for b in refs]
    out.append("\nRatios of the medians (GB/s: above 1 is faster; s and ms: below 1 is faster).\n")
    out.append("| workload | " + " | ".join(f"{labels[a]} / {labels[b]}" for a, b in pairs) + " |")
    out.append("|---|" + "---|" * len(pairs))
    for m in metrics:
        rs = [ratio(a, b, m) for a, b in pairs]
        out.append(f"| {names.get(m, m)} | " + " | ".join("–" if r is None else f"{r:.2f}" for r in rs) + " |")
    out.append("\nIssue 14 goals:\n")
    out.append("| goal | " + " | ".join(labels[t] for t in tvs if t != "local") + " |")
    out.append("|---|" + "---|" * len([t for t in tvs if t != "local"]))
    def verdict(t, m, ref, k):
        r = ratio(t, ref, m)
        if r is None: return "–"
        ok = r >= k if higher[m] else r <= k
        return f"{r:.2f}: {'met' if ok else '**missed**'}"
    for m in metrics:
        if "rclone" in refs:
            out.append(f"| ahead of rclone crypt: {names.get(m, m)} | "
                       + " | ".join(verdict(t, m, "rclone", 1.0) for t in tvs if t != "local") + " |")
    if "s3fs" in refs and "seq_GBps" in metrics:
        out.append("| seq read ≥ s3fs / 1.5 | "
                   + " | ".join(verdict(t, "seq_GBps", "s3fs", 1 / 1.5) for t in tvs if t != "local") + " |")
print("\n".join(out))
PYEOF
}

main_s3() {
    mkdir -p "$OUT"
    : >"$RESULTS"
    exec > >(tee -a "$OUT/log.txt") 2> >(tee -a "$OUT/log.txt" >&2)
    local load_start
    load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
    step "Machine ($(date -u '+%Y-%m-%d %H:%M UTC'); load average $load_start)"
    note "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores), kernel $(uname -r)"

    step "Tools"
    local want=()
    has "$TARGETS" rclone && ! command -v rclone >/dev/null && want+=(rclone)
    has "$TARGETS" s3fs && ! command -v s3fs >/dev/null && want+=(s3fs)
    command -v fusermount3 >/dev/null || want+=(fuse3)
    if [ "${#want[@]}" -gt 0 ]; then
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
    fi
    S3S="${TVAULT_S3S_FS:-${TVAULT_TOOLS:-/var/tmp/tvault-tools}/bin/s3s-fs}"
    if [ -n "${TVAULT_BIN:-}" ]; then
        TV="$TVAULT_BIN"
        [ -x "$S3S" ] && "$PY" -c 'import safetensors, numpy' 2>/dev/null || die "no s3s-fs or Python: run scripts/setup.sh --tests"
    else
        bash scripts/setup.sh --tests
        TV="$REPO/target/release/tvault"
    fi
    [ -x "$TV" ] || die "no tvault binary at $TV"
    note "tvault: $TV ($("$TV" --version)); $("$S3S" --version); $(rclone version 2>/dev/null | head -n1); $(s3fs --version 2>/dev/null | head -n1 | cut -d'(' -f1)"

    step "Disk space"
    mkdir -p "$W"
    local free_mb need_mb
    free_mb="$(df -Pm "$W" | awk 'NR == 2 {print $4}')"
    need_mb=$((SIZE_MB * 7 + 2000))
    note "free in $W: ${free_mb} MB; needs about ${need_mb} MB"
    [ "$free_mb" -gt "$need_mb" ] || die "not enough space in $W"

    for d in "$W"/mnt/*; do [ -d "$d" ] && force_unmount "$d"; done
    trap cleanup_s3 EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$W"
    mkdir -p "$W/plain" "$W/mnt"
    mkdir -m 700 "$W/dcache"   # the daemon refuses a cache directory others can reach
    for t in $TARGETS; do mkdir -p "$W/mnt/$t"; done
    write_helper

    step "Test model (${SIZE_MB} MB, 40 tensors)"
    pyb make "$W/plain/model.safetensors" "$SIZE_MB" >&2
    MIDDLE="$(pyb middle "$W/plain/model.safetensors")"
    FIRST="$(first_tensor "$W/plain/model.safetensors")"
    note "small tensor nearest the middle: $MIDDLE; first tensor: $FIRST"

    step "Server and targets"
    start_server
    export_aws
    write_rclone_conf
    note "s3s-fs on 127.0.0.1:$PORT, data in $W/s3data"
    printf '%s\n' "$PASS" >"$W/pass"
    chmod 600 "$W/pass"
    local t
    for t in local s3; do
        if has "$TARGETS" "$t" || { [ "$t" = s3 ] && has "$TARGETS" s3cache; }; then
            new_store "$(store_of "$t")"
            "$TV" put "$(store_of "$t")" "$W/plain/model.safetensors" --to root --as model.safetensors >/dev/null
        fi
    done
    has "$TARGETS" rclone && rcl copy "$W/plain/model.safetensors" crypt:
    has "$TARGETS" s3fs && rcl copy "$W/plain/model.safetensors" s3:plain
    note "server data: $(du -sh "$W/s3data" | cut -f1); local store: $(du -sh "$W/store" 2>/dev/null | cut -f1)"
    sync

    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(hostname); $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); kernel $(uname -r)"
        echo "model: $(stat -c %s "$W/plain/model.safetensors") bytes, 40 tensors; small tensor: $MIDDLE; first tensor: $FIRST; reps: $REPS, interleaved per rep ($TARGETS)"
        echo "tvault: $("$TV" --version), commit ${BENCH_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +dirty)}; mount --cache-size $CACHE_SIZE; s3cache: --disk-cache-size 4G"
        echo "server: $("$S3S" --version) on loopback (one server for every target; its files in the page cache); peers: $(rclone version 2>/dev/null | head -n1) (crypt over s3, mount --read-only, default VFS); $(s3fs --version 2>/dev/null | head -n1 | cut -d'(' -f1)"
    } >"$OUT/meta.txt"

    local part
    for part in seq load tensor first; do
        has "$PARTS" "$part" || continue
        step "Workload: $part (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        find "$W/s3data" "$W/store" -type f -exec cat {} + >/dev/null 2>&1 || true
        each_rep "w_$part"
    done
    echo "load average: $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end" >>"$OUT/meta.txt"
    step "Summary"
    summarize_s3 | tee "$OUT/summary.md"
}

main_s3 "$@"
