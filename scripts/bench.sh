#!/usr/bin/env bash
# Read/write through the mount, side by side with the peers (issue 6): plain ext4 (the file
# itself), bindfs (FUSE pass-through, no crypto), gocryptfs, securefs and tvault, on one
# safetensors model (~1.1 GB, 40 tensors), in ONE run, interleaved per repetition
# (plain bindfs gocryptfs securefs tvault, plain bindfs ..., ...) so that the noise of a
# shared machine hits every target alike. Prints medians (min-max), ratios, the issue's
# targets (met / missed), tvault's chunk-size curve and daemon memory.
#
# Workloads (each on a FRESH mount of every FUSE target: mounted, measured, unmounted, so
# neither the kernel page cache of the mount nor a daemon's cache survives between reps;
# the BACKING files stay in the page cache, warmed with `cat` before each workload):
#   seq      dd if=FILE of=/dev/null bs=1M, open included                   GB/s (10^9)
#   load     safetensors.numpy.load_file(FILE)                               s
#   load2    a second load_file of the same file in the same process/mount   s
#   conc     BENCH_CONC (4) processes load_file the same file at once: wall time   s
#   tensor   safe_open(FILE).get_tensor(small tensor nearest the middle)     ms (open included)
#   pread    open + 2000 random 4 KiB-aligned os.pread of 4 KiB, fixed seed  ms
#   cold     seq after `sync; echo 3 > /proc/sys/vm/drop_caches`           GB/s
#   write    save_file of the model's tensors (~1.1 GB) to MNT/out (+ rename) MB/s (10^6)
#   gpu      safetensors.torch.load_file(FILE, device="cuda"), alone and 8 processes at
#            once (needs torch with CUDA in the venv; skipped without)              s
#   curve    tvault only: pread / seq / tensor at 4, 16, 64, 256 KiB chunks (put --chunk-size)
#   rss      tvault only: daemon VmHWM while dd streams a 4 GiB file, --cache-size 256M and 32M
# Timings inside Python exclude interpreter start and imports. save_file is timed until it
# returns (close + rename); nobody fsyncs (tvault's commit does not either); `sync` runs
# after each write rep, outside the timing.
#
# Usage: scripts/bench.sh            (as root: mounts, drop_caches, apt-get)
# Environment:
#   BENCH_REPS=5         repetitions of each workload (medians over these)
#   BENCH_SIZE_MB=1100   model size in MB (10^6 bytes), 40 tensors
#   BENCH_TARGETS="plain bindfs gocryptfs securefs tvault tvault-eager"
#   BENCH_PARTS="seq load conc tensor pread cold write gpu curve rss"
#   BENCH_DIR=/var/tmp/tvault-bench   work directory (deleted at the end); needs ~3x the
#                        model size per target plus 4x for the curve and 4 GiB for rss
#   BENCH_OUT=DIR        where results.tsv, summary.md and the log stay (default
#                        /var/tmp/tvault-bench-results/DATE)
#   BENCH_BIG_GB=4       size of the rss streaming file (skipped if disk space is short)
#   TVAULT_BIN=PATH      use this tvault binary instead of `cargo build --release`
#   BENCH_COMMIT=REV     the commit TVAULT_BIN was built from (for the summary)
#                        tvault-eager, tvault-chunked, tvault-auto: the main binary mounted
#                        with --data-path eager|chunked|auto (plain `tvault`: the default)
#   BENCH_CONC=4         processes of the conc workload
#   TVAULT_AB="NAME=BIN ..."  more tvault binaries measured side by side as targets
#                        tvault-NAME (e.g. older commits), same store, same workloads; the
#                        curve and rss parts use the main binary only
#   TVAULT_VENV=/var/tmp/tvault-venv   Python with numpy + safetensors (scripts/setup.sh)
#   BENCH_KEEP=1         keep BENCH_DIR (for poking at it afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

REPS="${BENCH_REPS:-5}"
SIZE_MB="${BENCH_SIZE_MB:-1100}"
TARGETS="${BENCH_TARGETS:-plain bindfs gocryptfs securefs tvault tvault-eager}"
PARTS="${BENCH_PARTS:-seq load conc tensor pread cold write gpu curve rss}"
W="${BENCH_DIR:-/var/tmp/tvault-bench}"
OUT="${BENCH_OUT:-/var/tmp/tvault-bench-results/$(date -u +%Y%m%d-%H%M%S)}"
BIG_GB="${BENCH_BIG_GB:-4}"
VENV="${TVAULT_VENV:-/var/tmp/tvault-venv}"
PY="$VENV/bin/python"
PASS=bench-pass

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
has() { case " $1 " in *" $2 "*) return 0 ;; *) return 1 ;; esac; }

[ "$(id -u)" -eq 0 ] || die "run as root (mounts, drop_caches, apt-get)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

