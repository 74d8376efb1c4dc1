"""``navi serve --workers N``: N server processes on one gRPC port, one supervisor.

A navi process is one GIL; on a host with more cores, N processes serve
more. The supervisor (this module's ``Supervisor``, the process the user
started) owns the port and the workers:

* **Port.** It binds the gRPC address itself first, without SO_REUSEPORT, so
  a port that anything already listens on (a stale navi included) stops
  start-up with ``--port: cannot bind`` instead of being silently shared;
  then it marks that socket SO_REUSEPORT and holds it, never listening, for
  the fleet's life. Each worker binds the same address with SO_REUSEPORT and
  the kernel spreads new connections over the workers' listeners. A gRPC
  channel is one connection, so it stays on one worker: load from several
  channels to use them all.
* **Workers** are forked from a fork server that imported navi, gRPC and
  ONNX Runtime once but started nothing (``worker_context``; never forked
  from a process with gRPC or ONNX Runtime threads, which do not survive a
  fork), and each runs the whole one-process server
  (``navi.cli.serve.run``) with its own registry: it loads its models,
  reads META.json and polls for versions exactly as one process does.
  Each talks to the supervisor over a pipe (``WorkerLink``).
* **Health.** A worker answers SERVING only while the whole fleet is
  ready: it reports its own readiness, the supervisor tells every worker
  whether all N are ready. A health check reaches one worker (whichever
  the kernel picks) and gets the fleet's answer; while a worker restarts,
  the others keep answering requests and health says NOT_SERVING.
* **Metrics.** The supervisor alone serves ``/metrics`` (the
  ``--prometheus-port``): the workers' expositions, fetched over the pipes,
  merged by ``navi.server.metrics_merge`` (counters summed, an exited
  worker's totals kept), plus per-worker gauges labelled ``worker``.
* **Restarts.** A worker that dies is restarted at once (a worker that
  keeps dying soon after starting, with a growing delay), logged and
  counted in ``:navi:worker_restarts_total``. A worker that fails before
  the fleet was ever ready stops start-up with its exit code (a bad model
  config must not loop).
* **CPUs.** With ``worker_cpus="split"`` each worker keeps its threads on a
  slice of its own of the CPUs the supervisor may use (``worker_cpu_set``):
  a worker's handler, poller and gRPC threads hand its GIL to each other on
  one core instead of across cores: 11-18% less CPU per request at 2
  workers on 2 cores (benchmarks/RESULTS.md, Workers). Off by default:
  a pinned worker cannot move to an idle core while another process holds
  its own, so it suits hosts (or Kubernetes' static CPU manager) that give
  navi its cores.
* **Drain.** SIGTERM/SIGINT: the supervisor sends SIGTERM to every worker;
  each drains as one process does (``--shutdown-grace-secs``) and sends its
  final counters; the supervisor exits 0 when all exited 0.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from navi.errors import ConfigError
from navi.server.metrics_http import MetricsHTTPServer
from navi.server.metrics_merge import MetricsMerger, parse_exposition
from navi.settings import ServerSettings
from navi.tally import TallyCounter, render_text

log = logging.getLogger("navi.workers")

#: how often the supervisor fetches every worker's counters even without a scrape:
#: the most a SIGKILLed worker's last counts can be missing from the merged view
SNAPSHOT_PERIOD_S = 1.0
#: how long a scrape waits for one worker's exposition before using its last one
SCRAPE_TIMEOUT_S = 2.0
#: a worker that dies sooner than this after starting counts as failing fast
FAST_DEATH_S = 10.0
#: the longest delay before restarting a worker that keeps failing fast
MAX_RESTART_DELAY_S = 30.0

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


# --------------------------------------------------------------------------- port


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` for the fleet (see the module notes); ConfigError if it is taken.

    A wildcard host binds ``[::]`` dual-stack where IPv6 exists, as gRPC does,
    so it also conflicts with IPv4 listeners. ``port`` 0 picks a free port:
    read it from ``getsockname()``.
    """
    address = f"{host}:{port}"
    if host in WILDCARD_HOSTS:
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    else:
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise ConfigError(f"cannot bind {address}: {error}", source="--port") from None
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in infos[:1]]
    last_error: OSError | None = None
    for family, sockaddr in candidates:
        try:
            holder = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:  # no IPv6 on this host
            last_error = error
            continue
        try:
            if family == socket.AF_INET6 and sockaddr[0] == "::":
                holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # as gRPC's own listeners: a port in TIME_WAIT is free
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # bound WITHOUT SO_REUSEPORT: fails if anything listens there, reuse-port or not
            holder.bind(sockaddr)
            # ...then let the workers (same user, SO_REUSEPORT) join it
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            return holder
        except OSError as error:
            holder.close()
            last_error = error
            if error.errno != getattr(os, "EAFNOSUPPORT", 97):
                break
    raise ConfigError(f"cannot bind {address}: {last_error}", source="--port") from None


