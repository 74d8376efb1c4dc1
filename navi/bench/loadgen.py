"""A multi-process gRPC load generator that sends pre-serialized request bytes.

Design, so the client is never the bottleneck and its numbers stay honest:

* Requests are serialized once by the parent and sent as raw bytes
  (``unary_unary`` with no serializer), so a request costs the client only the
  gRPC call itself. Responses are not parsed either.
* Work is spread over several worker processes (``ClientPool``), each running
  one asyncio loop over ``grpc.aio`` channels or, with ``client="h2"``, raw
  HTTP/2 connections (``navi.bench.h2grpc``: a third of the CPU per call);
  the parent only orchestrates.
* Closed loop: ``concurrency`` callers split over the processes, each sending
  its next request when the previous answer arrives.
* Open loop: Poisson arrivals at ``rate`` requests/s split over the processes;
  latency counts from the *scheduled* arrival time, so a slow server (or a
  busy client) cannot hide its queueing (no coordinated omission).
* A warm-up period is run and excluded; then the run is bounded by a duration
  or a request count. Each process reports its CPU seconds so the reader can
  tell whether the client was saturated.

The engine (``drive``) takes the send function, clock and sleep as arguments,
so tests run it against an in-process fake target on a virtual clock.
"""
from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal, Sequence

import numpy as np

from navi import optional
from navi.bench import CLIENTS

#: Error key used when an open-loop arrival could not be sent because the
#: client already had ``max_in_flight`` requests outstanding.
CLIENT_OVERLOAD = "CLIENT_OVERLOAD"

#: gRPC channel options: large messages both ways (1.5 MB BPR requests and
#: more) and one private connection per channel so processes never share.
CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.max_send_message_length", 1 << 30),
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.use_local_subchannel_pool", 1),
)

#: ``send(payload_index)`` -> None on success, else the failure's status-code name
SendFn = Callable[[int], Awaitable["str | None"]]


@dataclass(frozen=True)
class LoadSpec:
    """What one run asks of the client.

    ``mode`` is "closed" (``level`` = concurrent callers) or "open" (``level``
    = requests per second). ``duration_s`` and/or ``requests`` bound the
    measured part (whichever ends it first), which follows ``warmup_s``
    seconds of warm-up.
    """

    mode: Literal["closed", "open"]
    level: float
    warmup_s: float = 1.0
    duration_s: float | None = None
    requests: int | None = None
    timeout_s: float = 30.0
    max_in_flight: int = 8192

    def __post_init__(self):
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', got {self.mode!r}")
        if self.level <= 0:
            raise ValueError(f"load level must be positive, got {self.level}")
        if self.duration_s is None and self.requests is None:
            raise ValueError("give duration_s or requests (or both)")