# ------------------------------------------------------------------------------------------
# Mount bookkeeping and cleanup (every mount this script makes is under $W/mnt).
is_mounted() { grep -qs " $(realpath -m "$1") " /proc/self/mountinfo; }
wait_mounted() { # DIR [seconds]
    local i
    for ((i = 0; i < ${2:-100}; i++)); do is_mounted "$1" && return 0; sleep 0.1; done
    return 1
}
wait_unmounted() {
    local i
    for ((i = 0; i < 100; i++)); do is_mounted "$1" || return 0; sleep 0.1; done
    return 1
}
force_unmount() { # DIR: whatever it is, get it off
    local d="$1"
    is_mounted "$d" || return 0
    case "$d" in */tvault*) [ -n "${TV:-}" ] && timeout 20 "$TV" umount "$d" >/dev/null 2>&1 ;; esac
    is_mounted "$d" || return 0
    fusermount3 -u "$d" 2>/dev/null || umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || fusermount3 -uz "$d" 2>/dev/null || true
    wait_unmounted "$d" || umount -l "$d" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    if [ -d "$W/mnt" ]; then
        for d in "$W"/mnt/*; do [ -d "$d" ] && force_unmount "$d"; done
    fi
    if [ -z "${BENCH_KEEP:-}" ] && [ -d "$W" ]; then
        # Never delete through a mount that is still there.
        if grep -qs " $(realpath -m "$W")/" /proc/self/mountinfo; then
            echo "warning: mounts remain under $W; not deleting it" >&2
        else
            rm -rf "$W"
        fi
    fi
    [ -d "$OUT" ] && echo "results kept in $OUT" >&2
    exit "$rc"
}

# ------------------------------------------------------------------------------------------
# Targets: mount_T / file paths. `mnt_of T` is where T's files appear.
mnt_of() { if [ "$1" = plain ]; then echo "$W/plain"; else echo "$W/mnt/$1"; fi; }
backing_of() { # the backing (ciphertext) directory of a target, for warming the page cache
    case "$1" in
        plain | bindfs) echo "$W/plain" ;;
        gocryptfs) echo "$W/gocryptfs.cipher" ;;
        securefs) echo "$W/securefs.data" ;;
        tvault*) echo "$TV_STORE" ;;
    esac
}
CACHE_SIZE=256M
TV_STORE=""   # the store the tvault target mounts: $W/store, $W/store-curve or $W/store-big
mount_t() { # TARGET
    local t="$1" m
    m="$(mnt_of "$t")"
    case "$t" in
        plain) return 0 ;;
        bindfs) bindfs "$W/plain" "$m" ;;
        gocryptfs) gocryptfs -q -nosyslog -extpass "echo $PASS" "$W/gocryptfs.cipher" "$m" ;;
        securefs) securefs mount -b --pass "$PASS" --log "$W/securefs.log" "$W/securefs.data" "$m" >/dev/null 2>&1 ;;
        tvault*)
            local path=()
            case "$t" in tvault-eager | tvault-chunked | tvault-auto) path=(--data-path "${t#tvault-}") ;; esac
            "$(tv_bin "$t")" mount "$TV_STORE" "$m" --cache-size "$CACHE_SIZE" "${path[@]}" >/dev/null
            "$(tv_bin "$t")" unlock "$m" --passphrase-file "$W/pass" >/dev/null
            TV_PID="$(tvault_stat "$t" pid)"
            ;;
    esac
    wait_mounted "$m" || die "$t did not mount at $m"
}
TV_PID=""
umount_t() {
    local t="$1" m
    [ "$t" = plain ] && return 0
    m="$(mnt_of "$t")"
    case "$t" in
        tvault*) "$(tv_bin "$t")" umount "$m" >/dev/null ;;
        *) fusermount3 -u "$m" 2>/dev/null || umount "$m" ;;
    esac
    wait_unmounted "$m" || force_unmount "$m"
    if is_tv "$t" && [ -n "$TV_PID" ]; then
        # The next mount of this mountpoint needs the old daemon (and its socket) gone.
        local i
        for ((i = 0; i < 200; i++)); do
            [ -d "/proc/$TV_PID" ] && [ "$(awk '{print $3}' "/proc/$TV_PID/stat" 2>/dev/null)" != Z ] || break
            sleep 0.05
        done
        TV_PID=""
    fi
}
warm() { # read the backing files of every target into the page cache
    local t d seen=""
    for t in $TARGETS; do
        d="$(backing_of "$t")"
        has "$seen" "$d" && continue
        seen="$seen $d"
        find "$d" -type f -exec cat {} + >/dev/null
    done
}
is_tv() { case "$1" in tvault*) return 0 ;; *) return 1 ;; esac; }
tv_bin() { # the binary of target tvault or tvault-NAME (TVAULT_AB)
    local pair
    for pair in ${TVAULT_AB:-}; do [ "tvault-${pair%%=*}" = "$1" ] && { echo "${pair#*=}"; return; }; done
    case "$1" in tvault | tvault-eager | tvault-chunked | tvault-auto) echo "$TV"; return ;; esac
    die "no binary for target $1"
}
tvault_stat() { # TARGET KEY: KEY of `tvault status --json` (top level)
    "$(tv_bin "$1")" status "$(mnt_of "$1")" --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}

RESULTS="$OUT/results.tsv"
record() { # TARGET METRIC REP VALUE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
    printf '   %-10s %-14s rep %s: %s\n' "$1" "$2" "$3" "$4" >&2
}
dd_gbps() { # FILE -> GB/s: bytes / seconds of the whole dd, open included (dd's own clock
    # starts after the open, which is where an eager open decrypts the file)
    local t0 t1 bytes
    t0="$(date +%s.%N)"
    bytes="$(LC_ALL=C dd if="$1" of=/dev/null bs=1M 2>&1 | tail -n1 | sed -E 's/^([0-9]+) bytes.*/\1/')"
    t1="$(date +%s.%N)"
    awk -v b="$bytes" -v a="$t0" -v z="$t1" 'BEGIN {printf "%.3f\n", b / (z - a) / 1e9}'
}

