"""`navi bench serve`: load running TF Serving (or KServe V2) compatible servers.

The request pool comes from ``navi.bench.workloads`` (serialized once by
``navi.bench.requests``); the multi-process load generator of
``navi.bench.loadgen`` drives the targets. Runs are interleaved (for each
repeat, each load level, each target) so drift on a shared machine hits
every target alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from navi.bench.loadgen import ClientPool, LoadSpec, RunMeasurement
from navi.bench.machine import machine_info, process_tree_cpu_s
from navi.bench.requests import HTTP_PROTOCOLS, probe_rows
from navi.bench.stats import latency_summary_ms
from navi.bench.workloads import Workload


@dataclass(frozen=True)
class Target:
    """A server to load: a display name and a ``host:port`` address."""

    name: str
    address: str
    #: PID of the server process when known (local), for server CPU per request
    #: (of it and its descendants: a ``--workers`` supervisor and its workers)
    pid: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``host:port`` or ``name=host:port`` (the name defaults to the address)."""
        name, sep, address = text.partition("=")
        if not sep:
            name, address = text, text
        if ":" not in address:
            raise ValueError(f"target {text!r}: expected host:port or name=host:port")
        return cls(name=name.strip(), address=address.strip())


@dataclass
class ServeBenchConfig:
    """Everything one `navi bench serve` invocation runs."""

    targets: list[Target]
    protocol: str = "tfserving"
    concurrencies: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    duration_s: float | None = 10.0
    requests: int | None = None
    warmup_s: float = 2.0
    repeats: int = 1
    client_processes: int | None = None
    #: two per process: a channel is one connection, which a --workers server gives one worker
    channels_per_process: int = 2
    timeout_s: float = 30.0
    #: gRPC client: "grpcio" (its asyncio client) or "h2" (navi.bench.h2grpc, less CPU per call)
    client: str = "grpcio"


def run_record(target: Target, spec: LoadSpec, repeat: int, measurement: RunMeasurement,
                server_cpu_s: float | None) -> dict[str, object]:
    """The JSON record of one run."""
    record: dict[str, object] = {
        "target": target.name,
        "address": target.address,
        "mode": spec.mode,
        "repeat": repeat,
    }
    if spec.mode == "closed":
        record["concurrency"] = int(spec.level)
    else:
        record["rate"] = float(spec.level)
    ok = int(measurement.latencies_s.size)
    record.update(
        {
            "requests": measurement.requests,
            # warm-up included: what the server received
            "total_requests": measurement.total_requests,
            "ok": ok,
            "elapsed_s": measurement.elapsed_s,
            "requests_per_s": measurement.requests_per_s,
            "rows_per_s": measurement.rows_per_s,
            "latency_ms": latency_summary_ms(measurement.latencies_s),
            # how fast the failed (refused) requests were answered, and the client's own lateness
            "failed_latency_ms": latency_summary_ms(measurement.failed_latencies_s),
            "send_lag_ms": latency_summary_ms(measurement.send_lags_s),
            "errors": dict(sorted(measurement.errors.items())),
            "error_details": dict(sorted(measurement.error_details.items())),
            "client_processes": measurement.client_processes,
            "client_cpu_s": measurement.client_cpu_s,
            "client_cpu_s_per_request": (
                measurement.client_cpu_s / measurement.total_requests if measurement.total_requests else math.nan
            ),
            # share of the client processes' time spent on CPU (warm-up included); near 1 means
            # the client, not the server, may have set the pace
            "client_cpu_utilization": (
                measurement.client_cpu_s / ((measurement.elapsed_s + spec.warmup_s) * measurement.client_processes)
                if measurement.elapsed_s > 0 else math.nan
            ),
            "server_cpu_s_per_request": (
                server_cpu_s / measurement.total_requests
                if server_cpu_s is not None and measurement.total_requests
                else None
            ),
        }
    )
    if spec.mode == "open":
        record["scheduled"] = measurement.scheduled
    return record


