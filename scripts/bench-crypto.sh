#!/usr/bin/env bash
# Crypto and store throughput, end to end, on this machine:
#   1. criterion micro-benchmarks (benches/crypto.rs): chunk seal/open/open_into, container reads,
#      safetensors header parsing;
#   2. `tvault put` and `tvault get` of a file of random bytes (1 GiB by default), timed
#      wall-clock (median of 3), round trip checked with sha256, next to a plain
#      `dd conv=fsync` copy of the container as the file-system ceiling;
#   3. `openssl speed -evp aes-256-gcm` (and aes-256-gcm-siv where this OpenSSL has it) as a
#      reference for what the CPU can do;
# then one summary table. MB/s are decimal (10^6 bytes/s), as OpenSSL reports them.
#
# Usage: scripts/bench-crypto.sh [CRITERION_FILTER]
#   CRITERION_FILTER   passed to `cargo bench --bench crypto -- FILTER` (e.g. chunk_), default all
# Environment:
#   BENCH_SIZE=1G      size of the put/get file (anything `head -c` accepts)
#   BENCH_RUNS=3       put/get repetitions; the summary shows the median
#   BENCH_TMPDIR=DIR   where the temporary store goes (default ${TMPDIR:-/tmp}); needs ~3x BENCH_SIZE
#   JOBS=2             cargo build jobs
#   SKIP_CRITERION=1   reuse the last criterion results instead of re-running them
# Needs: Rust (cargo), coreutils, perl; openssl is installed with apt-get if missing (root or
# passwordless sudo), otherwise its columns are left empty.
set -euo pipefail
cd "$(dirname "$0")/.."

FILTER="${1:-}"
BENCH_SIZE="${BENCH_SIZE:-1G}"
JOBS="${JOBS:-2}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
TV="$TARGET_DIR/release/tvault"
CRIT="$TARGET_DIR/criterion"

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

for tool in cargo perl sha256sum head stat mktemp; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

TMP="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/tvault-bench.XXXXXX")"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
step "Machine"
echo "date:   $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores visible)"
echo "flags:  $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -xE 'aes|pclmulqdq|avx2|vaes|vpclmulqdq|avx512f' | tr '\n' ' ')"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rustc:  $(rustc --version)"

# ---------------------------------------------------------------------------------------------
step "openssl"
if ! command -v openssl >/dev/null; then
    if command -v apt-get >/dev/null; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
        echo "openssl is missing; installing it with apt-get"
        if ! { DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq &&
               DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null; }; then
            warn "could not install openssl (needs root or passwordless sudo); skipping its columns"
        fi
    else
        warn "openssl is missing and apt-get is not available; skipping its columns"
    fi
fi
command -v openssl >/dev/null && openssl version

# ---------------------------------------------------------------------------------------------
step "Build (release)"
cargo build --release --bin tvault -j "$JOBS"

if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    step "cargo bench --bench crypto ${FILTER:+-- $FILTER}"
    # Results older than this marker belong to an earlier run and are not reported.
    touch "$TMP/criterion.start"
    cargo bench --bench crypto -j "$JOBS" -- ${FILTER:+"$FILTER"}
    MARKER="$TMP/criterion.start"
else
    MARKER=""
fi

# Prints the mean time per iteration (ns) and the bytes per iteration of criterion benchmark
# ID (a path under target/criterion) from its last run, or "- -" when it did not run this time.
crit_result() {
    local dir="$CRIT/$1/new"
    if [ ! -f "$dir/estimates.json" ] || [ ! -f "$dir/benchmark.json" ] ||
       { [ -n "$MARKER" ] && [ ! "$dir/estimates.json" -nt "$MARKER" ]; }; then
        echo "- -"
        return
    fi
    perl -0ne '$ns = $1 if /"mean":\{.*?"point_estimate":([-0-9.eE+]+)/s;
               $b = $1 if /"throughput":\{"Bytes":(\d+)\}/;
               END { print defined $ns && defined $b ? "$ns $b\n" : "- -\n" }' \
        "$dir/estimates.json" "$dir/benchmark.json"
}
# MB/s of criterion benchmark ID.
crit_mbs() {
    local ns bytes
    read -r ns bytes <<<"$(crit_result "$1")"
    if [ "$ns" = - ]; then echo -; else perl -e 'printf "%.0f\n", $ARGV[1] * 1000 / $ARGV[0]' "$ns" "$bytes"; fi
}