# ------------------------------------------------------------------------------------------
# The Python side: make the model, time load_file / get_tensor / pread / save_file.
write_helper() {
    cat >"$W/bench.py" <<'PYEOF'
import os, random, sys, time
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

def make(path, size_mb):
    # 20 big float32 matrices and 20 small (16 KiB) vectors = 40 tensors, ~size_mb * 10^6 bytes.
    rng = np.random.default_rng(0)
    cols = 4096
    rows = max(1, int(size_mb * 1e6 / 20 / (4 * cols)))
    t = {}
    for i in range(20):
        t[f"layers.{i:02d}.weight"] = rng.standard_normal((rows, cols), dtype=np.float32)
        t[f"layers.{i:02d}.norm"] = rng.standard_normal(cols, dtype=np.float32)
    save_file(t, path, metadata={"format": "np"})
    print(f"{path}: {len(t)} tensors, {os.path.getsize(path)} bytes")

def small_middle(path):
    # The smallest tensor whose data lies nearest the middle of the file.
    import json, struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    size = os.path.getsize(path)
    smallest = min(e["data_offsets"][1] - e["data_offsets"][0] for e in hdr.values())
    cands = [(abs(8 + n + e["data_offsets"][0] - size / 2), k) for k, e in hdr.items()
             if e["data_offsets"][1] - e["data_offsets"][0] == smallest]
    return min(cands)[1]

cmd, path = sys.argv[1], sys.argv[2]
if cmd == "make":
    make(path, float(sys.argv[3]))
elif cmd == "middle":
    print(small_middle(path))
elif cmd == "load":  # prints: first second (seconds)
    t0 = time.perf_counter(); d = load_file(path); t1 = time.perf_counter()
    del d
    t2 = time.perf_counter(); d = load_file(path); t3 = time.perf_counter()
    print(f"{t1 - t0:.4f} {t3 - t2:.4f}")
elif cmd == "conc":  # wall seconds for N processes that load_file(path) at once (DEVICE cpu|cuda)
    import multiprocessing as mp
    n, device = int(sys.argv[3]), sys.argv[4]
    if device == "cuda":
        import torch
        from safetensors.torch import load_file as torch_load
    ctx = mp.get_context("fork")  # after imports, before CUDA starts in the parent
    barrier = ctx.Barrier(n + 1)
    def one():
        barrier.wait()
        if device == "cuda":
            d = torch_load(path, device="cuda"); torch.cuda.synchronize()
        else:
            d = load_file(path)
        del d
    ps = [ctx.Process(target=one) for _ in range(n)]
    for p in ps: p.start()
    barrier.wait(); t0 = time.perf_counter()
    for p in ps: p.join()
    if any(p.exitcode != 0 for p in ps): sys.exit("a loader failed")
    print(f"{time.perf_counter() - t0:.4f}")
elif cmd == "gpu":  # seconds for safetensors.torch.load_file(path, device="cuda")
    import torch
    from safetensors.torch import load_file as torch_load
    torch.cuda.init()
    t0 = time.perf_counter(); d = torch_load(path, device="cuda"); torch.cuda.synchronize()
    print(f"{time.perf_counter() - t0:.4f}")
elif cmd == "tensor":  # ms, safe_open included
    name = sys.argv[3]
    t0 = time.perf_counter()
    with safe_open(path, framework="np") as f:
        x = f.get_tensor(name)
    print(f"{(time.perf_counter() - t0) * 1e3:.3f}")
elif cmd == "pread":  # ms for N random 4 KiB-aligned 4 KiB preads, fixed seed, open included
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    pages = os.stat(path).st_size // 4096
    rng = random.Random(1234)
    offs = [rng.randrange(pages) * 4096 for _ in range(n)]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    for o in offs:
        if len(os.pread(fd, 4096, o)) != 4096:
            sys.exit("short read")
    print(f"{(time.perf_counter() - t0) * 1e3:.3f}")
    os.close(fd)
elif cmd == "save":  # MB/s for save_file(tensors of SRC) to path
    d = load_file(sys.argv[3])
    nbytes = os.path.getsize(sys.argv[3])
    t0 = time.perf_counter()
    save_file(d, path, metadata={"format": "np"})
    dt = time.perf_counter() - t0
    if os.path.getsize(path) != nbytes:
        sys.exit("size mismatch after save_file")
    print(f"{nbytes / dt / 1e6:.1f}")
PYEOF
}
# OpenBLAS starts a worker thread per core on `import numpy` that busy-waits for about 0.1 s;
# on 2 cores it held one core while a FUSE daemon's thread waited a scheduler tick (4 ms) to
# run (perf sched: 2.9 ms wakeup delay). No workload here calls BLAS, so every target gets
# one BLAS thread.
pyb() { OPENBLAS_NUM_THREADS=1 "$PY" "$W/bench.py" "$@"; }