def check_reachable(target: Target, timeout_s: float = 10.0, protocol: str = "tfserving") -> None:
    """Raise ``RuntimeError`` naming the target when no gRPC (REST protocols: TCP) connection
    opens within ``timeout_s``.

    Without it, a closed loop against a dead address spins through instant
    UNAVAILABLE failures for the whole run.
    """
    if protocol in HTTP_PROTOCOLS:
        import socket

        host, _, port = target.address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError as error:
            raise RuntimeError(f"target {target.name} ({target.address}) accepts no HTTP connection: "
                               f"{error}") from None
        return
    import grpc

    with grpc.insecure_channel(target.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"target {target.name} ({target.address}) accepts no gRPC connection "
                               f"within {timeout_s:.0f} s") from None


def load_specs(config: ServeBenchConfig) -> list[LoadSpec]:
    """The load levels of a run, closed loop first, in the order given."""
    common = dict(warmup_s=config.warmup_s, duration_s=config.duration_s, requests=config.requests,
                  timeout_s=config.timeout_s)
    specs = [LoadSpec("closed", float(c), **common) for c in config.concurrencies]
    specs += [LoadSpec("open", float(r), **common) for r in config.rates]
    if not specs:
        raise ValueError("give at least one --concurrency or --rate")
    return specs


def run_serve_bench(
    config: ServeBenchConfig,
    workload: Workload,
    on_event: Callable[[str, dict], None] | None = None,
    pool: ClientPool | None = None,
) -> dict[str, object]:
    """Run every (repeat, load, target) combination, interleaved; return the result document.

    ``on_event(kind, data)`` receives "start" (before each run, with the run's
    labels and a ``progress`` callable returning completed requests), "poll"
    and "done" (with the run record) for live display. Rows per request that
    the workload does not know are probed from the first target's answer.
    """
    if not config.targets:
        raise ValueError("give at least one --target")
    specs = load_specs(config)
    emit = on_event or (lambda kind, data: None)
    for target in config.targets:
        check_reachable(target, timeout_s=min(10.0, config.timeout_s), protocol=config.protocol)
    if any(r <= 0 for r in workload.rows):
        probed = probe_rows(config.targets[0].address, workload.method, workload.payloads[0], config.protocol,
                            config.timeout_s)
        # payloads built from the same number of records carry similar rows
        workload.rows = [r if r > 0 else probed for r in workload.rows]
    own_pool = pool is None
    pool = pool or ClientPool(config.client_processes, config.channels_per_process, config.client)
    started = datetime.now(timezone.utc)
    runs: list[dict[str, object]] = []
    try:
        workload_id = pool.load_workload(workload.payloads, workload.rows)
        total = config.repeats * len(specs) * len(config.targets)
        for repeat in range(config.repeats):
            for spec in specs:
                for target in config.targets:
                    before = pool.completed()
                    labels = {"index": len(runs), "total": total, "target": target.name, "mode": spec.mode,
                              "level": spec.level, "repeat": repeat,
                              "progress": lambda b=before: pool.completed() - b}
                    emit("start", labels)
                    cpu_before = process_tree_cpu_s(target.pid) if target.pid else None
                    measurement = pool.run(target.address, workload.method, workload_id, spec,
                                           poll=lambda l=labels: emit("poll", l))
                    cpu_after = process_tree_cpu_s(target.pid) if target.pid else None
                    server_cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
                    record = run_record(target, spec, repeat, measurement, server_cpu)
                    runs.append(record)
                    emit("done", record)
    finally:
        if own_pool:
            pool.close()
    return {
        "schema": "navi.bench.serve/1",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "workload": {
            "description": workload.description,
            "distinct_requests": len(workload.payloads),
            "mean_request_bytes": workload.mean_request_bytes,
            "rows_per_request": float(np.mean(workload.rows)) if workload.rows else 0.0,
            "method": workload.method,
        },
        "settings": {
            "protocol": config.protocol,
            "duration_s": config.duration_s,
            "requests": config.requests,
            "warmup_s": config.warmup_s,
            "repeats": config.repeats,
            "client_processes": pool.processes,
            "channels_per_process": config.channels_per_process,
            "client": pool.client,
        },
        "targets": [{"name": t.name, "address": t.address} for t in config.targets],
        "runs": runs,
    }
