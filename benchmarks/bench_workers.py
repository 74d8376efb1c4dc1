#!/usr/bin/env python
"""`navi serve --workers 1,2,...` under the same load, side by side in one run (issue 15).

Starts, at once, one `navi serve --workers W` per W (the demo models home and
dense) and the bare transport server (`navi bench bare-server`, answering the
2-row dense shape), then, repeat after repeat, loads each in turn (targets
interleaved, so the shared machine's drift hits all alike) with:

* ``tiny``: 2-row dense Predict requests to the dense demo model;
* ``small``: 100-candidate BPR requests (about 1.3 MB) to the small home model.

The load generator is ``navi.bench.loadgen``'s client pool: ``--client-processes``
processes with ``--channels-per-process`` connections each (the kernel gives
each connection one worker), speaking gRPC through ``navi.bench.h2grpc``'s raw
HTTP/2 client by default (``--client grpcio`` for grpcio's, which costs about
three times the CPU per call and on a shared machine takes it from the server). On a machine with at least
2 + max(W) cores, the servers and the clients are pinned to separate cores
(``taskset`` for the servers, the pool's processes by affinity); on fewer,
nothing is pinned and the report says so.

Per (phase, target): requests/s and rows/s (min and median over repeats),
p50/p99, the server's CPU per request (supervisor + workers, from /proc); where
the machine's cores went during the runs (server, load generator, everything
else, idle: on a machine the load generator shares, W workers gain only what
the client and the rest leave); the ratio of each W's requests/s to W=1's,
paired by repeat (min and median), and the most the cores allow it ("CPU
bound": the cores other processes left / (server + client CPU per request),
over W=1's requests/s);
navi's CPU per request over the bare server's (tiny); and, per navi target, whether its merged ``:navi:num_requests``
grew by exactly the requests sent and no request failed. ``--kill`` adds
the restart figure: SIGKILL one worker of the largest W under tiny load, N times,
the seconds until it serves again and the requests that failed each time.

``--workers 1,2,2:split`` adds a target started with ``--worker-cpus split`` (each worker on
CPUs of its own), named ``workers=2 split``: pinned against unpinned workers in the same run.

Usage: python benchmarks/bench_workers.py [--workers 1,2[,2:split]] [--duration 5] [--repeats 3]
       [--concurrency 16] [--kill N] [--out out/bench-workers]

Writes OUT/workers.json and OUT/workers.md (the tables) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from navi.bench.loadgen import CLIENTS, ClientPool, LoadSpec  # noqa: E402
from navi.bench.machine import machine_info, process_cpu_s, process_tree, process_tree_cpu_s  # noqa: E402
from navi.bench.requests import fetch_inputs  # noqa: E402
from navi.bench.serve import ServeBenchConfig, Target, run_serve_bench  # noqa: E402
from navi.bench.servers import free_port, launch_server, stop_server  # noqa: E402
from navi.bench.workloads import dense_workload, home_workload  # noqa: E402
from navi.server.workers import FAST_DEATH_S, memory_bytes  # noqa: E402
from navi.settings import WORKER_CPU_MODES, usable_cores  # noqa: E402

PHASES = ("tiny", "small")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return answer.read().decode()


def sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def worker_counts(text: str, workers: int) -> list[float]:
    """Requests each worker received (``:navi:worker_requests``), in worker order."""
    if workers < 2:
        return []
    return [sample(text, ":navi:worker_requests", f'{{worker="{i}"}}') or 0.0 for i in range(workers)]


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine, all cores summed (/proc/stat), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal ...: idle and iowait are the idle time
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / ticks, idle / ticks


def cpu_split(server_s: float, client_s: float, busy_s: float, idle_s: float, wall_s: float) -> dict:
    """Where the machine's cores went over ``wall_s``, in cores (CPU seconds per second): the
    server (all its processes), the load generator, everything else, and idle."""
    return {"server": server_s / wall_s, "client": client_s / wall_s,
            "others": max(0.0, busy_s - server_s - client_s) / wall_s, "idle": idle_s / wall_s}


def cpu_bound_requests_per_s(record: dict, cores: int) -> float | None:
    """Requests/s that the cores the rest of the machine left (``cores`` less this run's
    ``others``) allow at this run's server + client CPU per request: the most this run
    could show, whatever the server."""
    server = record["server_cpu_s_per_request"]
    client = record["client_cpu_s_per_request"]
    if not server or not client or not math.isfinite(client):
        return None
    others = record.get("cpu_cores", {}).get("others", 0.0)
    return max(0.0, cores - others) / (server + client)


class CpuAccounting:
    """``run_serve_bench``'s ``on_event``: attaches ``cpu_cores`` (``cpu_split``) to every run record.

    Sampled inside the measured window (after the pool's start delay and the
    warm-up, before its end), so idle time around the runs is not counted.
    """

    #: ClientPool.run starts its processes this long after the call
    START_DELAY_S = 0.3

    def __init__(self, server_pids: dict[str, int], client_pids: list[int], warmup_s: float, duration_s: float):
        self.server_pids, self.client_pids = server_pids, client_pids
        self.warmup_s, self.duration_s = warmup_s, duration_s
        self._window: list[tuple[float, float, float, float, float]] = []
        self._sampler: threading.Thread | None = None

    def _snapshot(self, target: str) -> tuple[float, float, float, float, float] | None:
        stat = machine_cpu_s()
        server = process_tree_cpu_s(self.server_pids[target]) if target in self.server_pids else None
        client = [process_cpu_s(pid) for pid in self.client_pids]
        if stat is None or server is None or None in client:
            return None
        return time.monotonic(), *stat, server, sum(client)

    def _sample(self, target: str) -> None:
        margin_s = min(0.2, self.duration_s / 10)
        time.sleep(self.START_DELAY_S + self.warmup_s + margin_s)
        first = self._snapshot(target)
        time.sleep(max(0.1, self.duration_s - 2 * margin_s))
        last = self._snapshot(target)
        if first is not None and last is not None:
            self._window = [first, last]

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "start":
            self._window = []
            self._sampler = threading.Thread(target=self._sample, args=(data["target"],), daemon=True)
            self._sampler.start()
        elif kind == "done" and self._sampler is not None:
            self._sampler.join()
            if self._window:
                (t0, busy0, idle0, server0, client0), (t1, busy1, idle1, server1, client1) = self._window
                data["cpu_cores"] = cpu_split(server1 - server0, client1 - client0, busy1 - busy0, idle1 - idle0,
                                              t1 - t0)


def latest_version_dir(model_dir: Path) -> Path:
    return max((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def pin_plan(workers: list[int], client_processes: int) -> dict | None:
    """Cores for each server and for the clients, or None when the machine is too small to separate them."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < max(workers) + client_processes:
        return None
    return {"server": cores[:max(workers)], "client": cores[max(workers):]}