# ------------------------------------------------------------------------------------------
# Workloads. Each: for rep, for target: fresh mount, measure, unmount.
each_rep() { # FUNCTION: called as FUNCTION TARGET REP, interleaved
    local r t
    for ((r = 1; r <= REPS; r++)); do
        for t in $TARGETS; do "$1" "$t" "$r"; done
    done
}
file_of() { echo "$(mnt_of "$1")/model.safetensors"; }
w_seq() {
    mount_t "$1"
    record "$1" seq_GBps "$2" "$(dd_gbps "$(file_of "$1")")"
    umount_t "$1"
}
w_load() {
    local v
    mount_t "$1"
    v="$(pyb load "$(file_of "$1")")"
    record "$1" load_s "$2" "${v% *}"
    record "$1" load2_s "$2" "${v#* }"
    umount_t "$1"
}
CONC="${BENCH_CONC:-4}"
w_conc() {
    mount_t "$1"
    record "$1" conc_s "$2" "$(pyb conc "$(file_of "$1")" "$CONC" cpu)"
    umount_t "$1"
}
w_gpu() {
    mount_t "$1"
    record "$1" gpu_s "$2" "$(pyb gpu "$(file_of "$1")")"
    umount_t "$1"
    mount_t "$1"
    record "$1" gpu8_s "$2" "$(pyb conc "$(file_of "$1")" 8 cuda)"
    umount_t "$1"
}
w_tensor() {
    mount_t "$1"
    record "$1" tensor_ms "$2" "$(pyb tensor "$(file_of "$1")" "$MIDDLE")"
    is_tv "$1" && record "$1" tensor_decKiB "$2" "$(($(tvault_stat "$1" bytes_decrypted) / 1024))"
    umount_t "$1"
}
w_pread() {
    mount_t "$1"
    record "$1" pread_ms "$2" "$(pyb pread "$(file_of "$1")" 2000)"
    is_tv "$1" && record "$1" pread_decMiB "$2" "$(($(tvault_stat "$1" bytes_decrypted) / 1048576))"
    umount_t "$1"
}
w_cold() {
    mount_t "$1"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    record "$1" cold_GBps "$2" "$(dd_gbps "$(file_of "$1")")"
    umount_t "$1"
}
w_write() {
    [ "$1" = bindfs ] && return 0   # bindfs writes straight to the plain directory: not asked for
    mount_t "$1"
    local dst
    dst="$(mnt_of "$1")/out"
    [ "$1" = plain ] && dst="$W/plain-out"
    mkdir -p "$dst"
    record "$1" write_MBps "$2" "$(pyb save "$dst/written.safetensors" "$W/plain/model.safetensors")"
    rm -rf "$dst"
    umount_t "$1"
    sync
}

