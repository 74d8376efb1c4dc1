#!/bin/bash
# Overload with the defaults (issue 17 item 3): for one model served dense, closed loop
# c=8/32/128, then open loop at 3x and 10x the best closed-loop req/s, then c=1 2 s after
# the load. Daemon RSS and its batch queue sampled every 0.5 s.
# usage: [CLIENT=grpcio] [SERVER_CPUS=0-1 CLIENT_CPUS=2-15] benchmarks/overload.sh NAME MODEL_DIR PORT
#        [ROWS] [SECONDS]; writes out/overload-NAME*. The load generator is the raw HTTP/2 one unless
# CLIENT says grpcio. SERVER_CPUS / CLIENT_CPUS (taskset lists) keep the server and the load
# generator on cores apart, on a machine that has them. Run it under `flock /work/notes/bench.lock`
# on a shared machine.
set -e
NAME=$1; DIR=$2; PORT=$3; ROWS=${4:-100}; SECONDS_PER_LEVEL=${5:-20}
MPORT=$((PORT + 1)); M=$(basename "$DIR"); mkdir -p out
ON_SERVER=${SERVER_CPUS:+taskset -c $SERVER_CPUS}; ON_CLIENT=${CLIENT_CPUS:+taskset -c $CLIENT_CPUS}
$ON_SERVER python -m navi.cli.main serve --model-dir "$DIR" --onnx-use-converter none --input "" --host 127.0.0.1 \
  --port $PORT --rest-api-port 0 --prometheus-port $MPORT > out/overload-$NAME.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for i in $(seq 120); do grep -q "navi ready" out/overload-$NAME.log && break; sleep 1; done
( while kill -0 $SERVER 2>/dev/null; do
    q=$(curl -s 127.0.0.1:$MPORT/metrics | awk '/^:navi:mpsc_channel_size /{print $2}')
    echo "$(grep VmRSS /proc/$SERVER/status | awk '{print $2}') ${q:-0}"; sleep 0.5; done ) > out/overload-$NAME-samples.txt &
BENCH="$ON_CLIENT python -m navi.cli.main bench serve --target navi=127.0.0.1:$PORT --server-pid navi=$SERVER --protocol kserve
  --model $M --workload dense --batch-rows $ROWS --duration $SECONDS_PER_LEVEL --warmup-s 1 --timeout-s 2
  --client ${CLIENT:-h2}"
$BENCH --concurrency 8,32,128 --json out/overload-$NAME-closed.json | grep -E "^\s+navi"
PEAK=$(python -c "import json; print(max(r['requests_per_s'] for r in json.load(open('out/overload-$NAME-closed.json'))['runs']))")
$BENCH --rate $(python -c "print(f'{3 * $PEAK:.0f},{10 * $PEAK:.0f}')") --json out/overload-$NAME-open.json | grep -E "^\s+navi"
sleep 2
$BENCH --concurrency 1 --duration 3 --warmup-s 0 --json out/overload-$NAME-after.json | grep -E "^\s+navi"
python benchmarks/overload_summary.py out/overload-$NAME