@dataclass
class WorkerResult:
    """What one worker (or the engine) measured during one run."""

    latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: latencies of the measured requests that failed (refusals: how fast they came)
    failed_latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: measured requests: how late the client sent each, after its scheduled time
    #: (open loop: the client's own backlog, which the latencies include)
    send_lags_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: gRPC failures by "CODE: details" (digits as #), warm-up included
    error_details: dict[str, int] = field(default_factory=dict)
    measured_rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: monotonic time the measured window opened (end of warm-up)
    window_start: float = 0.0
    #: monotonic time the last measured request finished
    window_end: float = 0.0
    #: all requests sent, warm-up included
    total_requests: int = 0
    #: open loop: arrivals the scheduler produced in the measured window
    scheduled: int = 0
    cpu_s: float = 0.0

    @property
    def measured(self) -> int:
        """Requests in the measured window, failed ones included."""
        return int(self.latencies_s.size) + sum(self.errors.values())


def split_evenly(total: float, parts: int, integral: bool) -> list[float]:
    """Split a load level (or request count) over ``parts`` workers.

    Integral splits hand the remainder to the first workers; parts may be 0.
    """
    if integral:
        base, extra = divmod(int(total), parts)
        return [float(base + (1 if i < extra else 0)) for i in range(parts)]
    return [total / parts] * parts


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (seconds from 0) of a Poisson process over ``duration_s``."""
    expected = rate_per_s * duration_s
    # draw enough gaps in one go (mean + 6 sigma), then top up if unlucky
    n = int(expected + 6 * math.sqrt(expected) + 16)
    offsets = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))
    while offsets[-1] < duration_s:
        more = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n)) + offsets[-1]
        offsets = np.concatenate([offsets, more])
    return offsets[offsets < duration_s]


class _Recorder:
    """Collects measured latencies and errors of one engine run."""

    def __init__(self, rows: Sequence[int], request_budget: int | None):
        self.rows = rows
        self.latencies: list[float] = []
        self.failed_latencies: list[float] = []
        self.send_lags: list[float] = []
        self.errors: dict[str, int] = {}
        self.measured_rows = 0
        self.window_end = 0.0
        self.total = 0
        self.budget = request_budget
        self.claimed = 0

    def claim(self) -> bool:
        """Reserve one measured request; False once a request budget is used up."""
        if self.budget is not None and self.claimed >= self.budget:
            return False
        self.claimed += 1
        return True

    def record(self, index: int, start: float, sent: float, end: float, status: str | None) -> None:
        self.send_lags.append(max(0.0, sent - start))
        if status is None:
            self.latencies.append(end - start)
            self.measured_rows += self.rows[index]
        else:
            self.failed_latencies.append(end - start)
            self.errors[status] = self.errors.get(status, 0) + 1
        self.window_end = max(self.window_end, end)


async def drive(
    send: SendFn,
    rows: Sequence[int],
    spec: LoadSpec,
    share: float,
    request_budget: int | None,
    start_at: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    seed: int = 0,
    first_index: int = 0,
    on_complete: Callable[[], None] | None = None,
) -> WorkerResult:
    """Run this worker's share of one load and return what it measured.

    ``send`` gets an index into the payload pool (``rows[i]`` is that
    payload's row count) and returns None on success or the status-code name
    of the failure. ``share`` is this worker's
    concurrency (closed) or rate (open); ``request_budget`` its measured
    request count when the run is request-bounded. Warm-up starts at
    ``start_at`` (a ``clock`` time) and is never measured.
    """
    pool_size = len(rows)
    recorder = _Recorder(rows, request_budget)
    result = WorkerResult()
    now = clock()
    if start_at > now:
        await sleep(start_at - now)
    measure_start = start_at + spec.warmup_s
    measure_end = math.inf if spec.duration_s is None else measure_start + spec.duration_s
    result.window_start = measure_start
    counter = [first_index]

    def next_index() -> int:
        index = counter[0] % pool_size
        counter[0] += 1
        return index

    def done() -> bool:
        if clock() >= measure_end:
            return True
        return request_budget is not None and recorder.claimed >= request_budget

    async def one_call(index: int, scheduled: float, measured: bool) -> None:
        sent = clock()
        status = await send(index)
        end = clock()
        recorder.total += 1
        if measured:
            recorder.record(index, scheduled, sent, end, status)
        if on_complete is not None:
            on_complete()

    if share <= 0:
        return result

    if spec.mode == "closed":

        async def caller() -> None:
            while not done():
                start = clock()
                measured = start >= measure_start and recorder.claim()
                if start >= measure_start and not measured:
                    break  # request budget used up
                await one_call(next_index(), start, measured)

        await asyncio.gather(*(caller() for _ in range(int(share))))
    else:
        rng = np.random.default_rng(seed)
        in_flight: set[asyncio.Task] = set()
        gap_mean = 1.0 / share
        scheduled_at = start_at
        while True:
            scheduled_at += float(rng.exponential(gap_mean))
            if scheduled_at >= measure_end:
                break
            measured = scheduled_at >= measure_start
            if measured and not recorder.claim():
                break
            if measured:
                result.scheduled += 1
            delay = scheduled_at - clock()
            if delay > 0:
                await sleep(delay)
            else:
                # behind schedule: still let answers be processed, or nothing would complete
                await asyncio.sleep(0)
            if len(in_flight) >= spec.max_in_flight:
                # the client cannot keep up with this rate: count it, never hide it
                if measured:
                    recorder.errors[CLIENT_OVERLOAD] = recorder.errors.get(CLIENT_OVERLOAD, 0) + 1
                continue
            task = asyncio.ensure_future(one_call(next_index(), scheduled_at, measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*list(in_flight))

    result.latencies_s = np.asarray(recorder.latencies, dtype=np.float64)
    result.failed_latencies_s = np.asarray(recorder.failed_latencies, dtype=np.float64)
    result.send_lags_s = np.asarray(recorder.send_lags, dtype=np.float64)
    result.measured_rows = recorder.measured_rows
    result.errors = recorder.errors
    # Closed loop, duration-bounded: the window ends at its deadline. Requests
    # started inside it and answered after it still count, so (steady state)
    # count / duration is the rate; stretching the window to the last answer
    # would understate it by one latency. Open loop: the window ends with the
    # last answer, because an overloaded server answers the offered arrivals
    # late, and count / duration would report the offered rate, not its own.
    # Request-bounded: the window ends with the last answer.
    last_answer = recorder.window_end or clock()
    result.window_end = min(last_answer, measure_end) if spec.mode == "closed" else last_answer
    result.total_requests = recorder.total
    return result


# --------------------------------------------------------------------------- #
# worker processes


@dataclass(frozen=True)
class _Job:
    address: str
    method: str
    workload_id: int
    spec: LoadSpec
    share: float
    request_budget: int | None
    start_at: float
    seed: int
    channels: int
    client: str = "grpcio"


def _make_grpc_sender(address: str, method: str, payloads: Sequence[bytes], timeout_s: float, channels: int):
    """A ``send(index)`` coroutine function over ``channels`` grpc.aio channels."""
    import grpc

    opened = [grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS)) for _ in range(max(1, channels))]
    # no serializer on either side: raw bytes out, raw bytes back, nothing parsed
    callables = [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in opened]
    turn = [0]
    details: dict[str, int] = {}

    async def send(index: int) -> str | None:
        call = callables[turn[0] % len(callables)]
        turn[0] += 1
        try:
            await call(payloads[index], timeout=timeout_s)
            return None
        except grpc.aio.AioRpcError as error:
            _count_detail(details, error.code().name, error.details())
            return error.code().name
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a transport-level failure still counts as an error
            return type(error).__name__

    async def close() -> None:
        for channel in opened:
            await channel.close()

    send.error_details = details
    return send, close


def _count_detail(details: dict[str, int], code: str, text: str | None) -> None:
    """Count a failure under "CODE: details", digits dropped so that one rule is one key."""
    key = f"{code}: " + "".join("#" if c.isdigit() else c for c in (text or ""))[:120]
    details[key] = details.get(key, 0) + 1


def _make_h2_sender(address: str, method: str, payloads: Sequence[bytes], timeout_s: float, connections: int):
    """A ``send(index)`` coroutine function over ``connections`` raw HTTP/2 connections.

    ``navi.bench.h2grpc``'s client: the same calls as ``_make_grpc_sender`` at a
    fraction of its CPU (benchmarks/RESULTS.md, "Workers"). A connection that
    closes (a worker killed, a GOAWAY) is reopened by the next call on its slot.
    """
    from navi.bench.h2grpc import H2GrpcConnection, grpc_body

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    bodies = [grpc_body(payload) for payload in payloads]
    slots: list = [None] * max(1, connections)
    opening: dict[int, asyncio.Future] = {}
    turn = [0]
    details: dict[str, int] = {}

    async def reopen(slot: int):
        if slot not in opening:
            opening[slot] = asyncio.ensure_future(H2GrpcConnection.open(host, int(port), timeout_s))
        try:
            slots[slot] = await opening[slot]
        finally:
            opening.pop(slot, None)
        return slots[slot]

    async def send(index: int) -> str | None:
        slot = turn[0] % len(slots)
        turn[0] += 1
        try:
            connection = slots[slot]
            if connection is None or connection.closed or connection.draining:
                connection = await reopen(slot)
            result = await connection.call(method, bodies[index])
        except asyncio.CancelledError:
            raise
        except OSError as error:  # refused or reset while connecting: what grpcio calls UNAVAILABLE
            _count_detail(details, "UNAVAILABLE", str(error))
            return "UNAVAILABLE"
        if result.code is None:
            return None
        _count_detail(details, result.code, result.details)
        return result.code

    async def close() -> None:
        for connection in slots:
            if connection is not None:
                connection.close()

    send.error_details = details
    return send, close


def _make_http_sender(address: str, path: str, payloads: Sequence[bytes], timeout_s: float, connections: int):
    """A ``send(index)`` coroutine function POSTing ``HTTP_PREFIX``ed payloads over kept-alive connections.

    A minimal HTTP/1.1 client on asyncio streams (one connection per caller in
    flight, reused): measured, aiohttp's client cost more CPU per 2.5 MB
    request than the server, so it set the pace (benchmarks/RESULTS.md).
    """
    from navi.bench.requests import HTTP_PREFIX

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    # per payload once: the request's bytes, head and body
    prepared = []
    for payload in payloads:
        (header_length,) = HTTP_PREFIX.unpack_from(payload)
        body = payload[HTTP_PREFIX.size:]
        head = (f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {len(body)}\r\n"
                + ("Content-Type: application/octet-stream\r\n"
                   f"Inference-Header-Content-Length: {header_length}\r\n" if header_length
                   else "Content-Type: application/json\r\n") + "\r\n").encode()
        prepared.append(head + body)
    idle: list = []

    async def exchange(request: bytes) -> int:
        if idle:
            reader, writer = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        try:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            length, keep = 0, True
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    keep = False
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            idle.append((reader, writer))
        else:
            writer.close()
        return int(status_line.split()[1])

    async def send(index: int) -> str | None:
        try:
            status = await asyncio.wait_for(exchange(prepared[index]), timeout_s)
            return None if status == 200 else f"HTTP_{status}"
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            return "DEADLINE_EXCEEDED"
        except Exception as error:  # a transport-level failure still counts as an error
            return type(error).__name__

    async def close() -> None:
        while idle:
            idle.pop()[1].close()

    return send, close


def _worker_main(worker_index: int, jobs: mp.Queue, results: mp.Queue, progress) -> None:
    """Worker process loop: cache workloads, run jobs, send back results."""
    workloads: dict[int, tuple[list[bytes], list[int]]] = {}
    while True:
        message = jobs.get()
        if message is None:
            return
        kind = message[0]
        if kind == "workload":
            _, workload_id, payloads, rows = message
            workloads[workload_id] = (payloads, rows)
            results.put(("ack", worker_index, workload_id))
            continue
        job: _Job = message[1]
        payloads, rows = workloads[job.workload_id]
        try:
            result = asyncio.run(_run_job(job, payloads, rows, worker_index, progress))
            results.put(("result", worker_index, result))
        except Exception as error:  # report, so the parent never waits forever
            results.put(("error", worker_index, f"{type(error).__name__}: {error}"))


async def _run_job(job: _Job, payloads, rows, worker_index: int, progress) -> WorkerResult:
    from navi.bench.requests import is_http_method

    if is_http_method(job.method):
        make = _make_http_sender
    else:
        make = _make_h2_sender if job.client == "h2" else _make_grpc_sender
    send, close = make(job.address, job.method, payloads, job.spec.timeout_s, job.channels)

    def on_complete() -> None:
        progress[worker_index] += 1

    cpu_before = time.process_time()
    try:
        result = await drive(
            send,
            rows,
            job.spec,
            job.share,
            job.request_budget,
            job.start_at,
            seed=job.seed,
            # workers start at different places in the pool so the server sees a mix
            first_index=worker_index * 7919,
            on_complete=on_complete,
        )
    finally:
        await close()
    result.cpu_s = time.process_time() - cpu_before
    result.error_details = dict(getattr(send, "error_details", {}))
    return result


@dataclass
class RunMeasurement:
    """One run aggregated over all workers."""

    requests: int
    rows: int
    latencies_s: np.ndarray
    errors: dict[str, int]
    elapsed_s: float
    total_requests: int
    scheduled: int
    client_cpu_s: float
    client_processes: int
    #: latencies of the failed measured requests; how late the client sent each measured request
    failed_latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    send_lags_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error_details: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        """Successful measured requests per second."""
        return self.latencies_s.size / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def rows_per_s(self) -> float:
        """Rows of successful measured requests per second."""
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else math.nan


def merge_results(results: Sequence[WorkerResult], processes: int) -> RunMeasurement:
    """Aggregate worker results of one run into one measurement."""
    latencies = np.concatenate([r.latencies_s for r in results]) if results else np.zeros(0)
    failed = np.concatenate([r.failed_latencies_s for r in results]) if results else np.zeros(0)
    lags = np.concatenate([r.send_lags_s for r in results]) if results else np.zeros(0)
    details: dict[str, int] = {}
    for r in results:
        for key, count in r.error_details.items():
            details[key] = details.get(key, 0) + count
    errors: dict[str, int] = {}
    for r in results:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    active = [r for r in results if r.total_requests or r.errors]
    start = min((r.window_start for r in active), default=0.0)
    end = max((r.window_end for r in active), default=0.0)
    return RunMeasurement(
        requests=int(latencies.size) + sum(errors.values()),
        rows=sum(r.measured_rows for r in results),
        latencies_s=latencies,
        errors=errors,
        elapsed_s=max(0.0, end - start),
        total_requests=sum(r.total_requests for r in results),
        scheduled=sum(r.scheduled for r in results),
        client_cpu_s=sum(r.cpu_s for r in results),
        client_processes=processes,
        failed_latencies_s=failed,
        send_lags_s=lags,
        error_details=details,
    )


def default_client_processes() -> int:
    """Worker processes used when the user does not say: 2, or the CPU count if lower."""
    return max(1, min(2, os.cpu_count() or 1))


class ClientPool:
    """Long-lived worker processes that run load jobs against gRPC targets.

    The processes are spawned (not forked: gRPC does not survive a fork of a
    process that already used it) once and reused for every run.
    """

    def __init__(self, processes: int | None = None, channels_per_process: int = 2, client: str = "grpcio"):
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
        if client == "h2" and "hpack" in optional.missing_modules("bench"):
            raise RuntimeError(optional.missing_message("bench", "the h2 load generator", ["hpack"]))
        self.processes = processes or default_client_processes()
        self.channels_per_process = channels_per_process
        self.client = client
        ctx = mp.get_context("spawn")
        self._jobs = [ctx.Queue() for _ in range(self.processes)]
        self._results = ctx.Queue()
        self.progress = ctx.RawArray("q", self.processes)
        self._workers = [
            ctx.Process(target=_worker_main, args=(i, self._jobs[i], self._results, self.progress), daemon=True)
            for i in range(self.processes)
        ]
        for worker in self._workers:
            worker.start()
        self._next_workload = 0
        self._seed = 0

    def load_workload(self, payloads: Sequence[bytes], rows: Sequence[int]) -> int:
        """Ship a payload pool to every worker once; returns its id for ``run``."""
        workload_id = self._next_workload
        self._next_workload += 1
        for jobs in self._jobs:
            jobs.put(("workload", workload_id, list(payloads), list(rows)))
        acks = 0
        while acks < self.processes:
            message = self._get(timeout_s=120.0)
            if message[0] == "ack":
                acks += 1
        return workload_id

    def completed(self) -> int:
        """Requests completed by all workers since the pool started (live progress)."""
        return int(sum(self.progress))

    def run(
        self,
        address: str,
        method: str,
        workload_id: int,
        spec: LoadSpec,
        poll: Callable[[], None] | None = None,
    ) -> RunMeasurement:
        """Run one load on every worker at once and aggregate the results.

        ``poll`` is called about four times a second while the run goes on
        (for live progress).
        """
        integral = spec.mode == "closed"
        shares = split_evenly(spec.level, self.processes, integral)
        budgets: list[int | None] = [None] * self.processes
        if spec.requests is not None:
            # only workers with callers (closed loop 1 over 2 processes: one idle) share the budget
            active = [i for i, share in enumerate(shares) if share > 0]
            for i, budget in zip(active, split_evenly(spec.requests, len(active), True)):
                budgets[i] = int(budget)
        # a common start a little in the future, so all workers begin together
        start_at = time.monotonic() + 0.3
        for i, jobs in enumerate(self._jobs):
            self._seed += 1
            jobs.put(
                (
                    "job",
                    _Job(address, method, workload_id, spec, shares[i], budgets[i], start_at,
                         self._seed, self.channels_per_process, self.client),
                )
            )
        results: list[WorkerResult] = []
        failures: list[str] = []
        while len(results) + len(failures) < self.processes:
            try:
                message = self._results.get(timeout=0.25)
            except queue.Empty:
                if poll is not None:
                    poll()
                self._check_alive()
                continue
            if message[0] == "result":
                results.append(message[2])
            elif message[0] == "error":
                failures.append(message[2])
        if failures:
            raise RuntimeError("load generator worker failed: " + "; ".join(failures))
        return merge_results(results, self.processes)

    def _get(self, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._results.get(timeout=0.25)
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("load generator workers did not answer")

    def _check_alive(self) -> None:
        dead = [w for w in self._workers if not w.is_alive()]
        if dead:
            raise RuntimeError(f"load generator worker exited with code {dead[0].exitcode}")

    def close(self) -> None:
        """Stop the worker processes."""
        for jobs in self._jobs:
            try:
                jobs.put(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()

    def __enter__(self) -> "ClientPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