# tvault only: chunk-size curve (one store file per chunk size) and daemon memory.
CURVE_SIZES="4K 16K 64K 256K"
w_curve() { # TARGET(tvault) REP
    local cs f
    for cs in $CURVE_SIZES; do
        f="$(mnt_of tvault)/model-$cs.safetensors"
        mount_t tvault
        record "tvault@$cs" pread_ms "$2" "$(pyb pread "$f" 2000)"
        umount_t tvault
        mount_t tvault
        record "tvault@$cs" seq_GBps "$2" "$(dd_gbps "$f")"
        umount_t tvault
        mount_t tvault
        record "tvault@$cs" tensor_ms "$2" "$(pyb tensor "$f" "$MIDDLE")"
        record "tvault@$cs" tensor_decKiB "$2" "$(($(tvault_stat tvault bytes_decrypted) / 1024))"
        umount_t tvault
    done
}
w_rss() {
    local cs pid m
    m="$(mnt_of tvault)"
    for cs in 256M 32M; do
        CACHE_SIZE="$cs"
        mount_t tvault
        pid="$TV_PID"
        record "tvault/$cs" idle_HWM_MiB 1 "$(($(awk '/^VmHWM/ {print $2}' /proc/"$pid"/status) / 1024))"
        # Sample the daemon's anonymous memory every 50 ms while dd runs (its peak is not
        # kept by the kernel, unlike VmHWM).
        (while [ -r "/proc/$pid/status" ]; do awk '/^RssAnon/ {print $2}' "/proc/$pid/status"; sleep 0.05; done) >"$W/anon.txt" 2>/dev/null &
        local sampler=$!
        record "tvault/$cs" big_seq_GBps 1 "$(dd_gbps "$m/big.bin")"
        kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
        awk '/^RssAnon/ {print $2}' "/proc/$pid/status" >>"$W/anon.txt"
        record "tvault/$cs" peak_RssAnon_MiB 1 "$(($(sort -n "$W/anon.txt" | tail -n1) / 1024))"
        record "tvault/$cs" stream_HWM_MiB 1 "$(($(awk '/^VmHWM/ {print $2}' /proc/"$pid"/status) / 1024))"
        record "tvault/$cs" after_RSS_MiB 1 "$(($(awk '/^VmRSS/ {print $2}' /proc/"$pid"/status) / 1024))"
        # RssFile counts pages of mmap'ed files (the ciphertext) that belong to the page cache;
        # RssAnon is the daemon's own memory (decrypted cache, buffers).
        record "tvault/$cs" after_RssAnon_MiB 1 "$(($(awk '/^RssAnon/ {print $2}' /proc/"$pid"/status) / 1024))"
        record "tvault/$cs" after_RssFile_MiB 1 "$(($(awk '/^RssFile/ {print $2}' /proc/"$pid"/status) / 1024))"
        umount_t tvault
    done
    CACHE_SIZE=256M
}

new_store() { # DIR: a store with one user, root (uid 0), who unlocks its own keyring on the mount
    "$TV" init "$1" >/dev/null
    "$TV" user add "$1" root --uid 0 --kdf-memory 65536 --passphrase-file "$W/pass" >/dev/null
}
residency() { # how much of each target's backing files is in the page cache
    local t d
    for t in $TARGETS; do
        d="$(backing_of "$t")"
        find "$d" -type f -size +1M -print0 | xargs -0 -r fincore --bytes --noheadings --raw --output RES,SIZE |
            awk -v t="$t" '{r += $1; s += $2} END {if (s) printf "   %s: %.0f%% of %.2f GB backing data in page cache\n", t, 100 * r / s, s / 1e9}' >&2
    done
}