# --------------------------------------------------------------------------- /proc


def _hint_migrate_req() -> None:
    """Say so when Linux will reset connections queued on a worker that dies.

    A connection the kernel already accepted into a worker's listen queue is
    reset when that worker's listener closes (it died, or drains): its gRPC
    channel then fails fast for its reconnect back-off (about 1 s). With
    ``net.ipv4.tcp_migrate_req=1`` (Linux 5.14+) the kernel moves such
    connections to another listener of the port instead.
    """
    try:
        value = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    except OSError:
        return
    if value == "0":
        log.warning("net.ipv4.tcp_migrate_req is 0: connections queued on a worker that dies are reset "
                 "rather than moved to the others (sysctl -w net.ipv4.tcp_migrate_req=1 moves them)")


def worker_cpu_set(cpus, workers: int, index: int) -> tuple[int, ...]:
    """The CPUs of worker ``index`` of ``workers`` when they split ``cpus``.

    The i-th of ``workers`` contiguous parts of the sorted CPUs (sizes differ
    by at most one); with more workers than CPUs, one CPU each, in turn.
    """
    ordered = sorted(cpus)
    if not ordered or not 0 <= index < workers:
        raise ValueError(f"worker {index} of {workers} over CPUs {ordered}")
    count = len(ordered)
    if workers > count:
        return (ordered[index % count],)
    return tuple(ordered[index * count // workers:(index + 1) * count // workers])


def pin_worker(settings: ServerSettings, index: int) -> tuple[int, ...] | None:
    """In worker ``index``, before it starts a thread: keep it on its CPUs if
    ``settings.worker_cpus`` says so; returns them (None: not pinned)."""
    if settings.worker_cpus != "split" or settings.workers < 2:
        return None
    try:
        cpus = worker_cpu_set(os.sched_getaffinity(0), settings.workers, index)
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError) as error:  # no affinity on this OS, or not allowed
        log.warning("worker %d: cannot keep to its CPUs (--worker-cpus split): %s", index, error)
        return None
    log.info("worker %d runs on CPU%s %s", index, "s" if len(cpus) > 1 else "", ",".join(map(str, cpus)))
    return cpus


def memory_bytes(pid: int) -> dict[str, int]:
    """Resident (``rss``), proportional (``pss``: shared pages divided among their
    sharers) and private (``uss``: mapped by this process alone) bytes of a process,
    from /proc/<pid>/smaps_rollup; {} if unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty"):
            found[key.lower()] = int(rest.split()[0]) * 1024
    if found:
        found["uss"] = found.get("private_clean", 0) + found.get("private_dirty", 0)
    return found


# --------------------------------------------------------------------------- worker side


class WorkerLink:
    """A worker's end of its supervisor pipe.

    The server reads ``ready`` (is the whole fleet ready?) for its health
    answers and calls ``report_ready`` when its own readiness changes; a
    thread answers the supervisor's scrapes with ``render()`` and applies
    fleet changes, then calls ``on_change`` so health is re-read. If the
    supervisor goes away (the pipe closes), ``on_orphaned`` is called: the
    worker drains and exits rather than serve unsupervised.
    """

    #: NaviServer binds with SO_REUSEPORT and serves no metrics port of its own
    reuse_port = True

    def __init__(self, index: int, conn: Connection):
        self.index = index
        self.ready = False
        self._conn = conn
        self._send_lock = threading.Lock()
        self._reported: bool | None = None
        self._render: Callable[[], bytes] = lambda: b""
        self._on_change: Callable[[], None] = lambda: None
        self._on_orphaned: Callable[[], None] = lambda: None

    def attach(self, render: Callable[[], bytes], on_change: Callable[[], None],
               on_orphaned: Callable[[], None]) -> None:
        """Start answering the supervisor."""
        self._render, self._on_change, self._on_orphaned = render, on_change, on_orphaned
        self._send(("started", os.getpid()))
        threading.Thread(target=self._serve, name=f"worker-link-{self.index}", daemon=True).start()

    def report_ready(self, ready: bool) -> None:
        """Tell the supervisor this worker's models are (not) ready; sent only on change."""
        with self._send_lock:
            if ready == self._reported:
                return
            self._reported = ready
            self._send_locked(("ready", ready))

    def send_final(self) -> None:
        """Send the last exposition (after draining), so no count is lost with this process."""
        self._send(("final", self._render().decode()))

    def _send(self, message) -> None:
        with self._send_lock:
            self._send_locked(message)

    def _send_locked(self, message) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the supervisor is gone: the reader notices
            pass

    def _serve(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                log.error("worker %d: supervisor gone, draining", self.index)
                self._on_orphaned()
                return
            kind = message[0]
            if kind == "scrape":
                try:
                    text = self._render().decode()
                except Exception:  # a broken collector must not kill the link
                    log.exception("worker %d: rendering metrics failed", self.index)
                    text = ""
                self._send(("metrics", message[1], text))
            elif kind == "fleet":
                self.ready = bool(message[1])
                try:
                    self._on_change()
                except Exception:
                    log.exception("worker %d: health update failed", self.index)


# --------------------------------------------------------------------------- supervisor side


class _Slot:
    """One worker position: its current process and what the supervisor knows of it."""

    def __init__(self, index: int):
        self.index = index
        self.process: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.send_lock = threading.Lock()
        self.generation = 0
        self.pid: int | None = None
        self.ready = False
        self.ever_ready = False
        self.started_at = 0.0
        self.last_text = ""
        self.pending: dict[int, Future] = {}
        self.fast_deaths = 0
        self.restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def send(self, message) -> bool:
        with self.send_lock:
            if self.conn is None:
                return False
            try:
                self.conn.send(message)
                return True
            except (OSError, ValueError):
                return False


class _FleetCollector(Collector):
    """Per-worker gauges, read from the supervisor's state at scrape time."""

    def __init__(self, supervisor: "Supervisor"):
        self._supervisor = supervisor

    def collect(self):
        sup = self._supervisor
        workers = GaugeMetricFamily(":navi:workers", "Worker processes configured (--workers)")
        workers.add_metric([], len(sup.slots))
        up = GaugeMetricFamily(":navi:worker_up", "1 while the worker process runs", labels=["worker"])
        ready = GaugeMetricFamily(":navi:worker_ready", "1 while the worker has its models ready",
                                  labels=["worker"])
        pid = GaugeMetricFamily(":navi:worker_pid", "Process id of the worker", labels=["worker"])
        rss = GaugeMetricFamily(":navi:worker_resident_bytes", "Resident memory of the worker (RSS)",
                                labels=["worker"])
        pss = GaugeMetricFamily(":navi:worker_proportional_bytes",
                                "Proportional memory of the worker (PSS: pages shared with other "
                                "processes divided among them)", labels=["worker"])
        in_flight = GaugeMetricFamily(":navi:worker_requests_in_flight",
                                      "Requests held by the worker's handler threads", labels=["worker"])
        received = GaugeMetricFamily(":navi:worker_requests",
                                     "Requests the worker process received since it started (how the "
                                     "kernel spread the connections)", labels=["worker"])
        for slot in sup.slots:
            label = [str(slot.index)]
            alive = slot.alive
            up.add_metric(label, 1 if alive else 0)
            ready.add_metric(label, 1 if alive and slot.ready else 0)
            if alive and slot.pid:
                pid.add_metric(label, slot.pid)
                memory = memory_bytes(slot.pid)
                if memory:
                    rss.add_metric(label, memory.get("rss", 0))
                    pss.add_metric(label, memory.get("pss", 0))
                families = parse_exposition(slot.last_text)
                for name, family in ((":navi:requests_in_flight", in_flight), (":navi:num_requests", received)):
                    found = families.get(name)
                    if found is not None and found.samples:
                        family.add_metric(label, next(iter(found.samples.values())))
        return [workers, up, ready, pid, rss, pss, in_flight, received]


#: modules the fork server imports once, so a worker (re)starts without importing them:
#: about 1 s of CPU per worker; none of them starts a thread on import
WORKER_PRELOAD = ("navi.cli.serve", "navi.server.app", "navi.repository", "navi.plugins", "onnxruntime")


def worker_context():
    """How workers are started: forked from a fork server (a fresh, single-threaded
    process that imported ``WORKER_PRELOAD``), where the platform has one; else spawned.

    Never forked from the supervisor or from a loaded worker: gRPC's and ONNX
    Runtime's threads do not survive a fork.
    """
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(list(WORKER_PRELOAD))
        return context
    return mp.get_context("spawn")


#: a worker process entry: (settings, index, pipe end, log level) -> exit code via SystemExit
WorkerMain = Callable[[ServerSettings, int, Connection, int], None]


class Supervisor:
    """Runs ``settings.workers`` worker processes (``worker_main``) and owns port and /metrics."""

    def __init__(self, settings: ServerSettings, worker_main: WorkerMain):
        self.settings = settings
        self.worker_main = worker_main
        self.slots = [_Slot(index) for index in range(settings.workers)]
        self.merger = MetricsMerger()
        self.registry = CollectorRegistry()
        self.restarts = TallyCounter(":navi:worker_restarts_total", "Worker processes restarted after dying",
                                     ("worker",), registry=self.registry)
        self.registry.register(_FleetCollector(self))
        self._context = worker_context()
        self._lock = threading.Lock()  # slot generations, texts and the merger move together
        self._tokens = itertools.count(1)
        self._stop = threading.Event()
        self._fleet_ready = False
        self._became_ready = False
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._holder: socket.socket | None = None
        self._http: MetricsHTTPServer | None = None
        self.port: int | None = None
        #: the fleet's shared-weights cache: private to this supervisor, removed when it stops
        self._weights_dir = Path(tempfile.mkdtemp(prefix="navi-weights-"))

    # ------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain every worker; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        settings = self.settings
        try:
            self._holder = reserve_port(settings.host, settings.port)
            self.port = self._holder.getsockname()[1]
            try:
                self._http = MetricsHTTPServer(self.registry, settings.prometheus_port, settings.prometheus_host,
                                               idle_timeout_s=settings.handshake_timeout_s,
                                               render=self.render_metrics).start()
            except OSError as error:
                raise ConfigError(f"cannot serve metrics on port {settings.prometheus_port}: {error}",
                                  source="--prometheus-port") from None
        except ConfigError as error:
            log.error("%s", error)
            self._close()
            return 2
        log.info("navi gRPC listening on %s:%d (%s, %d workers), metrics on :%d/metrics",
                 settings.host, self.port, "mutual TLS" if settings.ssl_dir else "plaintext",
                 len(self.slots), self._http.port)
        _hint_migrate_req()
        for slot in self.slots:
            self._spawn(slot)
        threading.Thread(target=self._snapshot_loop, name="worker-snapshots", daemon=True).start()
        exit_code = self._watch()
        exit_code = self._drain(exit_code)
        self._close()
        log.info("navi stopped")
        return exit_code

    def _on_signal(self, signum, frame) -> None:
        if self._stop.is_set():
            log.warning("second %s: exiting without draining", signal.Signals(signum).name)
            for slot in self.slots:
                if slot.alive:
                    os.kill(slot.process.pid, signal.SIGKILL)
            os._exit(128 + signum)
        log.info("%s received: draining %d workers", signal.Signals(signum).name, len(self.slots))
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"x")
        except OSError:
            pass

    def _worker_settings(self) -> ServerSettings:
        # every worker binds the port the supervisor holds (port 0 resolved once), and
        # maps large weights from the fleet's cache (navi.plugins.onnx_shared)
        models = tuple(model if model.shared_weights_dir is not None or not self.settings.share_weights
                       else model.model_copy(update={"shared_weights_dir": self._weights_dir})
                       for model in self.settings.models)
        return self.settings.model_copy(update={"port": self.port, "models": models})

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=self.worker_main, name=f"navi-worker-{slot.index}",
            args=(self._worker_settings(), slot.index, child, logging.getLogger().getEffectiveLevel()),
        )
        process.start()
        child.close()
        with self._lock:
            slot.generation += 1
            slot.process, slot.conn = process, parent
            slot.pid, slot.ready, slot.ever_ready, slot.last_text = process.pid, False, False, ""
            slot.started_at = time.monotonic()
            slot.restart_at = None
            generation = slot.generation
        threading.Thread(target=self._read, args=(slot, parent, generation), name=f"worker-{slot.index}-reader",
                         daemon=True).start()
        slot.send(("fleet", self._fleet_ready))

    def _read(self, slot: _Slot, conn: Connection, generation: int) -> None:
        """Messages of one worker incarnation, until its pipe closes."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind in ("metrics", "final"):
                text = message[-1]
                with self._lock:
                    if slot.generation == generation:
                        slot.last_text = text
                    future = slot.pending.pop(message[1], None) if kind == "metrics" else None
                if future is not None:
                    future.set_result(text)
            elif kind == "ready":
                self._on_ready(slot, generation, bool(message[1]))
            elif kind == "started":
                log.info("worker %d started (pid %d)", slot.index, message[1])
        self._wake()

    def _on_ready(self, slot: _Slot, generation: int, ready: bool) -> None:
        with self._lock:
            if slot.generation != generation:
                return
            lost = slot.ready and not ready
            slot.ready = ready
            first = ready and not slot.ever_ready
            slot.ever_ready = slot.ever_ready or ready
        if first and slot.pid:
            memory = memory_bytes(slot.pid)
            log.info("worker %d ready (pid %d): RSS %.0f MiB, PSS %.0f MiB, private %.0f MiB", slot.index,
                     slot.pid, memory.get("rss", 0) / 2**20, memory.get("pss", 0) / 2**20,
                     memory.get("uss", 0) / 2**20)
        elif lost:
            log.warning("worker %d no longer has every model ready", slot.index)
        self._update_fleet()

    def _update_fleet(self) -> None:
        with self._lock:
            ready = not self._stop.is_set() and all(slot.alive and slot.ready for slot in self.slots)
            changed = ready != self._fleet_ready
            self._fleet_ready = ready
            first = ready and not self._became_ready
            self._became_ready = self._became_ready or ready
        if changed:
            for slot in self.slots:
                slot.send(("fleet", ready))
        if first:
            log.info("navi ready: %d workers serving on port %d", len(self.slots), self.port)
            self._log_memory()
        elif changed:
            log.log(logging.INFO if ready else logging.WARNING, "fleet %s",
                    "ready again: every worker serving" if ready else "not ready: health NOT_SERVING")

    def _log_memory(self) -> None:
        total = {"rss": 0, "pss": 0}
        for slot in self.slots:
            memory = memory_bytes(slot.pid) if slot.pid else {}
            for key in total:
                total[key] += memory.get(key, 0)
        own = memory_bytes(os.getpid())
        log.info("memory: workers RSS %.0f MiB, PSS %.0f MiB in all; supervisor RSS %.0f MiB",
                 total["rss"] / 2**20, total["pss"] / 2**20, own.get("rss", 0) / 2**20)

    def _watch(self) -> int:
        """Restart dead workers until asked to stop; a start-up failure returns its code."""
        while not self._stop.is_set():
            sentinels = [slot.process.sentinel for slot in self.slots if slot.process is not None and slot.alive]
            delays = [slot.restart_at - time.monotonic() for slot in self.slots if slot.restart_at is not None]
            timeout = max(0.0, min(delays)) if delays else 1.0
            ready = wait(sentinels + [self._wake_r], timeout=min(timeout, 1.0))
            if self._wake_r in ready:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
            if self._stop.is_set():
                break
            for slot in self.slots:
                if slot.process is not None and not slot.alive and slot.restart_at is None:
                    code = self._on_death(slot)
                    if code is not None:
                        return code
                if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                    log.info("restarting worker %d", slot.index)
                    self._spawn(slot)
        return 0

    def _on_death(self, slot: _Slot) -> int | None:
        process = slot.process
        process.join(1.0)
        code = process.exitcode
        lived_s = time.monotonic() - slot.started_at
        with self._lock:
            self.merger.retire(slot.last_text)
            slot.generation += 1
            slot.last_text, slot.ready = "", False
            for future in slot.pending.values():
                future.cancel()
            slot.pending.clear()
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
        self._update_fleet()
        if not self._became_ready:
            log.error("worker %d exited with %s before the fleet was ready: stopping", slot.index, code)
            return code if code and code > 0 else 1
        slot.fast_deaths = slot.fast_deaths + 1 if lived_s < FAST_DEATH_S else 0
        delay_s = 0.0 if slot.fast_deaths <= 1 else min(MAX_RESTART_DELAY_S, 0.5 * 2 ** (slot.fast_deaths - 2))
        reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("worker %d (pid %s) died (%s) after %.1f s: restarting%s", slot.index, process.pid, reason,
                  lived_s, f" in {delay_s:.1f} s" if delay_s else "")
        self.restarts.labels(slot.index).inc()
        slot.restart_at = time.monotonic() + delay_s
        return None

    def _drain(self, exit_code: int) -> int:
        """SIGTERM every worker and wait for each (their drain takes up to the grace period)."""
        self._update_fleet()
        live = [slot for slot in self.slots if slot.alive]
        for slot in live:
            try:
                os.kill(slot.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.settings.shutdown_grace_s + 15.0
        for slot in live:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("worker %d did not stop in time: killing it", slot.index)
                slot.process.kill()
                slot.process.join(5.0)
                exit_code = exit_code or 1
            elif slot.process.exitcode != 0 and exit_code == 0:
                log.error("worker %d exited with %s", slot.index, slot.process.exitcode)
                exit_code = 1
        return exit_code

    def _close(self) -> None:
        if self._http is not None:
            self._http.stop()
        if self._holder is not None:
            self._holder.close()
        shutil.rmtree(self._weights_dir, ignore_errors=True)

    # ------------------------------------------------------------ metrics

    def _scrape(self, timeout_s: float) -> None:
        """Ask every live worker for its exposition; replies land in ``slot.last_text``."""
        waiting = []
        for slot in self.slots:
            future: Future = Future()
            token = next(self._tokens)
            with self._lock:
                if slot.conn is None:
                    continue
                slot.pending[token] = future
            if slot.send(("scrape", token)):
                waiting.append((slot, token, future))
        deadline = time.monotonic() + timeout_s
        for slot, token, future in waiting:
            try:
                future.result(max(0.0, deadline - time.monotonic()))
            except (FutureTimeout, Exception):
                with self._lock:
                    slot.pending.pop(token, None)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(SNAPSHOT_PERIOD_S):
            try:
                self._scrape(SCRAPE_TIMEOUT_S)
            except Exception:
                log.exception("worker snapshot failed")

    def render_metrics(self) -> bytes:
        """The merged exposition of every worker plus the supervisor's own families."""
        self._scrape(SCRAPE_TIMEOUT_S)
        with self._lock:  # not merged while a dead worker's totals move to the kept ones
            texts = [slot.last_text for slot in self.slots if slot.conn is not None]
            merged = self.merger.merge(texts)
        return merged.encode() + render_text(self.registry)


__all__ = ["Supervisor", "WorkerLink", "memory_bytes", "reserve_port"]