def worker_targets(text: str) -> list[tuple[str, int, str]]:
    """``--workers``: "1,2,2:split" -> [(name, workers, worker CPUs mode)], e.g. ("workers=2 split", 2, "split")."""
    targets = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        count, _, mode = item.partition(":")
        mode = mode or "none"
        if not count.isdigit() or int(count) < 1 or mode not in WORKER_CPU_MODES:
            raise ValueError(f"--workers: {item!r} is not W or W:split")
        targets.append((f"workers={count}" + (f" {mode}" if mode != "none" else ""), int(count), mode))
    return targets


def summarize(runs: list[dict], targets: list[str], workers: dict[str, int], cores: int) -> dict:
    out: dict = {}
    for name in targets:
        rows = [r for r in runs if r["target"] == name]
        rps = [r["requests_per_s"] for r in rows]
        cpu = [r["server_cpu_s_per_request"] * 1e3 for r in rows if r["server_cpu_s_per_request"] is not None]
        out[name] = {
            "requests_per_s": {"min": min(rps), "median": statistics.median(rps)},
            "rows_per_s_median": statistics.median(r["rows_per_s"] for r in rows),
            "p50_ms_median": statistics.median(r["latency_ms"]["p50"] for r in rows),
            "p99_ms_median": statistics.median(r["latency_ms"]["p99"] for r in rows),
            "server_cpu_ms_per_request_median": statistics.median(cpu) if cpu else None,
            "client_cpu_utilization_median": statistics.median(r["client_cpu_utilization"] for r in rows),
            "failed": sum(sum(r["errors"].values()) for r in rows),
        }
        split = [r["cpu_cores"] for r in rows if "cpu_cores" in r]
        if split:
            out[name]["cpu_cores_median"] = {key: statistics.median(s[key] for s in split) for key in split[0]}
    base = [r for r in runs if r["target"] == "workers=1"]
    for name, count in workers.items():
        if count == 1:
            continue
        ratios = [r["requests_per_s"] / b["requests_per_s"]
                  for r in runs if r["target"] == name for b in base if b["repeat"] == r["repeat"]]
        if ratios:
            out[name]["vs_workers_1"] = {"min": min(ratios), "median": statistics.median(ratios)}
        # the most this machine's cores allow W workers over workers=1's measured rate
        bounds = [bound / b["requests_per_s"] for r in runs if r["target"] == name
                  for b in base if b["repeat"] == r["repeat"]
                  for bound in [cpu_bound_requests_per_s(r, cores)] if bound is not None]
        if bounds:
            out[name]["cpu_bound_vs_workers_1_median"] = statistics.median(bounds)
    if "bare" in out:
        for name in workers:
            bare = [r for r in runs if r["target"] == "bare"]
            ratios = [r["server_cpu_s_per_request"] / b["server_cpu_s_per_request"]
                      for r in runs if r["target"] == name for b in bare if b["repeat"] == r["repeat"]]
            out[name]["cpu_vs_bare"] = {"min": min(ratios), "median": statistics.median(ratios)}
    return out


