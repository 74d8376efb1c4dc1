"""Dynamic batching of one (model, version) queue."""
from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from navi.batching.clock import Clock, SystemClock
from navi.batching.task import BatchTask
from navi.errors import (
    DeadlineExceeded,
    ModelNotReady,
    NaviError,
    Overloaded,
    RuntimeFailure,
)
from navi.settings import BatchingSettings

log = logging.getLogger(__name__)

#: process_batch(tasks) -> one result per task, in order
ProcessBatch = Callable[[Sequence[BatchTask]], Sequence[Any]]


class SchedulerClosed(ModelNotReady):
    """The queue is closing (its model version is being unloaded)."""


class BatchScheduler:
    """Groups requests of one (model, version) into batches run on a small thread pool.

    PARAMETERS AND BEHAVIOR (``BatchingSettings``)

    ``submit(payload, rows)`` does not wait for other tasks: it appends a task to one FIFO queue
    and returns a ``Future``. ``num_batch_threads`` worker threads, owned by the
    scheduler, each repeatedly take the next batch from the head of the queue
    and run ``process_batch`` on it, so up to ``num_batch_threads`` batches are
    in flight at once (plus the inline case below). A worker takes a batch as
    soon as one of these holds for the queue:

    * it holds ``max_batch_size`` tasks;
    * ``max_batch_rows`` > 0 and its tasks hold at least ``max_batch_rows``
      rows (a batch takes tasks while their rows fit; a single task larger than
      ``max_batch_rows`` runs alone);
    * its first task has waited ``batch_timeout_ms`` (0 = take at once);
    * ``eager_when_idle`` (on by default) and no batch of this queue is running:
      the model is idle, so waiting for company would only add latency;
    * the scheduler is closing (drain: everything queued runs, no waiting).

    With ``eager_when_idle`` and ``inline_when_idle`` (both on by default), a
    task submitted while the queue is empty and no batch is running runs at
    once on the submitting thread, as a batch of one: at low load two thread
    hand-offs (to a worker and back) cost more than a small model's run. It
    counts as a running batch, so tasks arriving meanwhile queue for the
    workers as usual; ``submit`` then returns an already resolved Future.

    ``eager_when_idle`` is our reading of the original's "flush when no more
    requests are pending": its polling loop flushed whenever its channel was
    empty. "Nothing pending" has no exact meaning with many request threads,
    "nothing running" does: at low load a request runs at once, and under load
    requests accumulate while a batch runs and leave together as soon as a
    worker frees up (or the timeout fires). With ``eager_when_idle=False`` the
    scheduler is TF's basic scheduler: only size, rows and timeout close a batch.

    Latency contract: while a worker is free, a task waits in the queue at most
    ``batch_timeout_ms`` plus scheduling jitter (no wait at all when the queue
    is idle and ``eager_when_idle``). When every worker is busy, tasks keep
    accumulating and the next free worker takes the fullest batch the limits
    allow, which is what raises throughput under load.

    Shedding is per task, when its batch is taken: a task that has waited more
    than ``batch_drop_ms`` (0 = never) fails with ``Overloaded``
    (RESOURCE_EXHAUSTED), one whose ``deadline_s`` has passed fails with
    ``DeadlineExceeded``; neither runs, and the rest of the batch runs.
    ``max_queued_requests`` bounds the queue: past it ``submit`` raises
    ``Overloaded`` at once.

    ``process_batch(tasks)`` returns one result per task; each task's future
    gets its result. If it raises, every task of that batch fails with the
    error (a ``NaviError`` as is, anything else as ``RuntimeFailure``).

    ``close()`` stops accepting, answers every accepted task (running them) and
    joins the workers. The clock is injectable (``FakeClock`` in tests).
    """

    def __init__(
        self,
        process_batch: ProcessBatch,
        options: BatchingSettings,
        *,
        clock: Clock | None = None,
        name: str = "batch",
        metrics: Any | None = None,
        model_name: str = "",
    ):
        self._process_batch = process_batch
        self._eager_when_idle = options.eager_when_idle
        self._inline_when_idle = options.eager_when_idle and options.inline_when_idle
        self._running = 0  # batches taken and not finished
        self._options = options
        self._clock = clock if clock is not None else SystemClock()
        self._name = name
        self._metrics = metrics
        self._model_name = model_name or name
        self._series: tuple | None = None  # cached labelled metric children
        self._timeout_s = options.batch_timeout_ms / 1000.0
        self._drop_s = options.batch_drop_ms / 1000.0
        if 0 < self._drop_s < self._timeout_s:
            log.warning(
                "%s: batch_drop_ms=%g is below batch_timeout_ms=%g: a request that waits "
                "out the timeout alone will be shed", name, options.batch_drop_ms,
                options.batch_timeout_ms,
            )
        self._cond = threading.Condition()
        self._queue: collections.deque[BatchTask] = collections.deque()
        self._queued_rows = 0
        self._closing = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-batch-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    # ----------------------------------------------------------------- public API

    @property
    def options(self) -> BatchingSettings:
        """The batching settings this queue runs with."""
        return self._options

    @property
    def num_queued(self) -> int:
        """Tasks waiting for a batch (not counting batches in flight)."""
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._closing

    def submit(self, payload: Any, rows: int, deadline_s: float | None = None) -> Future:
        """Queue one request of ``rows`` rows; the Future resolves to its result.

        ``deadline_s`` is an absolute time on the scheduler's clock
        (``time.monotonic()`` for the real clock). Raises ``Overloaded`` when
        the queue is full and ``SchedulerClosed`` after ``close``.
        """
        with self._cond:
            if self._closing:
                raise SchedulerClosed(f"{self._name} is unloading")
            if len(self._queue) >= self._options.max_queued_requests:
                self._count_shed(1)
                raise Overloaded(
                    f"{self._name}: {len(self._queue)} requests queued "
                    f"(max_queued_requests={self._options.max_queued_requests})"
                )
            now_s = self._clock.monotonic()
            task = BatchTask(payload, int(rows), now_s, deadline_s)
            inline = self._inline_when_idle and self._running == 0 and not self._queue
            if inline:
                self._running += 1
            else:
                self._queue.append(task)
                self._queued_rows += task.rows
                self._gauge(+1)
                self._cond.notify()
        if inline:
            try:
                self._run([task], now_s)
            finally:
                self._finish_batch()
        return task.future

    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, run every queued task, and join the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout_s)

    # ---------------------------------------------------------------- implementation
    # Implementation details follow. API users need not read.

    def _wait_s(self, now_s: float) -> float:
        """Seconds until the head batch may be taken (<= 0: now). Caller holds the lock."""
        opts = self._options
        if self._closing or len(self._queue) >= opts.max_batch_size:
            return 0.0
        if self._eager_when_idle and self._running == 0:
            return 0.0
        if opts.max_batch_rows and self._queued_rows >= opts.max_batch_rows:
            return 0.0
        return self._queue[0].arrival_s + self._timeout_s - now_s

    def _take(self) -> list[BatchTask]:
        """Pop the next batch from the head. Caller holds the lock."""
        opts = self._options
        batch: list[BatchTask] = []
        rows = 0
        while self._queue and len(batch) < opts.max_batch_size:
            task = self._queue[0]
            if opts.max_batch_rows and batch and rows + task.rows > opts.max_batch_rows:
                break
            self._queue.popleft()
            batch.append(task)
            rows += task.rows
        self._queued_rows -= rows
        return batch

    def _next_batch(self) -> tuple[list[BatchTask], float] | None:
        """Block until a batch is due; None when closed and drained."""
        with self._cond:
            while True:
                if self._queue:
                    now_s = self._clock.monotonic()
                    wait_s = self._wait_s(now_s)
                    if wait_s <= 0:
                        batch = self._take()
                        if self._queue:
                            # Another worker may be able to take the remainder now.
                            self._cond.notify()
                        self._gauge(-len(batch))
                        self._running += 1
                        return batch, now_s
                    self._clock.wait(self._cond, wait_s)
                elif self._closing:
                    return None
                else:
                    self._clock.wait(self._cond, None)

    def _work(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            batch, now_s = taken
            try:
                self._run(batch, now_s)
            finally:
                self._finish_batch()

    def _finish_batch(self) -> None:
        with self._cond:
            self._running -= 1
            if self._queue and self._running == 0 and self._eager_when_idle:
                # the queue just became idle: a waiting worker may go now
                self._cond.notify()

    def _run(self, batch: list[BatchTask], now_s: float) -> None:
        live: list[BatchTask] = []
        shed = 0
        for task in batch:
            waited_s = now_s - task.arrival_s
            if self._drop_s > 0 and waited_s > self._drop_s:
                shed += 1
                task.future.set_exception(
                    Overloaded(
                        f"{self._name}: request waited {waited_s * 1000:.1f} ms in the "
                        f"queue (batch_drop_ms={self._options.batch_drop_ms:g})"
                    )
                )
            elif task.deadline_s is not None and now_s >= task.deadline_s:
                shed += 1
                task.future.set_exception(
                    DeadlineExceeded(f"{self._name}: deadline passed while queued")
                )
            else:
                live.append(task)
        if shed:
            self._count_shed(shed, whole_batch=not live)
        if not live:
            return
        self._observe(live, now_s)
        try:
            results = self._process_batch(live)
            if len(results) != len(live):
                raise RuntimeFailure(
                    f"{self._name}: batch of {len(live)} requests produced {len(results)} results"
                )
        except NaviError as exc:
            for task in live:
                task.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - every caller must get an answer
            log.exception("%s: batch of %d requests failed", self._name, len(live))
            error = RuntimeFailure(f"{self._name}: {type(exc).__name__}: {exc}")
            for task in live:
                task.future.set_exception(error)
            return
        for task, result in zip(live, results):
            if isinstance(result, BaseException):
                task.future.set_exception(result)
            else:
                task.future.set_result(result)

    # metrics are optional so the scheduler can be used (and tested) alone
    def _gauge(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.blocking_request_num.inc(delta)
            self._metrics.mpsc_channel_size.labels(self._model_name).inc(delta)

    def _count_shed(self, n: int, whole_batch: bool = False) -> None:
        if self._metrics is None:
            return
        m, model = self._metrics, self._model_name
        m.num_requests_dropped.inc(n)
        m.num_requests_dropped_by_model.labels(model).inc(n)
        if whole_batch:
            m.num_batches_dropped.inc()
            m.num_batches_dropped_by_model.labels(model).inc()

    def _observe(self, live: list[BatchTask], now_s: float) -> None:
        if self._metrics is None:
            return
        series = self._series
        if series is None:
            # labelled children looked up once: labels() takes a lock and hashes per call
            m, model = self._metrics, self._model_name
            series = self._series = (
                m.num_batch_prediction, m.num_batch_prediction_by_model.labels(model),
                m.batch_size, m.batch_size_by_model.labels(model), m.batch_rows.labels(model),
                m.queue_wait_time.labels(model),
            )
        batches, batches_by_model, size, size_by_model, batch_rows, wait = series
        batches.inc()
        batches_by_model.inc()
        size.observe(len(live))
        size_by_model.observe(len(live))
        batch_rows.observe(sum(task.rows for task in live))
        for task in live:
            wait.observe(max(0.0, now_s - task.arrival_s))
