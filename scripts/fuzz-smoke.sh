#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a few seconds from its seed
# corpus, so that the targets keep building and the seeds keep passing. Exits 0 only when
# every target built and ran without a crash; a crash leaves its input under
# fuzz/artifacts/<target>/ and the log under fuzz/artifacts/smoke-<target>.log.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]     (default 5; env FUZZ_SMOKE_SECONDS too)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer needs nightly features; on a
# stable toolchain they are unlocked with RUSTC_BOOTSTRAP=1. Longer runs: see the
# "Fuzzing" section of docs/SECURITY.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET="${1:-${FUZZ_SMOKE_SECONDS:-5}}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 1
fi

targets=$(cargo fuzz list)
cargo fuzz build
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"

# Inputs longer than this are cut; the container seeds are up to ~14 KB.
max_len() {
    case "$1" in
        container*) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

seeds_for() {
    case "$1" in
        container_insider) echo seeds/container ;;
        *) echo "seeds/$1" ;;
    esac
}

failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/smoke-$t.log"
    if "$bin_dir/$t" -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "$(seeds_for "$t")" \
        </dev/null >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz-smoke: $t ok (${execs:-?} executions in ${SECONDS_PER_TARGET}s)"
    else
        echo "fuzz-smoke: $t FAILED; log: fuzz/$log" >&2
        tail -n 30 "$log" >&2
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz-smoke: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all $(wc -w <<<"$targets") targets ok"
