"""Dynamic batching of one (model, version) queue."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Sequence

from navi.batching import sleep
from navi.batching.clock import Clock, SystemClock
from navi.batching.task import DONE, QUEUED, TAKEN, BatchTask
from navi.errors import (
    DeadlineExceeded,
    LogLimiter,
    ModelNotReady,
    NaviError,
    Overloaded,
    RuntimeFailure,
)
from navi.settings import BatchingSettings

log = logging.getLogger(__name__)
#: a failing model logs its traceback at most once per 10 s per error type
_tracebacks = LogLimiter(10.0)

#: process_batch(tasks) -> one result per task, in order
ProcessBatch = Callable[[Sequence[BatchTask]], Sequence[Any]]


class SchedulerClosed(ModelNotReady):
    """The queue is closing (its model version is being unloaded)."""


class BatchScheduler:
    """Groups requests of one (model, version) into batches, at most ``num_batch_threads`` in flight.

    PARAMETERS AND BEHAVIOR (``BatchingSettings``)

    ``submit(payload, rows)`` does not wait for other tasks: it appends a task
    to one FIFO queue and returns it as a future. A batch is taken from the
    head of the queue as soon as one of these holds (and fewer than
    ``num_batch_threads`` batches are running):

    * it holds ``max_batch_size`` tasks;
    * ``max_batch_rows`` > 0 and its tasks hold at least ``max_batch_rows``
      rows (a batch takes tasks while their rows fit; a single task larger than
      ``max_batch_rows`` runs alone);
    * its first task has waited ``batch_timeout_ms`` (0 = take at once);
    * ``eager_when_idle`` (on by default) and no batch of this queue is running:
      the model is idle, so waiting for company would only add latency;
    * the scheduler is closing (drain: everything queued runs, no waiting).

    WHO RUNS A BATCH

    A thread waiting for its own task's answer (``run``, or ``result()`` on a
    submitted task) runs due batches itself while its task is queued: it
    leads. At most one waiting thread, the owner of the first waited-for task
    in the queue, times the batch timeout; the others sleep until their
    answer arrives or they become that first owner. When a batch finishes or
    is taken and tasks remain, that first owner is woken. So a request costs
    its thread at most one wake-up (its answer, or its turn to lead), where a
    pool of batch threads costs two (the batch thread's, then the caller's);
    on small models those two hand-offs cost more than the model. The
    scheduler's own ``num_batch_threads`` worker threads run only batches no
    waiting thread leads (tasks submitted and not yet waited for).

    With ``eager_when_idle`` and ``inline_when_idle`` (both on by default), a
    task submitted while the queue is empty and no batch is running runs at
    once on the submitting thread, as a batch of one.

    ``eager_when_idle`` is our reading of the original's "flush when no more
    requests are pending": its polling loop flushed whenever its channel was
    empty. "Nothing pending" has no exact meaning with many request threads,
    "nothing running" does: at low load a request runs at once, and under load
    requests accumulate while a batch runs and leave together as soon as a
    slot frees up (or the timeout fires). With ``eager_when_idle=False`` the
    scheduler is TF's basic scheduler: only size, rows and timeout close a batch.

    Latency contract: while fewer than ``num_batch_threads`` batches run, a
    task waits in the queue at most ``batch_timeout_ms`` plus scheduling
    jitter (no wait at all when the queue is idle and ``eager_when_idle``).
    When every slot is busy, tasks keep accumulating and the next free slot
    takes the fullest batch the limits allow, which is what raises throughput
    under load.

    Shedding is per task, when its batch is taken: a task that waited in this
    queue more than ``batch_drop_ms`` (0 = never) *while a batch slot was
    free* fails with ``Overloaded`` (RESOURCE_EXHAUSTED), one whose
    ``deadline_s`` has passed fails with ``DeadlineExceeded``; neither runs,
    and the rest of the batch runs. This is the original's rule (it drops a
    batch whose oldest request waited longer than batch_drop_millis to be
    batched; its batches then run at once, with no bound on how many run),
    read for a bounded number of slots: time spent behind running batches
    while every slot is busy is not counted, since that is the model working
    at its capacity, not the request being neglected; shedding a request
    there would throw away its parse and decode and give its slot's next batch
    one request fewer (closed-loop goodput fell to 0 at 128 callers when every
    wait counted). What the drop catches is a queue that is not being served
    while it could be (a starved process). Time before the queue (a request
    waiting for a server thread) is not counted either; ``arrival_s`` only
    starts the batch timeout earlier. What bounds the wait behind busy slots
    is the queue's estimated run time and its length. A new task is refused
    with ``Overloaded`` at once, by ``submit`` and by ``admit`` (which servers
    call before parsing a request, so a refusal costs no decode), when every
    slot is busy and its wait so far (from ``arrival_s``: the wait for a
    server thread counts) plus its estimated wait for a slot would pass
    ``max_queue_wait_ms`` (never while it would join the next batch taken:
    that waits at most the rest of one batch run, and the slot freed must
    find a full batch, or goodput falls); and when ``max_queued_requests``
    tasks are queued.
    The estimate: the batches queued ahead of it (by ``max_batch_size``, and
    by ``max_batch_rows`` when set) say which slot's turn it joins and after
    how many rounds; a batch runs its rows times the recent run time per row
    (a moving average), so a running batch ends that long after it was
    taken. ``wait_refusal`` asks the same without counting, for a server's
    thread pool to refuse before it receives a request (``ahead``: requests
    received or parsed meanwhile). So an admitted request waits at most
    about ``max(max_queue_wait_ms, the rest of one batch run)`` before its
    batch starts, plus the run of the batch it joins, and the rest are
    refused in microseconds instead of timing out. (Counting only whole
    rounds of queued batches, and letting one batch per slot wait whatever
    the request had waited before, admitted two bounds in a row: the wait
    for a server thread, then up to a full batch run; benchmarks/RESULTS.md,
    "Reliability".)

    ``process_batch(tasks)`` returns one result per task; each task gets its
    result. If it raises, every task of that batch fails with the error (a
    ``NaviError`` as is, anything else as ``RuntimeFailure``).

    ``close()`` stops accepting, answers every accepted task (running them),
    waits for running batches and joins the workers. The clock is injectable
    (``FakeClock`` in tests).
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
        self._max_in_flight = options.num_batch_threads
        self._running = 0  # batches taken and not finished
        # (taken at, rows) of each running batch (scheduler clock)
        self._running_batches: list[tuple[float, int]] = []
        self._row_s = 0.0  # moving average of a batch's run time per row (when a running batch ends)
        self._task_rows = 1.0  # moving average of rows per request (when a batch is taken)
        self._batch_s = 0.0  # moving average of a batch's run time (how long a waiter sleeps)
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
        self._lock = threading.Lock()
        # workers sleep here; each waiting caller sleeps on a Condition of its own
        # (same lock), so a wake-up reaches exactly the thread meant
        self._workers_idle = threading.Condition(self._lock)
        self._local = threading.local()
        self._queue: collections.deque[BatchTask] = collections.deque()
        self._queued_rows = 0
        # total time every slot was busy (scheduler clock), up to _busy_since when busy now
        self._slots_busy_total_s = 0.0
        self._busy_since: float | None = None
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
        with self._lock:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._closing

    def admit(self, arrival_s: float | None = None) -> None:
        """Raise now what ``submit`` would raise for a new task: ``SchedulerClosed`` or ``Overloaded``.

        Lets a server refuse a request before paying for its parse and decode.
        ``arrival_s`` (scheduler clock): when the request reached the server;
        its wait since then counts against ``max_queue_wait_ms``.
        """
        with self._lock:
            self._check_room(arrival_s)

    def submit(self, payload: Any, rows: int, deadline_s: float | None = None) -> BatchTask:
        """Queue one request of ``rows`` rows; the returned task is its future.

        ``deadline_s`` is an absolute time on the scheduler's clock
        (``time.monotonic()`` for the real clock). Raises ``Overloaded`` when
        the queue is full and ``SchedulerClosed`` after ``close``.
        """
        task, inline = self._enqueue(payload, rows, deadline_s, owned=False)
        if inline:
            self._execute([task], task.queued_s)
        return task

    def run(self, payload: Any, rows: int, deadline_s: float | None = None,
            arrival_s: float | None = None, admitted: bool = False) -> Any:
        """Queue one request and return its result, waiting on the calling thread.

        The same as ``submit(...).result()``, except that no worker is woken
        for the task: the caller is known to wait, so it leads its batch itself.
        ``arrival_s`` (scheduler clock) is when the request reached the server,
        if earlier than now: the batch timeout and ``batch_drop_ms`` count from it.
        ``admitted``: ``admit`` let this request in before its parse; the
        ``max_queue_wait_ms`` rule is not applied twice (by now the slot it
        was admitted for may have taken its batch without it, and refusing
        it would throw its parse away; the queue's other limits still apply).
        """
        task, inline = self._enqueue(payload, rows, deadline_s, owned=True, arrival_s=arrival_s,
                                     check_wait=not admitted)
        if inline:
            self._execute([task], task.queued_s)
        return task.result()

    def wait_for(self, task: BatchTask, timeout_s: float | None = None) -> None:
        """Block until ``task`` is answered, leading due batches while it is queued.

        ``timeout_s`` is in real seconds; past it ``TimeoutError`` is raised and
        the task stays queued.
        """
        end_s = None if timeout_s is None else time.monotonic() + timeout_s
        cond = self._caller_cond()
        with self._lock:
            task.owned = True
            while task.state != DONE:
                now_s = self._clock.monotonic()
                if task.state == QUEUED:
                    batch = self._take_if_due(now_s)
                    if batch is not None:
                        self._lock.release()
                        try:
                            self._execute(batch, now_s)
                        finally:
                            self._lock.acquire()
                        continue
                wait_s = None
                if task.state == QUEUED and self._running < self._max_in_flight \
                        and self._first_owned() is task:
                    wait_s = max(0.0, self._wait_s(now_s))
                # How long this sleep should last, for the caller's thread pool (a
                # long one lets another request in): until the queue's head batch
                # is due (its timeout, or the end of the running batch), then,
                # unless this caller leads it, that batch's run.
                if task.state == QUEUED:
                    expected_s = max(0.0, self._wait_s(now_s))
                    if self._running:
                        expected_s = min(expected_s, self._batch_s)
                    if wait_s is None:
                        expected_s += self._batch_s
                else:
                    expected_s = self._batch_s
                if end_s is not None:
                    left_s = end_s - time.monotonic()
                    if left_s <= 0:
                        task.owned = False
                        if self._queue:
                            self._wake_leader()  # someone else times the head batch now
                        raise TimeoutError(f"{self._name}: no answer within {timeout_s:g} s")
                    wait_s = left_s if wait_s is None else min(wait_s, left_s)
                task.waiter = cond
                sleep.sleeping(expected_s)
                try:
                    self._clock.wait(cond, wait_s)
                finally:
                    task.waiter = None
                    sleep.awake()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, run every queued task, wait for running batches and join the workers."""
        with self._lock:
            self._closing = True
            self._workers_idle.notify_all()
            for task in self._queue:
                if task.waiter is not None:
                    task.waiter.notify()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout_s)
        end_s = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            # batches led by callers (inline ones too) finish before the model goes
            while self._running or self._queue:
                left_s = None if end_s is None else end_s - time.monotonic()
                if left_s is not None and left_s <= 0:
                    break
                self._workers_idle.wait(left_s)

    # ---------------------------------------------------------------- implementation
    # Implementation details follow. API users need not read.

    def _caller_cond(self) -> threading.Condition:
        cond = getattr(self._local, "cond", None)
        if cond is None:
            cond = self._local.cond = threading.Condition(self._lock)
        return cond

    def _enqueue(self, payload: Any, rows: int, deadline_s: float | None, owned: bool,
                 arrival_s: float | None = None, check_wait: bool = True) -> tuple[BatchTask, bool]:
        """Accept a task: (task, whether the caller runs it inline now)."""
        with self._lock:
            self._check_room(arrival_s, check_wait)
            now_s = self._clock.monotonic()
            task = BatchTask(payload, int(rows), now_s if arrival_s is None else min(arrival_s, now_s),
                             deadline_s, self)
            task.queued_s = now_s
            task.slots_busy_mark_s = self._slots_busy_s(now_s)
            if self._inline_when_idle and self._running == 0 and not self._queue:
                task.state = TAKEN
                self._slot_taken(now_s, task.rows)
                return task, True
            task.owned = owned
            self._queue.append(task)
            self._queued_rows += task.rows
            self._gauge(+1)
            if not owned:
                # an owner looks at the queue before it sleeps; nobody will for this one
                self._wake_leader()
            return task, False

    def _slots_busy_s(self, now_s: float) -> float:
        """Total time every batch slot was busy, up to ``now_s``. Caller holds the lock."""
        if self._busy_since is None:
            return self._slots_busy_total_s
        return self._slots_busy_total_s + max(0.0, now_s - self._busy_since)

    def _slot_taken(self, now_s: float, rows: int) -> None:
        """One more batch, of ``rows`` rows, runs from ``now_s``. Caller holds the lock."""
        self._running += 1
        self._running_batches.append((now_s, rows))
        if self._running >= self._max_in_flight and self._busy_since is None:
            self._busy_since = now_s

    def _slot_freed(self, now_s: float, started_s: float, rows: int) -> None:
        """The batch of ``rows`` rows taken at ``started_s`` finished at ``now_s``. Caller holds the lock."""
        self._running -= 1
        self._running_batches.remove((started_s, rows))
        if self._busy_since is not None and self._running < self._max_in_flight:
            self._slots_busy_total_s += max(0.0, now_s - self._busy_since)
            self._busy_since = None

    def _check_room(self, arrival_s: float | None = None, check_wait: bool = True) -> None:
        """Raise if a new task cannot be queued now. Caller holds the lock."""
        if self._closing:
            raise SchedulerClosed(f"{self._name} is unloading")
        reason = self._wait_refusal(arrival_s) if check_wait else None
        if reason is not None:
            self._count_shed(1)
            raise Overloaded(reason)
        if len(self._queue) >= self._options.max_queued_requests:
            self._count_shed(1)
            raise Overloaded(
                f"{self._name}: {len(self._queue)} requests queued "
                f"(max_queued_requests={self._options.max_queued_requests}, --max-queued-requests)"
            )

    def wait_refusal(self, arrival_s: float | None = None, ahead: int = 0) -> str | None:
        """Why a request that arrived at ``arrival_s`` would be refused by ``max_queue_wait_ms`` now, or None.

        Nothing is counted: for a server's thread pool, to refuse before it
        receives the request (the same rule as ``admit``'s). ``ahead``:
        requests on their way to this queue ahead of it (being received or
        parsed), counted as queued.
        """
        with self._lock:
            return self._wait_refusal(arrival_s, ahead)

    def _wait_refusal(self, arrival_s: float | None, ahead: int = 0) -> str | None:
        """The ``max_queue_wait_ms`` refusal of a new task, or None. Caller holds the lock."""
        now_s = self._clock.monotonic()
        wait_s = self._estimated_wait_s(now_s, ahead)
        if wait_s is None:
            return None
        waited_s = 0.0 if arrival_s is None else max(0.0, now_s - arrival_s)
        if waited_s + wait_s <= self._options.max_queue_wait_ms / 1000.0:
            return None
        return (f"{self._name}: the request waited {waited_s * 1000:.0f} ms and would wait "
                f"~{wait_s * 1000:.0f} ms more for a batch slot ({len(self._queue)} requests queued; "
                f"max_queue_wait_ms={self._options.max_queue_wait_ms:g}, --max-queue-wait-millis)")

    def _estimated_wait_s(self, now_s: float, ahead: int = 0) -> float | None:
        """How long a new task would wait for its batch to start; None when not bounded, not known or
        the next batch. Lock held.

        Run times are the recent time per row times a batch's rows (a heavy
        model's batch of 16 requests runs 16 times as long as one of 1). The
        new task's batch comes after the k batches queued ahead: it starts
        when the (k mod slots)-th soonest running batch ends, plus k div
        slots rounds of a queued batch's run.
        """
        opts = self._options
        row_s = self._row_s
        if opts.max_queue_wait_ms <= 0 or self._running < self._max_in_flight or row_s <= 0:
            return None
        queued = len(self._queue)
        task_rows = self._queued_rows / queued if queued else self._task_rows
        queued += ahead
        queued_rows = self._queued_rows + ahead * task_rows
        batches_ahead = queued // opts.max_batch_size
        batch_rows = opts.max_batch_size * task_rows
        if opts.max_batch_rows:
            batches_ahead = max(batches_ahead, int(queued_rows // opts.max_batch_rows))
            batch_rows = min(batch_rows, opts.max_batch_rows)
        if batches_ahead == 0:
            # the batch the next free slot takes: it waits at most the rest of one
            # batch run, and refusing it would leave that slot a smaller batch
            # (side by side: fewer refusals at c=32, no worse p99 at 3x;
            # benchmarks/RESULTS.md, "Reliability")
            return None
        rounds, slot = divmod(batches_ahead, self._max_in_flight)
        ends_s = sorted(max(0.0, started_s + rows * row_s - now_s) for started_s, rows in self._running_batches)
        return ends_s[min(slot, len(ends_s) - 1)] + rounds * batch_rows * row_s

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

    def _take(self, now_s: float) -> tuple[list[BatchTask], int]:
        """Pop the next batch from the head: (its tasks, their rows). Caller holds the lock."""
        opts = self._options
        batch: list[BatchTask] = []
        rows = 0
        busy_s = self._slots_busy_s(now_s)
        while self._queue and len(batch) < opts.max_batch_size:
            task = self._queue[0]
            if opts.max_batch_rows and batch and rows + task.rows > opts.max_batch_rows:
                break
            self._queue.popleft()
            task.state = TAKEN
            # what batch_drop_ms measures: queued time while some slot was free
            task.slots_busy_mark_s = busy_s - task.slots_busy_mark_s
            batch.append(task)
            rows += task.rows
        self._queued_rows -= rows
        if batch:
            self._task_rows = 0.8 * self._task_rows + 0.2 * rows / len(batch)
        return batch, rows

    def _take_if_due(self, now_s: float) -> list[BatchTask] | None:
        """Take the head batch if it is due and a slot is free. Caller holds the lock."""
        if not self._queue or self._running >= self._max_in_flight or self._wait_s(now_s) > 0:
            return None
        batch, rows = self._take(now_s)
        self._gauge(-len(batch))
        self._slot_taken(now_s, rows)
        if self._queue:
            self._wake_leader()  # the next batch may be due too, with the other slot
        elif self._closing:
            self._workers_idle.notify_all()  # drained: workers may exit
        return batch

    def _first_owned(self) -> BatchTask | None:
        """The first queued task whose owner waits for it. Caller holds the lock."""
        for task in self._queue:
            if task.owned:
                return task
        return None

    def _wake_leader(self) -> None:
        """Wake whoever should next look at the queue. Caller holds the lock.

        The owner of the first waited-for task if it sleeps (an owner that is
        awake looks at the queue before it sleeps); a worker when no queued
        task has an owner.
        """
        first = self._first_owned()
        if first is None:
            self._workers_idle.notify()
        elif first.waiter is not None:
            first.waiter.notify()

    def _next_batch(self) -> tuple[list[BatchTask], float] | None:
        """Block a worker until it may take a batch; None when closed and drained."""
        with self._lock:
            while True:
                if self._queue:
                    now_s = self._clock.monotonic()
                    batch = self._take_if_due(now_s)
                    if batch is not None:
                        return batch, now_s
                    if self._running >= self._max_in_flight or self._first_owned() is not None:
                        # a finishing batch or a waiting owner will act; nothing to time
                        self._clock.wait(self._workers_idle, None)
                    else:
                        self._clock.wait(self._workers_idle, self._wait_s(now_s))
                elif self._closing:
                    return None
                else:
                    self._clock.wait(self._workers_idle, None)

    def _work(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            batch, now_s = taken
            self._execute(batch, now_s)

    def _execute(self, batch: list[BatchTask], now_s: float) -> None:
        """Run a taken batch, answer each of its tasks and free its slot."""
        outcomes = None
        started_s = now_s  # taken just now (one clock read fewer per batch)
        self._batches_running(+1)
        try:
            outcomes = self._outcomes(batch, now_s)
        finally:
            self._batches_running(-1)
            with self._lock:
                ended_s = self._clock.monotonic()
                run_s = ended_s - started_s
                rows = sum(task.rows for task in batch)
                self._batch_s = run_s if self._batch_s == 0.0 else 0.8 * self._batch_s + 0.2 * run_s
                row_s = run_s / max(1, rows)
                self._row_s = row_s if self._row_s == 0.0 else 0.8 * self._row_s + 0.2 * row_s
                if outcomes is None:  # interrupted (e.g. KeyboardInterrupt): nobody is left hanging
                    error = RuntimeFailure(f"{self._name}: batch interrupted")
                    outcomes = [(task, None, error) for task in batch]
                for task, value, error in outcomes:
                    task.settle(value, error)
                self._slot_freed(ended_s, started_s, rows)
                if self._queue:
                    self._wake_leader()
                elif self._closing and self._running == 0:
                    self._workers_idle.notify_all()

    def _outcomes(self, batch: list[BatchTask], now_s: float) -> list[tuple]:
        """Shed stale tasks and run the rest: (task, result, error) for every task."""
        outcomes: list[tuple] = []
        live: list[BatchTask] = []
        for task in batch:
            # in the queue, less the time every slot was busy (set by _take)
            waited_s = now_s - task.queued_s - task.slots_busy_mark_s
            if self._drop_s > 0 and waited_s > self._drop_s:
                outcomes.append((task, None, self._stale(waited_s, "in the queue with a batch slot free")))
            elif task.deadline_s is not None and now_s >= task.deadline_s:
                outcomes.append((task, None, DeadlineExceeded(f"{self._name}: deadline passed while queued")))
            else:
                live.append(task)
        if outcomes:
            self._count_shed(len(outcomes), whole_batch=not live)
        if not live:
            return outcomes
        self._observe(live, now_s)
        # (the model's run itself, outside the GIL, is announced to the caller's
        # pool by ``process_batch``: see ServedModel._run_model)
        try:
            results = self._process_batch(live)
            if len(results) != len(live):
                raise RuntimeFailure(
                    f"{self._name}: batch of {len(live)} requests produced {len(results)} results"
                )
        except NaviError as exc:
            self._count_inference_failed(len(live))
            return outcomes + [(task, None, exc) for task in live]
        except Exception as exc:  # noqa: BLE001 - every caller must get an answer
            _tracebacks.log(log, f"{self._name}:{type(exc).__name__}", "%s: batch of %d requests failed",
                            self._name, len(live), exc_info=exc)
            self._count_inference_failed(len(live))
            error = RuntimeFailure(f"{self._name}: {type(exc).__name__}: {exc}")
            return outcomes + [(task, None, error) for task in live]
        failed = 0
        for task, result in zip(live, results):
            if isinstance(result, BaseException):
                outcomes.append((task, None, result))
                failed += 1
            else:
                outcomes.append((task, result, None))
        if failed:
            self._count_inference_failed(failed)
        return outcomes

    def _stale(self, waited_s: float, where: str) -> Overloaded:
        return Overloaded(f"{self._name}: request waited {waited_s * 1000:.1f} ms {where} "
                          f"(batch_drop_ms={self._options.batch_drop_ms:g})")

    # metrics are optional so the scheduler can be used (and tested) alone
    def _gauge(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.mpsc_channel_size.inc(delta)

    def _batches_running(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.blocking_request_num.inc(delta)

    def _count_inference_failed(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.inference_failed_requests_by_model.labels(self._model_name).inc(n)

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
                m.batch_size, m.batch_size_by_model.labels(model),
                m.num_prediction_by_model.labels(model), m.batch_requests.labels(model),
                m.batch_rows.labels(model), m.queue_wait_seconds.labels(model),
            )
        (batches, batches_by_model, size, size_by_model, predictions_by_model, batch_requests,
         batch_rows, wait) = series
        requests = len(live)
        batches.inc()
        batches_by_model.inc()
        # the original's batch_size gauges grow by each batch's size (see navi.metrics)
        size.inc(requests)
        size_by_model.inc(requests)
        predictions_by_model.inc(requests)
        batch_requests.observe(requests)
        batch_rows.observe(sum(task.rows for task in live))
        for task in live:
            wait.observe(max(0.0, now_s - task.arrival_s))
