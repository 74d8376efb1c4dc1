"""Which threads run which RPCs.

grpcio's sync server runs every RPC on one thread pool, in arrival order. With
navi's few running handler threads (``ServerSettings.grpc_threads``, as many
as cores; ``HandlerPool``) a health check or a metadata call would then wait
behind every queued Predict (hundreds of milliseconds under load:
benchmarks/RESULTS.md, "Design measurements"). The model-running methods
therefore get a pool of their own and everything else (health, reflection, metadata, status, liveness)
runs on a small control pool that requests cannot fill. Server reflection,
whose streams hold a thread while open, has a pool of its own. Each pool
bounds its queue and refuses past it unread (``HandlerPool``).
"""
from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from grpc import _server as _grpc_server

from navi.batching.sleep import set_sleep_hooks

#: threads for the RPCs that do not run a model; their work is short, and the
#: health service's Watch does not hold a thread (it is non-blocking)
CONTROL_THREADS = 4

#: threads (and waiting places) for server reflection's streams, each of which
#: holds its thread while open, on a pool of their own
REFLECTION_THREADS = 2

#: control RPCs that may wait for a control thread before newcomers are
#: refused unread (RESOURCE_EXHAUSTED): a flood of metadata or health calls
#: queues no more than this many calls (each holds only grpc core's stream
#: window of its message until read)
CONTROL_MAX_WAITING = 64


def handler_wait_bound_s(queue_wait_bounds_ms) -> float:
    """How long a request may wait for a handler thread: the models' longest ``max_queue_wait_ms``.

    The pool serves every model, so it keeps the most patient model's bound
    (0, no bound, is the most patient); each model's queue applies its own.
    """
    bounds = list(queue_wait_bounds_ms)
    if any(bound <= 0 for bound in bounds):
        return 0.0
    return max(bounds) / 1000.0


#: sleeps expected shorter than this keep their running place (see HandlerPool)
MIN_SLEEP_S = 0.001
#: seconds after a refusal during which queued calls are not received ahead (``_receiving``): under
#: overload a call stays unread until a thread takes it, so one refused then costs no receive
RECEIVE_AHEAD_QUIET_S = 1.0
#: weight of the newest interval between starts of queued work in its moving average
START_EMA = 0.1
#: calls set aside until their messages arrive, at most, in a pool with no ``max_waiting``
DEFAULT_MAX_SET_ASIDE = 256
#: why calls set aside are answered UNAVAILABLE when the pool shuts down
_STOPPING = "the server is stopping"
#: how long a thread that took a call waits for its message before it sets the call aside
#: (``HandlerPool``: a small message's receive completes within microseconds)
MESSAGE_WAIT_S = 0.005

_current = threading.local()
log = logging.getLogger(__name__)