def kill_figure(target: Target, prometheus_port: int, workload, pool: ClientPool, concurrency: int) -> dict:
    """SIGKILL worker 0 two seconds into a closed-loop run: recovery time and failed requests."""
    text = scrape(prometheus_port)
    old_pid = int(sample(text, ":navi:worker_pid", '{worker="0"}'))
    result: dict = {}
    workload_id = pool.load_workload(workload.payloads, workload.rows)
    spec = LoadSpec("closed", float(concurrency), warmup_s=0.5, duration_s=6.0, timeout_s=30.0)
    measured: list = []
    runner = threading.Thread(target=lambda: measured.append(pool.run(target.address, workload.method, workload_id,
                                                                      spec)))
    runner.start()
    time.sleep(2.5)
    in_flight = sample(scrape(prometheus_port), ":navi:worker_requests_in_flight", '{worker="0"}')
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    while time.monotonic() - killed_at < 60:
        text = scrape(prometheus_port)
        pid = sample(text, ":navi:worker_pid", '{worker="0"}')
        if pid not in (None, old_pid) and sample(text, ":navi:worker_ready", '{worker="0"}') == 1:
            result["back_after_s"] = time.monotonic() - killed_at
            break
        time.sleep(0.05)
    runner.join()
    measurement = measured[0]
    result.update({"requests": measurement.total_requests, "failed": sum(measurement.errors.values()),
                   "in_flight_on_worker_before_kill": in_flight, "concurrency": concurrency})
    return result