# ------------------------------------------------------------------------------------------
summarize() {
    "$PY" - "$RESULTS" "$OUT/meta.txt" <<'PYEOF'
import collections, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
meta = open(sys.argv[2]).read()
data = collections.defaultdict(list)
order_t, order_m = [], []
for t, m, r, v in rows:
    data[(t, m)].append(float(v))
    if t not in order_t: order_t.append(t)
    if m not in order_m: order_m.append(m)
med = {k: statistics.median(v) for k, v in data.items()}
def fmt(x):
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
def cell(t, m):
    v = data.get((t, m))
    if not v: return "–"
    return f"{fmt(med[(t, m)])} ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else fmt(v[0])
names = {"seq_GBps": "seq read, GB/s ↑", "load_s": "load_file, s ↓", "load2_s": "2nd load_file (cached), s ↓",
         "conc_s": "processes loading at once (BENCH_CONC), s ↓", "gpu_s": "load_file to cuda, s ↓",
         "gpu8_s": "8 processes load_file to cuda at once, s ↓",
         "tensor_ms": "one small tensor (safe_open+get_tensor), ms ↓", "pread_ms": "2000 random 4 KiB preads, ms ↓",
         "cold_GBps": "cold seq read (drop_caches), GB/s ↑", "write_MBps": "save_file ~1.1 GB, MB/s ↑",
         "tensor_decKiB": "KiB decrypted for the one tensor (open included)", "pread_decMiB": "MiB decrypted for 2000 preads",
         "idle_HWM_MiB": "daemon VmHWM after mount+unlock, MiB", "stream_HWM_MiB": "daemon VmHWM after streaming, MiB",
         "after_RSS_MiB": "daemon VmRSS after streaming, MiB",
         "after_RssAnon_MiB": "of which RssAnon (own memory), MiB", "peak_RssAnon_MiB": "peak RssAnon while streaming (50 ms samples), MiB", "after_RssFile_MiB": "of which RssFile (mmap'ed ciphertext), MiB", "big_seq_GBps": "seq read of the big file, GB/s"}
tvs = [t for t in order_t if t == "tvault" or t.startswith("tvault-")]
peers = [t for t in ["plain", "bindfs", "gocryptfs", "securefs"] if t in order_t] + tvs
main_m = [m for m in ["seq_GBps", "load_s", "load2_s", "conc_s", "tensor_ms", "pread_ms", "cold_GBps",
                      "write_MBps", "gpu_s", "gpu8_s", "tensor_decKiB", "pread_decMiB"]
          if any((t, m) in data for t in peers)]
out = [meta.rstrip(), ""]
n = max((len(data[(t, m)]) for t in peers for m in main_m if (t, m) in data), default=0)
out.append(f"Medians of {n} (min–max); ↑ higher is better, ↓ lower is better.\n")
out.append("| workload | " + " | ".join(peers) + " |")
out.append("|---|" + "---|" * len(peers))
for m in main_m:
    out.append(f"| {names.get(m, m)} | " + " | ".join(cell(t, m) for t in peers) + " |")
def ratio(a, b, m):
    if (a, m) in med and (b, m) in med and med[(b, m)]:
        return med[(a, m)] / med[(b, m)]
pairs = [(a, b) for a, b in [("bindfs", "plain"), ("gocryptfs", "plain"), ("securefs", "plain")]
         + [(t, r) for t in tvs for r in ("plain", "bindfs", "gocryptfs", "securefs")]
         if a in peers and b in peers]
if pairs:
    out.append("\nRatios of the medians (same unit as the row: for GB/s and MB/s above 1 is faster, for s and ms below 1 is faster).\n")
    out.append("| workload | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |")
    out.append("|---|" + "---|" * len(pairs))
    for m in [m for m in main_m if not m.endswith(("decKiB", "decMiB"))]:
        rs = [ratio(a, b, m) for a, b in pairs]
        if all(r is None for r in rs): continue
        out.append(f"| {names.get(m, m)} | " + " | ".join("–" if r is None else f"{r:.2f}" for r in rs) + " |")
# Issue 15 targets.
checks = [("seq read ≥ 0.9 × bindfs", "seq_GBps", "bindfs", 0.9, True),
          ("seq read ≥ 2 × gocryptfs", "seq_GBps", "gocryptfs", 2.0, True),
          ("load_file ≤ 1.3 × plain", "load_s", "plain", 1.3, False),
          ("2nd load_file ≤ 1.1 × plain", "load2_s", "plain", 1.1, False),
          ("loads at once ≤ 1.3 × plain", "conc_s", "plain", 1.3, False),
          ("one tensor ≤ gocryptfs", "tensor_ms", "gocryptfs", 1.0, False),
          ("2000 preads ≤ gocryptfs", "pread_ms", "gocryptfs", 1.0, False),
          ("cold ≥ 0.9 × plain cold", "cold_GBps", "plain", 0.9, True),
          ("save_file ≤ 1.3 × plain time (speed ≥ 0.77 ×)", "write_MBps", "plain", 1 / 1.3, True),
          ("load to cuda: speed ≥ 0.9 × plain", "gpu_s", "plain", 1 / 0.9, False),
          ("8 loads to cuda: speed ≥ 0.9 × plain", "gpu8_s", "plain", 1 / 0.9, False)]
lines = []
for label, m, ref, k, higher in checks:
    cells = []
    for t in tvs:
        r = ratio(t, ref, m)
        if r is None:
            cells.append("–")
            continue
        ok = r >= k if higher else r <= k
        cells.append(f"{r:.2f} × {ref}: {'met' if ok else '**missed**'}")
    if any(c != "–" for c in cells):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
if lines:
    out.append("\nIssue 15 targets (tvault median / reference median):\n")
    out.append("| target | " + " | ".join(tvs) + " |")
    out.append("|---|" + "---|" * len(tvs))
    out.extend(lines)
curve = [t for t in order_t if t.startswith("tvault@")]
if curve:
    out.append("\ntvault chunk-size curve (one store file per chunk size, same model; fresh mount per figure):\n")
    cm = ["pread_ms", "seq_GBps", "tensor_ms", "tensor_decKiB"]
    out.append("| chunk size | " + " | ".join(names[m] for m in cm) + " |")
    out.append("|---|" + "---|" * len(cm))
    for t in curve:
        out.append(f"| {t.split('@')[1]} | " + " | ".join(cell(t, m) for m in cm) + " |")
rss = [t for t in order_t if t.startswith("tvault/")]
if rss:
    out.append("\ntvault daemon memory while `dd` streams the big file (one run each):\n")
    cm = ["idle_HWM_MiB", "stream_HWM_MiB", "peak_RssAnon_MiB", "after_RSS_MiB", "after_RssAnon_MiB", "after_RssFile_MiB", "big_seq_GBps"]
    out.append("| --cache-size | " + " | ".join(names[m] for m in cm) + " | target (cache + 64 MiB) |")
    out.append("|---|" + "---|" * (len(cm) + 1))
    for t in rss:
        cs = t.split("/")[1]
        mib = int(cs[:-1]) * (1024 if cs.endswith("G") else 1)
        def verdict(x):
            return "–" if x is None else ("met" if x <= mib + 64 else "**missed**")
        out.append(f"| {cs} | " + " | ".join(cell(t, m) for m in cm)
                   + f" | ≤ {mib + 64} MiB: VmHWM {verdict(med.get((t, 'stream_HWM_MiB')))}, peak RssAnon {verdict(med.get((t, 'peak_RssAnon_MiB')))} |")
print("\n".join(out))
PYEOF
}