class HandlerPool(futures.ThreadPoolExecutor):
    """The request handlers' threads: at most ``active_threads`` run, up to ``max_threads`` hold requests.

    A handler thread whose request waits for a batch that another thread runs
    uses no CPU, yet a plain pool counts it as busy: with as many threads as
    cores (more only add GIL hand-offs), a batch could then never hold more
    requests than there are cores. Here such a thread tells the pool it sleeps
    (``navi.batching.sleep``) and the pool admits the next request in its
    place, so requests keep joining batches while the threads running Python
    stay at ``active_threads``. Only a sleep expected to last ``min_sleep_s``
    or more (about one batch's run time, as the scheduler measures it) gives
    the place up: tiny models' batches answer before a new thread would have
    started. A thread woken with its answer finishes its request even if that
    briefly makes one more running thread, then goes idle until the count is
    back under the limit.

    It also stamps when each piece of work was handed to it: grpcio submits
    an RPC the moment the call arrives, and the response-time metric counts
    from then (``request_arrival_s`` on the thread running the RPC); the
    batch timeout and ``--max-queue-wait-millis`` count from then too, but
    ``--batch-drop-millis`` does not (see ``BatchScheduler``).

    Waiting here is bounded, and refused work is answered RESOURCE_EXHAUSTED
    unread: a grpcio call at once, on grpcio's own thread
    (``_reject_unread``), other work on a refusing thread with ``refusal()``
    set (``_unread``, ``navi.server.rawrpc``). By time, ``max_wait_s``,
    twice. Once no thread has found the queue empty for longer than that (a
    standing queue, not a burst), new work is refused when the work queued
    ahead of it would take longer than that to start (queued x the recent
    interval between starts while work waited; at least ``active_threads``
    may always wait): what is admitted under sustained overload then waits
    about ``max_wait_s`` however far the load is past capacity (checking only
    the oldest's wait admitted load/capacity x ``max_wait_s``;
    benchmarks/RESULTS.md, "Reliability"), while a burst arriving at an idle
    pool is queued whole. And while the oldest waiting work has waited
    longer, new work is refused (the backstop while the interval is not yet
    measured). By count, ``max_waiting`` (named in the refusal by
    ``max_waiting_source``). And by the models' queues, with
    ``wait_refusal(arrival_s, ahead)`` (``ModelRegistry.wait_refusal``: the
    reason every model's batch queue would refuse a request that arrived
    then with ``ahead`` more queued before it, or None; ``ahead`` is the
    work running here, being received or parsed): work is refused unread
    when a thread takes it if no queue would admit it, and, while work
    queues here, a newcomer whose predicted wait here plus the wait for a
    batch slot would pass the bound is refused at once. The queue would
    refuse it anyway, after its receive: a heavy model's batch runs longer
    than the bound, and its queue's refusals cost a 2.4 MB receive each
    (benchmarks/RESULTS.md, "Reliability"). Otherwise
    work once queued is served whatever it waited (its own gRPC deadline
    still applies), and a burst of 128 requests arriving at an idle server
    (no batch slot busy, so no queue refuses) is queued whole.

    A running thread never waits for a client's bytes. grpcio's handler
    thread receives the call's message and, until it is in, holds its thread:
    ten streams that sent their headers and never a message (a few hundred
    bytes from one client) held every running thread, and every other call
    was refused. Here a thread that takes a grpcio call whose message is not
    in within ``MESSAGE_WAIT_S`` sets it aside and takes the next; the
    message's arrival (or the call's end) puts the call back at the front of
    the queue. At most ``max_waiting`` calls are set aside (a call past that
    is refused RESOURCE_EXHAUSTED): a client's deadline, or its connection's
    end, ends its call. A ``ThreadPoolExecutor`` by type only, as grpcio
    requires; the threads and the queue are its own.
    """

    def __init__(self, active_threads: int, max_threads: int, thread_name_prefix: str = "grpc",
                 min_sleep_s: float = MIN_SLEEP_S, max_waiting: int | None = None,
                 max_wait_s: float = 0.0, wait_refusal: Callable[[float, int], str | None] | None = None,
                 max_waiting_source: str = "grpc_max_waiting_requests={}, --grpc-max-waiting-requests",
                 receive_ahead: int | None = None):
        if active_threads < 1 or max_threads < active_threads:
            raise ValueError(f"need 1 <= active_threads ({active_threads}) <= max_threads ({max_threads})")
        super().__init__(max_workers=1, thread_name_prefix=thread_name_prefix)
        self._active_limit = active_threads
        self._min_sleep_s = min_sleep_s
        self._max_threads = max_threads
        self._name_prefix = thread_name_prefix
        self._pool_lock = threading.Lock()
        self._pending: collections.deque = collections.deque()
        self._threads: list[threading.Thread] = []
        self._running = 0  # threads running work and not asleep in a batch wait
        # Idle threads wait each on a Condition of its own, most recently idle
        # last: work goes to the thread idle the shortest time, whose stack
        # and state are still in cache, so light load keeps using few threads.
        self._idle: list[threading.Condition] = []
        self._waking = 0  # threads woken (or started) and not yet at the queue
        self._closed = False
        self._max_waiting = max_waiting
        self._max_waiting_source = max_waiting_source  # names the bound in refusals; {} is its value
        # queued grpcio calls, from the front, whose message receive has started (_receiving)
        self._receiving_ahead = 0
        self._receive_ahead_limit = receive_ahead if receive_ahead is not None else 2 * active_threads
        self._last_refusal_s = float("-inf")  # when work was last refused here (monotonic)
        # grpcio calls set aside until their messages arrive: rpc state -> their queue entry
        self._set_aside: dict = {}
        self._max_set_aside = max_waiting if max_waiting is not None else DEFAULT_MAX_SET_ASIDE
        self._max_wait_s = max_wait_s  # 0: no bound by time
        self._wait_refusal = wait_refusal
        # seconds between two starts of queued work while work kept waiting (EMA)
        self._start_interval_s = 0.0
        self._last_start_s: float | None = None
        self._waited_after_start = False
        # when a thread last found no work waiting
        self._last_idle_s = 0.0
        self._refuser: futures.ThreadPoolExecutor | None = None

    @property
    def running(self) -> int:
        """Threads running work now (not counting those asleep in a batch wait)."""
        return self._running

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    @property
    def waiting(self) -> int:
        """Requests queued for a handler thread (at most ``max_waiting``)."""
        return len(self._pending)

    @property
    def set_aside(self) -> int:
        """grpcio calls set aside until their messages arrive."""
        return len(self._set_aside)

    @property
    def holding(self) -> int:
        """Threads holding a request now: running, or asleep waiting for its batch."""
        return len(self._threads) - len(self._idle) - self._waking

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        """Queue ``fn(*args, **kwargs)``; the work sees its hand-in time (``request_arrival_s``)."""
        future: futures.Future = futures.Future()
        downstream = None
        if len(self._pending) >= self._active_limit:
            # a standing queue: its predicted wait here, then the models' queues, with
            # what runs here ahead of it (what waits here is in the predicted wait).
            # Not under our lock: a scheduler takes it while holding its own (sleep hooks).
            downstream = self._refused_downstream(time.monotonic() - len(self._pending) * self._start_interval_s,
                                                  self._running)
        with self._pool_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            pending = self._pending
            now_s = time.monotonic()
            if self._max_waiting is not None and len(pending) >= self._max_waiting:
                reason = (f"{len(pending)} requests are waiting for a handler thread "
                          f"({self._max_waiting_source.format(self._max_waiting)})")
            elif (self._max_wait_s and len(pending) >= self._active_limit
                  and now_s - self._last_idle_s > self._max_wait_s
                  and len(pending) * self._start_interval_s > self._max_wait_s):
                reason = (f"{len(pending)} requests are waiting for a handler thread, ~"
                          f"{len(pending) * self._start_interval_s * 1000:.0f} ms of work at one start every "
                          f"{self._start_interval_s * 1000:.1f} ms (max_queue_wait_ms={self._max_wait_s * 1000:g}, "
                          "--max-queue-wait-millis)")
            elif self._max_wait_s and pending and now_s - pending[0][4] > self._max_wait_s:
                reason = (f"the oldest request waiting has waited {(now_s - pending[0][4]) * 1000:.0f} ms "
                          f"for a handler thread (max_queue_wait_ms={self._max_wait_s * 1000:g}, "
                          "--max-queue-wait-millis)")
            elif downstream is not None:
                reason = downstream
            else:
                pending.append((future, fn, args, kwargs, now_s, False))
                self._receive_ahead(now_s)
                self._admit()
                return future
            self._last_refusal_s = now_s
        if _reject_unread(args, reason):
            future.set_result(None)
            return future
        with self._pool_lock:
            if self._refuser is None:
                self._refuser = futures.ThreadPoolExecutor(1, thread_name_prefix=f"{self._name_prefix}-refuse")
            refuser = self._refuser
        # Work that is not grpcio's unary call still needs a thread to be
        # refused from inside (the RPC handler answers RESOURCE_EXHAUSTED
        # before parsing anything), but not one of ours: the refuser runs it at
        # once with ``refusal()`` set.
        return refuser.submit(_refusing, reason, fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; queued work still runs unless ``cancel_futures``."""
        with self._pool_lock:
            self._closed = True
            if cancel_futures:
                while self._pending:
                    entry = self._pending.popleft()
                    if entry[5]:  # already running: back from being set aside
                        self._end_set_aside(entry, _STOPPING)
                    else:
                        entry[0].cancel()
                self._receiving_ahead = 0
            for entry in self._set_aside.values():
                self._end_set_aside(entry, _STOPPING)
            self._set_aside.clear()
            for idle in self._idle:
                idle.notify()
            threads = list(self._threads)
            if self._refuser is not None:
                self._refuser.shutdown(wait=False)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    # ---------------------------------------------------------------- implementation

    def _admit(self) -> None:
        """Wake or start threads for queued work while fewer than the limit run (lock held)."""
        wanted = min(len(self._pending), self._active_limit - self._running) - self._waking
        while wanted > 0:
            if self._idle:
                self._waking += 1
                self._idle.pop().notify()
            elif len(self._threads) < self._max_threads:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name_prefix}_{len(self._threads)}")
                self._threads.append(thread)
                self._waking += 1  # counts as on its way to the queue
                thread.start()
            else:
                return
            wanted -= 1

    def _receive_ahead(self, now_s: float) -> None:
        """Start the receive of the first queued call not yet receiving, if it is among the first
        ``receive_ahead`` queued and nothing was refused for ``RECEIVE_AHEAD_QUIET_S`` (lock held)."""
        pending = self._pending
        if (len(pending) > self._receiving_ahead < self._receive_ahead_limit
                and now_s - self._last_refusal_s > RECEIVE_AHEAD_QUIET_S):
            future, fn, args, kwargs, arrival_s, received = pending[self._receiving_ahead]
            pending[self._receiving_ahead] = (future, fn, _receiving(args, self._message_arrived), kwargs,
                                              arrival_s, received)
            self._receiving_ahead += 1

    def _message_arrived(self, rpc_state) -> None:
        """grpcio's poll thread: a call's message is in, or the call ended. A call set aside for it
        goes back to the front of the queue (it is the oldest there)."""
        if rpc_state not in self._set_aside:
            # the common case, without the lock: a call is set aside only while its message is not
            # in, under its condition, so one set aside before its message came is seen here
            return
        with self._pool_lock:
            entry = self._set_aside.pop(rpc_state, None)
            if entry is None:
                return
            if self._closed:
                self._end_set_aside(entry, _STOPPING)
                return
            self._pending.appendleft(entry)
            self._receiving_ahead += 1  # its receive is done: it belongs to the receiving front
            self._admit()

    def _set_aside_until_received(self, entry: tuple) -> tuple | None:
        """On the thread that took ``entry`` (lock not held): the work's arguments to run it with now,
        or None if its grpcio call's message was not in within ``MESSAGE_WAIT_S`` and the call was set
        aside (or refused: ``max_waiting`` are set aside already)."""
        future, fn, args, kwargs, arrival_s, _ = entry
        if not _receivable(args):
            return args
        if not _receive_started(args):
            args = _receiving(args, self._message_arrived)
        if _wait_message(args, MESSAGE_WAIT_S):
            return args
        rpc_state = args[2]
        with self._pool_lock, rpc_state.condition:
            # under the call's condition, which grpcio holds storing the message: it comes before
            # this check or after the set-aside, and then _message_arrived finds the call
            if _message_in(rpc_state):
                return args
            if len(self._set_aside) < self._max_set_aside and not self._closed:
                self._set_aside[rpc_state] = (future, fn, args, kwargs, arrival_s, True)
                return None
        _reject_unread(args, f"{self._max_set_aside} requests are still sending their messages "
                             f"({self._max_waiting_source.format(self._max_set_aside)})")
        future.set_result(None)
        return None

    def _end_set_aside(self, entry: tuple, reason: str) -> None:
        """Answer a call that was set aside UNAVAILABLE ``reason``; its future is done."""
        future, _, args, _, _, _ = entry
        _reject_unread(args, reason, grpc.StatusCode.UNAVAILABLE)
        future.set_result(None)

    def _note_start(self) -> None:
        """Time a start of queued work (lock held): the interval since the previous start counts
        only if work waited all along, i.e. the pool, not the arrivals, set the pace."""
        now_s = time.monotonic()
        if self._waited_after_start and self._last_start_s is not None:
            sample_s = now_s - self._last_start_s
            previous_s = self._start_interval_s
            self._start_interval_s = sample_s if previous_s == 0 else previous_s + START_EMA * (sample_s - previous_s)
        self._last_start_s = now_s
        self._waited_after_start = bool(self._pending)

    def _refused_downstream(self, arrival_s: float, ahead: int) -> str | None:
        """``wait_refusal(arrival_s, ahead)``; None without one, or if it fails (the request's own
        queue then decides)."""
        if self._wait_refusal is None:
            return None
        try:
            return self._wait_refusal(arrival_s, ahead)
        except Exception:  # noqa: BLE001 - a refusal hint must never lose a request
            log.exception("handler pool: wait_refusal failed")
            return None

    def _sleeping(self, expected_s: float) -> None:
        # A short nap keeps its place: admitting another thread for it would
        # cost a wake-up and one more thread contending for the GIL when the
        # batch answers (tiny requests' p50 was worse: benchmarks/RESULTS.md,
        # "Design measurements").
        if expected_s < self._min_sleep_s:
            return
        _current.gave_place = True
        with self._pool_lock:
            self._running -= 1
            self._admit()

    def _awake(self) -> None:
        if not getattr(_current, "gave_place", False):
            return
        _current.gave_place = False
        with self._pool_lock:
            self._running += 1

    def _work(self) -> None:
        set_sleep_hooks(self._sleeping, self._awake)
        lock = self._pool_lock
        wake = threading.Condition(lock)
        lock.acquire()
        self._waking -= 1
        try:
            while True:
                while not (self._pending and self._running < self._active_limit):
                    if self._closed and not self._pending:
                        return
                    if not self._pending:
                        self._last_idle_s = time.monotonic()
                    self._idle.append(wake)
                    wake.wait()
                    if wake in self._idle:  # woken by shutdown, not popped by _admit
                        self._idle.remove(wake)
                    else:
                        self._waking -= 1
                entry = self._pending.popleft()
                future, fn, args, kwargs, arrival_s, received = entry
                if self._receiving_ahead:
                    self._receiving_ahead -= 1
                self._receive_ahead(time.monotonic())
                ahead = self._running  # started before it, not yet in a batch queue (nor asleep in one)
                self._running += 1
                self._note_start()
                lock.release()
                try:
                    # a call back from being set aside is running already, and its receive is paid for
                    if received or future.set_running_or_notify_cancel():
                        _current.arrival_s = arrival_s
                        try:
                            # refused now, unread, if no model's queue would take it behind the
                            # requests started before it (it would be refused there after its receive)
                            reason = None if received else self._refused_downstream(arrival_s, ahead)
                            if reason is None:
                                if not received:
                                    args = self._set_aside_until_received(entry)
                                    if args is None:
                                        continue
                                future.set_result(fn(*args, **kwargs))
                            else:
                                self._last_refusal_s = time.monotonic()
                                if _reject_unread(args, reason):
                                    future.set_result(None)
                                else:
                                    future.set_result(_refusing(reason, fn, args, kwargs))
                        except BaseException as error:  # the future carries it, as ThreadPoolExecutor's do
                            future.set_exception(error)
                        finally:
                            _current.arrival_s = None
                    del future, fn, args, kwargs
                finally:
                    lock.acquire()
                    self._running -= 1
        finally:
            lock.release()


def request_arrival_s() -> float | None:
    """``time.monotonic()`` when the RPC running on this thread reached its pool, if known."""
    return getattr(_current, "arrival_s", None)


def _unread(args: tuple) -> tuple:
    """grpcio's RPC work of one request message with its receiving step replaced by an empty message.

    grpcio submits a unary RPC as ``(run, _unary_response_in_pool, rpc_event,
    state, behavior, receive_message, ...)``; its handler receives the message
    before it calls ours. A refused call needs none of it (``raw_handler``
    answers from ``refusal()`` alone), and with the HTTP/2 stream window
    ``grpc_stream_window_bytes`` grpc core has not received it either: skipping
    that step keeps the refusal's cost to a status (benchmarks/RESULTS.md,
    "Reliability"). Work of any other shape is returned unchanged.
    """
    if _one_message_in(args) and callable(args[4]):
        return args[:4] + (_empty_message,) + args[5:]
    return args


def _one_message_in(args: tuple) -> bool:
    """Whether the work is grpcio's for an RPC of one request message, unary or server-streaming
    (health Watch), whose message grpcio receives on the handler thread before the handler runs:
    ``(_unary_response_in_pool or _stream_response_in_pool, rpc_event, state, behavior,
    receive_message, ...)``, a server-streaming RPC's step being grpcio's ``unary_request`` (or
    ours, ``_receiving``'s), where a client-streaming RPC's hands over a request iterator."""
    if len(args) < 6 or _GRPC_UNARY_IN_POOL is None:
        return False
    if args[0] is _GRPC_UNARY_IN_POOL:
        return True
    return args[0] is _GRPC_STREAM_OUT_IN_POOL and (
        getattr(args[4], "__code__", None) is _GRPC_UNARY_REQUEST_CODE or _receive_started(args))


#: grpcio's runners of unary and server-streaming RPC work, and the code of its step receiving a
#: unary request (None if a grpcio release renames one: nothing is then swapped, set aside or refused)
_GRPC_UNARY_IN_POOL = getattr(_grpc_server, "_unary_response_in_pool", None)
_GRPC_STREAM_OUT_IN_POOL = getattr(_grpc_server, "_stream_response_in_pool", None)
try:
    # the closure grpcio builds per call; building one touches nothing
    _GRPC_UNARY_REQUEST_CODE = _grpc_server._unary_request(None, None, None).__code__
except (AttributeError, TypeError):
    _GRPC_UNARY_REQUEST_CODE = None
if _GRPC_STREAM_OUT_IN_POOL is None or _GRPC_UNARY_REQUEST_CODE is None:
    _GRPC_UNARY_IN_POOL = None


def _reject_unread(args: tuple, reason: str, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> bool:
    """Answer grpcio's unary RPC work ``code`` (RESOURCE_EXHAUSTED) ``reason`` here and now, unrun.

    As grpcio ends a call whose handler set a code: its status sent in one
    batch (with the initial metadata) started on the calling thread,
    grpcio's, with no hand-off to another thread, no handler and no context
    (cheaper than through the refusing thread; benchmarks/RESULTS.md,
    "Reliability"). False for work of any other shape, or a grpcio without
    these internals.
    """
    if _GRPC_STATUS is None or not _one_message_in(args):
        return False
    rpc_event, rpc_state = args[1], args[2]
    with rpc_state.condition:
        rpc_state.code = code
        rpc_state.details = reason.encode()[:_MAX_DETAILS_BYTES]
    _GRPC_STATUS(rpc_event, rpc_state, None)
    return True


#: grpcio's sender of a call's status (None if a grpcio release renames it: the refusing thread is used)
_GRPC_STATUS = getattr(_grpc_server, "_status", None)
_MAX_DETAILS_BYTES = 1024


def _receivable(args: tuple) -> bool:
    """Whether the work is grpcio's RPC of one request message (``_one_message_in``), whose message
    ``_receiving`` can receive and which ``_reject_unread`` can answer."""
    return _GRPC_RECEIVE is not None and _GRPC_STATUS is not None and _one_message_in(args)


def _receive_started(args: tuple) -> bool:
    """Whether ``_receiving`` started the receive of this grpcio work's one message."""
    step = args[4]
    return isinstance(step, functools.partial) and step.func is _received_message


def _message_in(rpc_state) -> bool:
    """Whether a grpcio call's message is in, or its call ended (then its work answers at once);
    its condition held."""
    return (rpc_state.request is not None or rpc_state.client is _grpc_server._CLOSED
            or not _grpc_server._is_rpc_state_active(rpc_state))


def _wait_message(args: tuple, timeout_s: float) -> bool:
    """``_message_in`` for the call whose receive ``_receiving`` started, waiting up to ``timeout_s``."""
    rpc_state = args[2]
    with rpc_state.condition:
        return _message_in(rpc_state) or rpc_state.condition.wait_for(lambda: _message_in(rpc_state), timeout_s)


def _receiving(args: tuple, on_arrival: Callable | None = None) -> tuple:
    """grpcio's unary RPC work with its message's receive started now, at admission.

    grpcio starts receiving a unary call's message when a handler thread runs
    it. With the small HTTP/2 stream window (``grpc_stream_window_bytes``)
    that keeps refused calls unread, a queued call has received only that
    window, so the thread that takes it would wait for the rest
    (benchmarks/RESULTS.md, "Receive ahead"). Started at admission, for the first few calls queued
    (``receive_ahead``: the memory held is at most that many messages), the
    message streams in while the call waits; calls refused stay unread. The
    step that then waits for the message (``_received_message``) replaces
    grpcio's own. ``on_arrival(rpc_state)`` is called on grpcio's poll thread
    once the message is in or the call ended. Work of any other shape, or a
    grpcio without these internals, is returned unchanged.
    """
    if not _receivable(args):
        return args
    rpc_event, rpc_state, deserializer = args[1], args[2], args[5]
    received = _GRPC_RECEIVE(rpc_state, rpc_event.call, deserializer)
    if on_arrival is not None:
        grpcio_received = received

        def received(event):
            outcome = grpcio_received(event)
            try:
                on_arrival(rpc_state)
            except Exception:  # noqa: BLE001 - grpcio's poll thread must go on
                log.exception("handler pool: a message's arrival was not handled")
            return outcome

    with rpc_state.condition:
        if not _grpc_server._is_rpc_state_active(rpc_state):
            return args
        rpc_event.call.start_server_batch((_grpc_server.cygrpc.ReceiveMessageOperation(0),), received)
        rpc_state.due.add(_grpc_server._RECEIVE_MESSAGE_TOKEN)
    return args[:4] + (functools.partial(_received_message, rpc_event, rpc_state),) + args[5:]


def _received_message(rpc_event, rpc_state):
    """The message whose receive ``_receiving`` started, once it is in (grpcio's ``unary_request``'s
    wait, checking first: the message may have arrived before this thread asks)."""
    with rpc_state.condition:
        rpc_state.condition.wait_for(lambda: _message_in(rpc_state))
        if rpc_state.request is not None:
            request, rpc_state.request = rpc_state.request, None
            return request
        if rpc_state.client is _grpc_server._CLOSED:
            # as grpcio: a unary call's client closed without its one message
            _grpc_server._abort(rpc_state, rpc_event.call, _grpc_server.cygrpc.StatusCode.unimplemented,
                                f'"{rpc_event.call_details.method}" requires exactly one request message.'
                                .encode())
        return None  # the call ended


#: grpcio's callback that stores a received message (None if a grpcio release renames one of the
#: internals ``_receiving`` uses: messages are then received when a thread runs the call)
_GRPC_RECEIVE = getattr(_grpc_server, "_receive_message", None)
if not all(hasattr(_grpc_server, name) for name in (
        "_is_rpc_state_active", "_RECEIVE_MESSAGE_TOKEN", "_CLOSED", "_abort", "cygrpc")):
    _GRPC_RECEIVE = None


def _empty_message() -> bytes:
    return b""


def _refusing(reason: str, fn, args, kwargs):
    args = _unread(args)
    _current.refusal = reason
    try:
        return fn(*args, **kwargs)
    finally:
        _current.refusal = None


def refusal() -> str | None:
    """Why the work running on this thread is to be refused unrun (its pool was full), or None."""
    return getattr(_current, "refusal", None)