# ---------------------------------------------------------------------------------------------
step "tvault put/get of $BENCH_SIZE of random bytes (in $TMP)"
DATA="$TMP/random.bin"
head -c "$BENCH_SIZE" /dev/urandom > "$DATA"
BYTES=$(stat -c %s "$DATA")
printf 'bench-passphrase\n' > "$TMP/pass"
"$TV" init "$TMP/store" >/dev/null
# Default Argon2id parameters: `get` pays one unlock, as a real user would.
"$TV" user add "$TMP/store" bench --uid "$(id -u)" --passphrase-file "$TMP/pass" >/dev/null
# A 1-byte file, to measure get's fixed cost (process start, keyring unlock, fsyncs).
head -c 1 /dev/urandom > "$TMP/tiny.bin"
"$TV" put "$TMP/store" "$TMP/tiny.bin" --to bench >/dev/null

# Runs a command and prints "real user sys" seconds; on failure shows its stderr and exits.
timed() {
    local err="$TMP/timed.err" t
    TIMEFORMAT='%3R %3U %3S'
    if ! t=$( { time "$@" >/dev/null 2>"$err"; } 2>&1 ); then
        cat "$err" >&2
        die "failed: $*"
    fi
    echo "$t"
}
mbs() { perl -e 'printf "%.0f\n", $ARGV[1] > 0 ? $ARGV[0] / $ARGV[1] / 1e6 : 0' "$1" "$2"; }

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
SUM_IN=$(sha256sum < "$DATA" | cut -d' ' -f1)
t=$(timed "$TV" get "$TMP/store" tiny.bin -o "$TMP/tiny.out" --user bench --passphrase-file "$TMP/pass")
read -r TINY_REAL _ _ <<<"$t"
echo "get of a 1-byte file (process start, Argon2id unlock, fsyncs): ${TINY_REAL}s"
# Kernel page-cache and fsync costs vary a lot between runs on VMs, so each measurement is
# taken BENCH_RUNS times and the median reported. `dd ... conv=fsync` of the container is the
# file-system ceiling for get: the same bytes read, written and fsynced, with no crypto.
PUTS=(); GETS=(); DDS=()
for run in $(seq "${BENCH_RUNS:-3}"); do
    sync  # do not bill earlier writeback to the next measurement
    t=$(timed "$TV" put --force "$TMP/store" "$DATA" --to bench)
    read -r real user sys <<<"$t"; PUTS+=("$real")
    echo "run $run put: ${real}s real, ${user}s user, ${sys}s sys -> $(mbs "$BYTES" "$real") MB/s"
    sync
    t=$(timed dd if="$TMP/store/random.bin.tvlt" of="$TMP/dd.out" bs=1M conv=fsync)
    read -r real user sys <<<"$t"; DDS+=("$real")
    echo "run $run dd:  ${real}s real, ${user}s user, ${sys}s sys -> $(mbs "$BYTES" "$real") MB/s"
    rm -f "$TMP/dd.out"
    sync
    t=$(timed "$TV" get "$TMP/store" random.bin -o "$TMP/out.bin" --user bench --passphrase-file "$TMP/pass")
    read -r real user sys <<<"$t"; GETS+=("$real")
    echo "run $run get: ${real}s real, ${user}s user, ${sys}s sys -> $(mbs "$BYTES" "$real") MB/s"
    SUM_OUT=$(sha256sum < "$TMP/out.bin" | cut -d' ' -f1)
    [ "$SUM_IN" = "$SUM_OUT" ] || die "round trip differs: sha256 $SUM_IN != $SUM_OUT"
    rm -f "$TMP/out.bin"
done
echo "round trips identical (sha256 $SUM_IN)"
PUT_REAL=$(median "${PUTS[@]}"); GET_REAL=$(median "${GETS[@]}"); DD_REAL=$(median "${DDS[@]}")
PUT_MBS=$(mbs "$BYTES" "$PUT_REAL")
GET_MBS=$(mbs "$BYTES" "$GET_REAL")
DD_MBS=$(mbs "$BYTES" "$DD_REAL")
GET_NET_MBS=$(perl -e 'my $t = $ARGV[1] - $ARGV[2]; printf "%.0f\n", $t > 0 ? $ARGV[0] / $t / 1e6 : 0' \
    "$BYTES" "$GET_REAL" "$TINY_REAL")
rm -f "$DATA"