# ------------------------------------------------------------------------------------------
main() {
    mkdir -p "$OUT"
    : >"$RESULTS"
    exec > >(tee -a "$OUT/log.txt") 2> >(tee -a "$OUT/log.txt" >&2)
    local load_start
    load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
    step "Machine ($(date -u '+%Y-%m-%d %H:%M UTC'); load average $load_start)"
    note "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores), $(free -g | awk '/^Mem/ {print $2}') GiB RAM, kernel $(uname -r)"

    step "Peers from Debian"
    local want=() p
    for p in gocryptfs bindfs securefs; do
        has "$TARGETS" "$p" && ! command -v "$p" >/dev/null && want+=("$p")
    done
    command -v fusermount3 >/dev/null || want+=(fuse3)
    if [ "${#want[@]}" -gt 0 ]; then
        apt-get update -qq || true
        for p in "${want[@]}"; do
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1 || note "$p: not installable here; skipped"
        done
    fi
    local kept=""
    for p in $TARGETS; do
        case "$p" in plain | tvault*) kept="$kept $p" ;;
            *) if command -v "$p" >/dev/null; then kept="$kept $p"; else note "$p unavailable: skipped"; fi ;;
        esac
    done
    TARGETS="${kept# }"
    local pair
    for pair in ${TVAULT_AB:-}; do
        has "$TARGETS" "tvault-${pair%%=*}" || TARGETS="$TARGETS tvault-${pair%%=*}"
        [ -x "${pair#*=}" ] || die "TVAULT_AB: ${pair#*=} is not executable"
    done
    note "targets: $TARGETS"
    note "versions: $(gocryptfs -version 2>/dev/null | cut -d';' -f1); $(bindfs --version 2>/dev/null | head -n1); securefs $(dpkg-query -W -f '${Version}' securefs 2>/dev/null)"

    step "Build"
    if [ -n "${TVAULT_BIN:-}" ]; then
        TV="$TVAULT_BIN"
    else
        bash scripts/setup.sh
        TV="$REPO/target/release/tvault"
    fi
    [ -x "$TV" ] || die "no tvault binary at $TV"
    [ -x "$PY" ] && "$PY" -c 'import safetensors, numpy' 2>/dev/null || bash scripts/setup.sh
    note "tvault: $TV ($("$TV" --version)); python: $PY (safetensors $("$PY" -c 'import safetensors; print(safetensors.__version__)'), numpy $("$PY" -c 'import numpy; print(numpy.__version__)'))"

    step "Disk space"
    mkdir -p "$W"
    local free_mb need_mb
    free_mb="$(df -Pm "$W" | awk 'NR == 2 {print $4}')"
    need_mb=$((SIZE_MB * 10 + 2000))
    note "free in $W: ${free_mb} MB; main run needs about ${need_mb} MB"
    [ "$free_mb" -gt "$need_mb" ] || die "not enough space in $W"
    if has "$PARTS" rss && [ "$free_mb" -lt $((need_mb + BIG_GB * 1100 * 2)) ]; then
        note "not enough space for the ${BIG_GB} GiB rss file: rss skipped"
        PARTS="${PARTS/rss/}"
    fi

    # From here on every mount is ours: clean them up however we leave.
    for d in "$W"/mnt/*; do [ -d "$d" ] && force_unmount "$d"; done
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$W"
    mkdir -p "$W/plain" "$W/mnt"
    # Audit keys and store-id pins of these throwaway stores stay with the run: a store made
    # again at the same path is another store, which a lasting pin would refuse.
    export TVAULT_STATE_DIR="$W/state"
    for t in $TARGETS; do [ "$t" = plain ] || mkdir -p "$W/mnt/$t"; done
    mkdir -p "$W/mnt/tvault"
    write_helper

    step "Test model (${SIZE_MB} MB, 40 tensors)"
    pyb make "$W/plain/model.safetensors" "$SIZE_MB" >&2
    MIDDLE="$(pyb middle "$W/plain/model.safetensors")"
    note "small tensor nearest the middle: $MIDDLE"

    step "Targets"
    TV_STORE="$W/store"
    if has "$TARGETS" gocryptfs; then
        mkdir -p "$W/gocryptfs.cipher"
        gocryptfs -q -init -extpass "echo $PASS" "$W/gocryptfs.cipher" >/dev/null
        mount_t gocryptfs
        cp "$W/plain/model.safetensors" "$(mnt_of gocryptfs)/"
        umount_t gocryptfs
        note "gocryptfs: $(du -sh "$W/gocryptfs.cipher" | cut -f1) of ciphertext"
    fi
    if has "$TARGETS" securefs; then
        securefs create --pass "$PASS" "$W/securefs.data" >/dev/null 2>&1
        mount_t securefs
        cp "$W/plain/model.safetensors" "$(mnt_of securefs)/"
        umount_t securefs
        note "securefs: $(du -sh "$W/securefs.data" | cut -f1) of ciphertext"
    fi
    if [[ " $TARGETS " == *" tvault"* ]]; then
        printf '%s\n' "$PASS" >"$W/pass"
        chmod 600 "$W/pass"
        new_store "$W/store"
        "$TV" put "$W/store" "$W/plain/model.safetensors" --to root --as model.safetensors >/dev/null
        note "tvault: $(du -sh "$W/store" | cut -f1) in the store"
        if has "$PARTS" curve; then
            new_store "$W/store-curve"
            for cs in $CURVE_SIZES; do
                "$TV" put "$W/store-curve" "$W/plain/model.safetensors" --to root --as "model-$cs.safetensors" --chunk-size "$cs" >/dev/null
            done
            note "tvault curve store: $(du -sh "$W/store-curve" | cut -f1)"
        fi
        if has "$PARTS" rss; then
            new_store "$W/store-big"
            head -c "${BIG_GB}G" /dev/urandom >"$W/big.bin"
            "$TV" put "$W/store-big" "$W/big.bin" --to root --as big.bin >/dev/null
            rm -f "$W/big.bin"
            note "tvault big store: $(du -sh "$W/store-big" | cut -f1)"
        fi
    fi
    sync

    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(hostname); $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/^Mem/ {print $2}') GiB RAM; kernel $(uname -r)"
        echo "model: $(stat -c %s "$W/plain/model.safetensors") bytes, 40 tensors; small tensor: $MIDDLE; reps: $REPS, interleaved per rep ($TARGETS)"
        [ -n "${TVAULT_AB:-}" ] && echo "A/B tvault binaries: $TVAULT_AB"
        echo "tvault: $("$TV" --version), commit ${BENCH_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +dirty)} ($TV); mount --cache-size 256M (default), store chunk size 64K (default)"
        echo "peers: $(gocryptfs -version 2>/dev/null | cut -d';' -f1); $(bindfs --version 2>/dev/null | head -n1); securefs $(dpkg-query -W -f '${Version}' securefs 2>/dev/null); safetensors $("$PY" -c 'import safetensors; print(safetensors.__version__)'), numpy $("$PY" -c 'import numpy; print(numpy.__version__)')"
    } >"$OUT/meta.txt"

    local part
    if has "$PARTS" gpu && ! "$PY" -c 'import torch, safetensors.torch; assert torch.cuda.is_available()' 2>/dev/null; then
        note "no torch with CUDA in $PY: gpu skipped"
        PARTS="${PARTS/gpu/}"
    fi
    for part in seq load conc tensor pread cold write gpu; do
        has "$PARTS" "$part" || continue
        step "Workload: $part (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        warm
        [ "$part" = seq ] && residency
        each_rep "w_$part"
    done
    if has "$TARGETS" tvault; then
        local saved="$TARGETS"
        TARGETS=tvault
        if has "$PARTS" curve; then
            step "tvault chunk-size curve (load average $(cut -d' ' -f1-3 /proc/loadavg))"
            TV_STORE="$W/store-curve"
            warm
            each_rep w_curve
        fi
        if has "$PARTS" rss; then
            step "tvault daemon memory while streaming ${BIG_GB} GiB (load average $(cut -d' ' -f1-3 /proc/loadavg))"
            TV_STORE="$W/store-big"
            warm
            w_rss
        fi
        TARGETS="$saved"
        TV_STORE="$W/store"
    fi

    echo "load average: $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end" >>"$OUT/meta.txt"
    step "Summary"
    summarize | tee "$OUT/summary.md"
}

# scripts/bench-s3.sh sources this file for its helpers: run only when executed.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