def markdown(document: dict) -> str:
    """The RESULTS.md tables of one run."""
    machine = document["machine"]
    lines = [f"`{document['command']}`, {document['started_at'][:10]}, {machine['cores']} cores "
             f"({machine['cpu_model']}), " + ("pinned" if document.get("pinned") else "nothing pinned") + ".", ""]
    memory = document.get("memory_at_start", {})
    if memory:
        lines += ["| server | processes | RSS MiB | PSS MiB |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {m['processes']} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} |" for name, m in memory.items()]
        lines.append("")
    for phase, data in document["phases"].items():
        lines += [f"{phase}: {data['workload']['description']}, {data['workload']['mean_request_bytes'] / 1024:,.1f} KiB "
                  "per request", "",
                  "| server | req/s median (min) | x workers=1 median (min) | CPU bound x | p50 ms | p99 ms | "
                  "server CPU ms/req | CPU / bare | cores: server / client / others / idle | "
                  "counted / sent, failed | busiest worker |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, row in data["summary"].items():
            ratio = row.get("vs_workers_1")
            bare = row.get("cpu_vs_bare")
            counted = (f"{row['merged_num_requests']:.0f} / {row['requests_sent']}, {row['failed']}"
                       if "requests_sent" in row else f"-, {row['failed']}")
            cpu = row["server_cpu_ms_per_request_median"]
            bound = row.get("cpu_bound_vs_workers_1_median")
            cores = row.get("cpu_cores_median")
            lines.append(
                f"| {name} | {row['requests_per_s']['median']:,.0f} ({row['requests_per_s']['min']:,.0f}) | "
                + (f"{ratio['median']:.2f}x ({ratio['min']:.2f}x)" if ratio else "-") + " | "
                + (f"{bound:.2f}x" if bound else "-") + " | "
                f"{row['p50_ms_median']:.2f} | {row['p99_ms_median']:.2f} | "
                + (f"{cpu:.3f}" if cpu is not None else "-") + " | "
                + (f"{bare['median']:.2f}x" if bare else "-") + " | "
                + (" / ".join(f"{cores[key]:.2f}" for key in ("server", "client", "others", "idle"))
                   if cores else "-") + " | "
                f"{counted} | "
                + (f"{row['busiest_worker_share']:.0%}" if "busiest_worker_share" in row else "-") + " |")
        lines.append("")
    lines += ["CPU bound x: the cores other processes left, over (server + client CPU per request) of "
              "that run, over workers=1's requests/s of the same repeat: the most the cores allowed. Cores: "
              "CPU seconds per second inside the measured windows (/proc); others = the rest of the "
              "machine.", ""]
    kill = document.get("kill")
    if kill:
        lines += [f"SIGKILL worker 0 under load (tcp_migrate_req={kill['tcp_migrate_req']}): "
                  + "; ".join(f"back after {k.get('back_after_s', float('nan')):.2f} s, {k['failed']} of "
                              f"{k['requests']} failed" for k in kill["kills"]), ""]
    return "\n".join(lines)


def tree_memory(root_pid: int, worker_pids: list[int]) -> dict:
    """RSS/PSS/USS (MiB) of every process of a server, per worker and in all (PSS sums to the host's share)."""
    members = process_tree(root_pid)
    per_pid = {pid: memory_bytes(pid) for pid in members}
    mib = {key: sum(m.get(key, 0) for m in per_pid.values()) / 2**20 for key in ("rss", "pss", "uss")}
    workers = [{key: per_pid.get(pid, {}).get(key, 0) / 2**20 for key in ("rss", "pss", "uss")}
               for pid in worker_pids]
    return {"processes": len(members), "total": mib, "workers": workers}


def sweep_requests(table_rows: int, rows_per_request: int = 512) -> list:
    """PredictRequests whose ids cover every row of the table once (to touch every weight page);
    small enough that the sweep leaves little else behind in the workers' arenas."""
    from navi import codec
    from navi._proto.tensorflow_serving.apis import predict_pb2
    from navi.bench.embedding_model import IDS_INPUT, IDS_PER_ROW

    ids = np.arange(-(-table_rows // IDS_PER_ROW) * IDS_PER_ROW, dtype=np.int64) % table_rows
    ids = ids.reshape(-1, IDS_PER_ROW)
    requests = []
    for start in range(0, len(ids), rows_per_request):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ranker"
        codec.ndarray_to_tensor_proto(ids[start:start + rows_per_request], request.inputs[IDS_INPUT])
        requests.append(request)
    return requests


def touch_every_worker(address: str, prometheus_port: int, workers: int, requests: list) -> None:
    """Send the sweep on fresh connections until every worker answered it whole."""
    import grpc

    from navi._proto.tensorflow_serving.apis import prediction_service_pb2_grpc

    for _ in range(8 * workers):
        text = scrape(prometheus_port)
        counts = ([sample(text, ":navi:worker_requests", f'{{worker="{i}"}}') or 0 for i in range(workers)]
                  if workers > 1 else [sample(text, ":navi:num_requests") or 0])
        if min(counts) >= len(requests):
            return
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                     ("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for request in requests:
                stub.Predict(request, timeout=120)
    raise RuntimeError("the kernel never gave every worker a sweep connection")


def shared_weights_main(args, counts: list[int]) -> int:
    """Memory of `--workers W` with and without --share-weights on a model of ``args.shared_weights_mb``."""
    from navi.bench.embedding_model import write_embedding_model

    dim = 64
    table_rows = args.shared_weights_mb * 2**20 // (dim * 4)
    model_dir = args.out / "ranker"
    model_file = model_dir / "1" / "model.onnx"
    if not model_file.is_file():
        log(f"writing a {args.shared_weights_mb} MiB embedding model to {model_file}")
        write_embedding_model(model_file, rows=table_rows, dim=dim)
    requests = sweep_requests(table_rows)
    configurations = [(1, False)] + [(count, share) for count in counts if count > 1 for share in (False, True)]
    rows = []
    for count, share in configurations:
        port, prometheus_port = free_port(), free_port()
        command = [sys.executable, "-m", "navi.cli.main", "serve", "--workers", str(count), "--host", "127.0.0.1",
                   "--port", str(port), "--prometheus-port", str(prometheus_port), "--rest-api-port", "0",
                   "--model-dir", str(model_dir), "--input", "", "--output", "",
                   "--share-weights", "true" if share else "false"]
        name = f"workers={count}" + (", shared" if share else "")
        log(f"starting {name}")
        started = time.monotonic()
        process = launch_server(command, f"127.0.0.1:{port}", log_path=args.out / f"navi-mem-{count}-{share}.log")
        try:
            ready_s = time.monotonic() - started
            text = scrape(prometheus_port)
            worker_pids = ([int(sample(text, ":navi:worker_pid", f'{{worker="{i}"}}')) for i in range(count)]
                           if count > 1 else [process.pid])
            at_start = tree_memory(process.pid, worker_pids)
            touch_every_worker(f"127.0.0.1:{port}", prometheus_port, count, requests)
            touched = tree_memory(process.pid, worker_pids)
        finally:
            stop_server(process)
        rows.append({"server": name, "workers": count, "shared": share, "ready_s": ready_s,
                     "at_start": at_start, "every_row_touched": touched})
        log(f"  {name}: ready in {ready_s:.1f} s; PSS in all {at_start['total']['pss']:.0f} MiB at start, "
            f"{touched['total']['pss']:.0f} MiB with every row touched; per worker USS "
            + ", ".join(f"{w['uss']:.0f}" for w in touched["workers"]) + " MiB")
    document = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": machine_info(),
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model_weight_mib": args.shared_weights_mb, "rows": rows}
    lines = [f"`{document['command']}`, {document['started_at'][:10]}: a {args.shared_weights_mb} MiB embedding "
             "model (`navi.bench.embedding_model`), every table row looked up on every worker before the second "
             "figure.", "",
             "| server | processes | PSS in all, at start / every row touched (MiB) | per worker RSS / PSS / USS, "
             "touched (MiB) | ready after (s) |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        start, touched = row["at_start"], row["every_row_touched"]
        per_worker = "; ".join(f"{w['rss']:.0f} / {w['pss']:.0f} / {w['uss']:.0f}" for w in touched["workers"])
        lines.append(f"| {row['server']} | {touched['processes']} | {start['total']['pss']:.0f} / "
                     f"{touched['total']['pss']:.0f} | {per_worker} | {row['ready_s']:.1f} |")
    (args.out / "shared_weights.json").write_text(json.dumps(document, indent=1, default=str))
    (args.out / "shared_weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _migrate_req() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    except OSError:
        return "absent"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop requests in flight")
    parser.add_argument("--client-processes", type=int, default=2)
    # A channel is one connection and the kernel hashes each to a worker: with 4
    # connections all land on one of 2 workers 1 time in 8 (and 3:1 half the time);
    # with 16, one worker still got 69% of the requests in a run (10:6 is typical);
    # 32 keep the busiest near 55-60%
    parser.add_argument("--channels-per-process", type=int, default=16)
    # the raw HTTP/2 client costs about a third of grpcio's CPU per call, which on a
    # machine it shares is what the server's second worker can use (RESULTS.md, "Workers")
    parser.add_argument("--client", choices=CLIENTS, default="h2", help="gRPC load generator")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--no-bare", action="store_true", help="leave out the bare transport server")
    parser.add_argument("--kill", type=int, default=0, metavar="N",
                        help="add the SIGKILL-a-worker figure: N kills, each in its own run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `navi serve` argument")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-workers")
    parser.add_argument("--shared-weights-mb", type=int, default=0, metavar="MIB",
                        help="instead of the load phases: memory of each --workers count with and without "
                             "--share-weights, serving an embedding model of MIB MiB of weights")
    args = parser.parse_args(argv)
    try:
        specs = worker_targets(args.workers)
    except ValueError as error:
        parser.error(str(error))
    counts = sorted({count for _, count, _ in specs})
    if args.shared_weights_mb:
        args.out.mkdir(parents=True, exist_ok=True)
        return shared_weights_main(args, counts)
    if not any(name == "workers=1" for name, _, _ in specs):
        parser.error("--workers: the ratios to workers=1 need a plain 1 among them")
    phases = [p for p in args.phases.split(",") if p]
    args.out.mkdir(parents=True, exist_ok=True)
    models = REPO / "models"
    plan = pin_plan(counts, args.client_processes)
    log(f"{usable_cores()} usable cores: " + (f"servers on {plan['server']}, clients on {plan['client']}" if plan
                                             else "too few to pin servers and clients apart: nothing pinned"))

    processes, targets, metrics_ports, workers = [], [], {}, {}
    try:
        for name, count, mode in specs:
            port, prometheus_port = free_port(), free_port()
            command = [sys.executable, "-m", "navi.cli.main", "serve", "--workers", str(count), "--host", "127.0.0.1",
                       "--port", str(port), "--prometheus-port", str(prometheus_port), "--rest-api-port", "0",
                       "--model-dir", str(models / "home"), "--model-dir", str(models / "dense"),
                       "--input", "examples", "--input", "", "--output", "", "--worker-cpus", mode,
                       *args.server_arg]
            if plan:
                command = ["taskset", "-c", ",".join(map(str, plan["server"][:count]))] + command
            log(f"starting {name}")
            process = launch_server(command, f"127.0.0.1:{port}",
                                    log_path=args.out / f"navi-{name.split('=')[1].replace(' ', '-')}.log")
            processes.append(process)
            targets.append(Target(name, f"127.0.0.1:{port}", process.pid))
            metrics_ports[name], workers[name] = prometheus_port, count
        if not args.no_bare:
            port = free_port()
            command = [sys.executable, "-m", "navi.cli.main", "bench", "bare-server", "--port", str(port),
                       "--rows", "2"]
            if plan:
                command = ["taskset", "-c", str(plan["server"][0])] + command
            process = launch_server(command, f"127.0.0.1:{port}", health_service=None,
                                    log_path=args.out / "bare.log")
            processes.append(process)
            targets.insert(0, Target("bare", f"127.0.0.1:{port}", process.pid))

        memory = {}
        for target in targets:
            members = {member: memory_bytes(member) for member in process_tree(target.pid)}
            memory[target.name] = {
                "processes": len(members),
                "rss_mib": sum(m.get("rss", 0) for m in members.values()) / 2**20,
                "pss_mib": sum(m.get("pss", 0) for m in members.values()) / 2**20,
            }
            log(f"  {target.name}: {memory[target.name]['processes']} processes, RSS "
                f"{memory[target.name]['rss_mib']:.0f} MiB, PSS {memory[target.name]['pss_mib']:.0f} MiB in all")
        document: dict = {"memory_at_start": memory, "schema": "navi.bench.workers/1", "machine": machine_info(),
                          "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                          "pinned": plan, "phases": {}}
        with ClientPool(args.client_processes, args.channels_per_process, args.client) as pool:
            if plan:
                for worker in pool._workers:
                    os.sched_setaffinity(worker.pid, plan["client"])
            first_navi = targets[1] if not args.no_bare else targets[0]
            for phase in phases:
                if phase == "tiny":
                    inputs = fetch_inputs(first_navi.address, "dense", "tfserving")
                    workload = dense_workload("tfserving", "dense", inputs, batch_rows=2)
                    phase_targets = targets
                else:
                    workload = home_workload("tfserving", "home", candidates=100,
                                             spec_dir=latest_version_dir(models / "home"))
                    phase_targets = [t for t in targets if t.name != "bare"]
                counted_before = {n: sample(scrape(p), ":navi:num_requests") for n, p in metrics_ports.items()}
                spread_before = {n: worker_counts(scrape(p), workers[n]) for n, p in metrics_ports.items()}
                log(f"phase {phase}: {workload.description}")
                config = ServeBenchConfig(targets=phase_targets, concurrencies=[args.concurrency],
                                          duration_s=args.duration, warmup_s=args.warmup_s, repeats=args.repeats,
                                          client_processes=args.client_processes,
                                          channels_per_process=args.channels_per_process,
                                          client=args.client)
                result = run_serve_bench(config, workload, on_event=CpuAccounting(
                    {t.name: t.pid for t in phase_targets}, [w.pid for w in pool._workers], args.warmup_s,
                    args.duration), pool=pool)
                runs = result["runs"]
                summary = summarize(runs, [t.name for t in phase_targets], workers, os.cpu_count() or 1)
                for name, port in metrics_ports.items():
                    sent = sum(r["total_requests"] for r in runs if r["target"] == name)
                    text = scrape(port)
                    counted = sample(text, ":navi:num_requests") - counted_before[name]
                    summary[name]["merged_num_requests"] = counted
                    summary[name]["requests_sent"] = sent
                    summary[name]["merged_failed"] = sample(text, ":navi:num_requests_failed")
                    if workers[name] > 1:
                        per_worker = [a - b for a, b in zip(worker_counts(text, workers[name]), spread_before[name])]
                        summary[name]["busiest_worker_share"] = max(per_worker) / max(1.0, sum(per_worker))
                document["phases"][phase] = {"workload": result["workload"], "summary": summary, "runs": runs}
                for name, row in summary.items():
                    log(f"  {name:10} {row['requests_per_s']['median']:8,.0f} req/s (min {row['requests_per_s']['min']:,.0f})"
                        f"  p50 {row['p50_ms_median']:.2f} ms  p99 {row['p99_ms_median']:.2f} ms"
                        f"  server CPU {row['server_cpu_ms_per_request_median'] or float('nan'):.3f} ms/req"
                        + ("  cores server/client/others/idle " + "/".join(
                            f"{row['cpu_cores_median'][k]:.2f}" for k in ("server", "client", "others", "idle"))
                           if "cpu_cores_median" in row else "")
                        + (f"  CPU bound x{row['cpu_bound_vs_workers_1_median']:.2f}"
                           if "cpu_bound_vs_workers_1_median" in row else "")
                        + (f"  busiest worker {row['busiest_worker_share']:.0%}" if "busiest_worker_share" in row else "")
                        + (f"  x{row['vs_workers_1']['median']:.2f} of workers=1 (min {row['vs_workers_1']['min']:.2f})"
                           if "vs_workers_1" in row else "")
                        + (f"  CPU/bare {row['cpu_vs_bare']['median']:.2f}" if "cpu_vs_bare" in row else "")
                        + (f"  counted {row['merged_num_requests']:.0f} of {row['requests_sent']} sent, "
                           f"{row['failed']} failed" if "requests_sent" in row else ""))
            if args.kill:
                name, _, _ = max(specs, key=lambda spec: spec[1])
                target = next(t for t in targets if t.name == name)
                inputs = fetch_inputs(target.address, "dense", "tfserving")
                workload = dense_workload("tfserving", "dense", inputs, batch_rows=2)
                log(f"kill: SIGKILL worker 0 of {name} under {args.concurrency} requests in flight, "
                    f"{args.kill} times")
                kills = []
                for _ in range(args.kill):
                    kills.append(kill_figure(target, metrics_ports[name], workload, pool, args.concurrency))
                    # a worker that dies young is restarted after a delay: let this one age
                    time.sleep(FAST_DEATH_S)
                document["kill"] = {"kills": kills, "tcp_migrate_req": _migrate_req()}
                for kill in kills:
                    log(f"  back after {kill.get('back_after_s', float('nan')):.2f} s, {kill['failed']} of "
                        f"{kill['requests']} requests failed")
    finally:
        for process in processes:
            stop_server(process)
    document["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (args.out / "workers.json").write_text(json.dumps(document, indent=1, default=str))
    (args.out / "workers.md").write_text(markdown(document))
    print(markdown(document))
    log(f"wrote {args.out / 'workers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