# ---------------------------------------------------------------------------------------------
OSSL_8K="-"; OSSL_16K="-"; SIV_8K="-"; SIV_16K="-"
# Prints the 8192- and 16384-byte columns of `openssl speed -evp CIPHER`, in MB/s.
openssl_speed() {
    local out
    out=$(openssl speed -evp "$1" -seconds 2 2>/dev/null) || return 1
    # The result line: the cipher name, then six figures in 1000s of bytes/s, the last two
    # for 8192- and 16384-byte blocks.
    printf '%s\n' "$out" | perl -ne '
        my @v = /\s([\d.]+)k(?=\s|$)/g;
        if (/^\S/ && @v == 6) { printf "%.0f %.0f\n", $v[4] / 1000, $v[5] / 1000; exit }'
}
if command -v openssl >/dev/null; then
    step "openssl speed -evp aes-256-gcm -seconds 2"
    v=$(openssl_speed aes-256-gcm || true)
    read -r OSSL_8K OSSL_16K <<<"${v:-- -}"
    echo "aes-256-gcm: 8 KiB $OSSL_8K MB/s, 16 KiB $OSSL_16K MB/s"
    step "openssl speed -evp aes-256-gcm-siv -seconds 2 (OpenSSL 3.2+)"
    v=$(openssl_speed aes-256-gcm-siv || true)
    if [ -n "$v" ]; then
        read -r SIV_8K SIV_16K <<<"$v"
        echo "aes-256-gcm-siv: 8 KiB $SIV_8K MB/s, 16 KiB $SIV_16K MB/s"
    else
        echo "this openssl ($(openssl version)) has no aes-256-gcm-siv; skipped"
    fi
fi

# ---------------------------------------------------------------------------------------------
ratio() {  # ours / reference, or "-"
    perl -e 'my ($a, $b) = @ARGV; print(($a =~ /^[\d.]+$/ && $b =~ /^[\d.]+$/ && $b > 0)
                 ? sprintf("%.2f", $a / $b) : "-")' "$1" "$2"
}
step "Summary (MB/s = 10^6 bytes/s; put/get/dd: median of ${BENCH_RUNS:-3} runs; ratio = ours / openssl aes-256-gcm at 16 KiB)"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %10s %10s\n' "measurement" "MB/s" "ratio"
row() { printf '%-34s %10s %10s\n' "$1" "$2" "$(ratio "$2" "$OSSL_16K")"; }
refrow() { printf '%-34s %10s %10s\n' "$1" "$2" ""; }
for op in seal open open_into; do
    for size in 4KiB 16KiB 64KiB 256KiB 1MiB; do
        row "${op}_chunk $size" "$(crit_mbs "chunk_$op/$size")"
    done
done
row "read_chunk 64KiB chunk" "$(crit_mbs container_read_chunk/64KiB)"
row "read_chunk 1MiB chunk" "$(crit_mbs container_read_chunk/1MiB)"
row "read_at 1MiB aligned, 64KiB chunks" "$(crit_mbs container_read_at/aligned/chunk64KiB)"
row "read_at 1MiB misaligned, 64KiB" "$(crit_mbs container_read_at/misaligned/chunk64KiB)"
row "read_at 1MiB aligned, 1MiB chunks" "$(crit_mbs container_read_at/aligned/chunk1MiB)"
row "read_at 1MiB misaligned, 1MiB" "$(crit_mbs container_read_at/misaligned/chunk1MiB)"
row "tvault put ($BENCH_SIZE, 64KiB chunks)" "$PUT_MBS"
row "tvault get ($BENCH_SIZE, incl. unlock)" "$GET_MBS"
row "tvault get minus 1-byte get" "$GET_NET_MBS"
refrow "dd bs=1M conv=fsync (no crypto)" "$DD_MBS"
refrow "openssl aes-256-gcm 8KiB" "$OSSL_8K"
refrow "openssl aes-256-gcm 16KiB" "$OSSL_16K"
refrow "openssl aes-256-gcm-siv 8KiB" "$SIV_8K"
refrow "openssl aes-256-gcm-siv 16KiB" "$SIV_16K"
read -r ns bytes <<<"$(crit_result safetensors_parse/1000_tensors)"
if [ "$ns" != - ]; then
    printf '%-34s %10s   (%s us per parse of a %s-byte header)\n' "safetensors parse, 1000 tensors" \
        "$(crit_mbs safetensors_parse/1000_tensors)" "$(perl -e 'printf "%.0f", $ARGV[0] / 1000' "$ns")" "$bytes"
fi
