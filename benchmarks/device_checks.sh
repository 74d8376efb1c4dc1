#!/bin/bash
# The figures that need cores the load generator does not share (issues 15 and 17), as one run
# for a lent many-core machine (the `device` tool: 16 cores; its time is short, so this stays
# under ~9 minutes). Results go to ${OUT:-out}/device-checks/.
#   1. `--workers` scaling up to 12 server cores, pinned and unpinned workers side by side
#      (bench_workers.py pins the servers and the load generator to separate cores itself).
#   2. Overload with the defaults on the heavy and the light model, the server on 2 cores and the
#      load generator on the rest (overload.sh with SERVER_CPUS / CLIENT_CPUS).
# usage: benchmarks/device_checks.sh [WORKERS]   (default 1,2,4,8,12,12:split)
set -e
cd "$(dirname "$0")/.."
WORKERS=${1:-1,2,4,8,12,12:split}
DEST=${OUT:-out}/device-checks
mkdir -p "$DEST"
CORES=$(nproc)
echo "$(date -u +%FT%TZ) $CORES cores, workers $WORKERS" | tee "$DEST/run.txt"
timeout 330 python benchmarks/bench_workers.py --workers "$WORKERS" --duration 3 --repeats 3 \
  --out "$DEST/workers" 2>&1 | tee "$DEST/workers.txt" | grep -E "^\[|^\|" || true
HEAVY=$(python -c "from navi.demo import ensure_heavy_model; print(ensure_heavy_model())")
if [ "$CORES" -ge 4 ]; then export SERVER_CPUS=0-1 CLIENT_CPUS=2-$((CORES - 1)); fi
timeout 150 benchmarks/overload.sh device-heavy "$HEAVY" 47731 100 12 2>&1 | tee "$DEST/overload-heavy.txt" || true
timeout 150 benchmarks/overload.sh device-light models/home 47741 10 12 2>&1 | tee "$DEST/overload-light.txt" || true
cp out/overload-device-* "$DEST/" 2>/dev/null || true
echo "$(date -u +%FT%TZ) done" | tee -a "$DEST/run.txt"
