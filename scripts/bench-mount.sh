#!/usr/bin/env bash
# The small benchmark of issue 3: sequential read MB/s of a 1 GiB model through a fresh tvault
# mount (ciphertext in the page cache) beside reading the plaintext file, and
# safetensors.numpy.load_file time through the mount / plain. Runs scripts/bench.sh with only
# those two targets and workloads, interleaved per repetition, then prints the figures.
#
# Usage: scripts/bench-mount.sh          (as root)
# Environment: BENCH_REPS (default 5), BENCH_SIZE_MB (default 1074, i.e. 1 GiB), TVAULT_BIN,
# BENCH_DIR, BENCH_OUT: as for scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_OUT="${BENCH_OUT:-/var/tmp/tvault-bench-results/mount-$(date -u +%Y%m%d-%H%M%S)}"
BENCH_TARGETS="plain tvault" BENCH_PARTS="seq load" BENCH_SIZE_MB="${BENCH_SIZE_MB:-1074}" \
    bash scripts/bench.sh 2>&1 >/dev/null | cat >&2   # progress on stderr, in order
"${TVAULT_VENV:-/var/tmp/tvault-venv}/bin/python" - "$BENCH_OUT/results.tsv" <<'PYEOF'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, m, _, v = line.split("\t")
    d[(t, m)].append(float(v))
def show(t, m, scale=1.0):
    v = [x * scale for x in d[(t, m)]]
    return statistics.median(v), min(v), max(v)
print(f"medians of {len(d[('tvault', 'seq_GBps')])} (min-max)")
for t in ("plain", "tvault"):
    med, lo, hi = show(t, "seq_GBps", 1000)
    print(f"seq read {t:7s} {med:8.0f} MB/s ({lo:.0f}-{hi:.0f})")
for t in ("plain", "tvault"):
    med, lo, hi = show(t, "load_s")
    print(f"load_file {t:6s} {med:8.3f} s    ({lo:.3f}-{hi:.3f})")
r = statistics.median(d[("tvault", "seq_GBps")]) / statistics.median(d[("plain", "seq_GBps")])
q = statistics.median(d[("tvault", "load_s")]) / statistics.median(d[("plain", "load_s")])
print(f"seq read mount/plain: {r:.2f}; load_file time mount/plain: {q:.2f}")
PYEOF
echo "full log and table: $BENCH_OUT" >&2
