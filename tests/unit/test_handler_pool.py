"""navi.server.threads.HandlerPool: admission by running threads, sleeping in batches, stamps."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import pytest

from navi.batching import BatchScheduler
from navi.batching.clock import FakeClock
from navi.server.threads import HandlerPool, request_arrival_s
from navi.settings import BatchingSettings

WAIT_S = 10.0  # hang guard only


def test_the_pool_stamps_when_work_arrived():
    assert request_arrival_s() is None
    with HandlerPool(1, 1) as pool:
        before = time.monotonic()
        stamped = pool.submit(request_arrival_s).result(WAIT_S)
        after = pool.submit(lambda: time.monotonic()).result(WAIT_S)
    assert before <= stamped <= after
    assert request_arrival_s() is None


def test_at_most_the_active_limit_runs_busy_work():
    release = threading.Event()
    lock = threading.Lock()
    now = [0]
    peak = [0]
    two_started = threading.Barrier(3)

    def busy(i):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        if i < 2:
            two_started.wait(WAIT_S)
        release.wait(WAIT_S)
        with lock:
            now[0] -= 1
        return i

    pool = HandlerPool(2, 8)
    try:
        done = [pool.submit(busy, i) for i in range(6)]
        two_started.wait(WAIT_S)
        # Threads are started or woken only inside submit (or when a running one
        # finishes or sleeps, which none has): a third admitted by mistake would
        # already exist, and would have taken work off the queue.
        assert (pool.running, pool.threads, pool.waiting, peak[0]) == (2, 2, 4, 2)
        release.set()
        assert [f.result(WAIT_S) for f in done] == list(range(6))
        assert peak[0] == 2 and pool.threads <= 8
    finally:
        release.set()
        pool.shutdown()
    assert pool.running == 0


def test_errors_reach_the_future_and_shutdown_refuses_new_work():
    pool = HandlerPool(1, 2)
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(WAIT_S)
    assert pool.submit(lambda: "still serving").result(WAIT_S) == "still serving"
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_cancel_futures_drops_queued_work():
    release = threading.Event()
    pool = HandlerPool(1, 1)
    running = pool.submit(release.wait, WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while pool.running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert running.result(WAIT_S) is True
    assert queued.cancelled()
    pool.shutdown()


def batching_queue(max_batch_size, timeout_ms, batches, clock=None):
    options = BatchingSettings(max_batch_size=max_batch_size, batch_timeout_ms=timeout_ms, batch_drop_ms=0,
                               eager_when_idle=False, num_batch_threads=1)

    def process(tasks):
        batches.append(len(tasks))
        return [t.payload for t in tasks]

    return BatchScheduler(process, options, clock=clock)


def test_a_thread_asleep_in_a_batch_lets_the_next_request_in():
    """One running thread, yet three requests share a batch: each waiter gives its place up."""
    batches: list[int] = []
    # on a clock nobody moves the batch timeout never fires: the batch can close on its size only
    sched = batching_queue(3, 5_000, batches, clock=FakeClock())
    pool = HandlerPool(1, 4)
    try:
        answers = [pool.submit(sched.run, i, 1) for i in range(3)]
        assert [f.result(WAIT_S) for f in answers] == [0, 1, 2]
        # the batch closed on its size (its timeout is on a clock nobody moves)
        assert batches == [3]
    finally:
        sched.close()
        pool.shutdown()


def test_threads_holding_requests_stop_at_max_threads():
    batches: list[int] = []
    sched = batching_queue(3, 300, batches)
    pool = HandlerPool(1, 2)
    try:
        answers = [pool.submit(sched.run, i, 1) for i in range(3)]
        assert [f.result(WAIT_S) for f in answers] == [0, 1, 2]
        # two threads hold two requests; the third waits for one of them
        assert batches == [2, 1] and pool.threads == 2
    finally:
        sched.close()
        pool.shutdown()


@pytest.mark.parametrize("timeout_ms,max_batch_size", [(0.0, 4), (1.0, 8), (20.0, 16)])
def test_many_requests_through_pool_and_scheduler(timeout_ms, max_batch_size):
    batches: list[int] = []
    sched = batching_queue(max_batch_size, timeout_ms, batches)
    pool = HandlerPool(2, 16)
    try:
        answers = [pool.submit(sched.run, i, 1) for i in range(300)]
        assert [f.result(WAIT_S) for f in answers] == list(range(300))
        assert sum(batches) == 300 and max(batches) <= max_batch_size
    finally:
        sched.close()
        pool.shutdown()
    assert pool.running == 0 and pool.threads <= 16


def test_grpcio_takes_it_as_its_pool():
    # grpcio picks a handler's experimental_thread_pool only if it is a ThreadPoolExecutor
    assert isinstance(HandlerPool(1, 1), futures.ThreadPoolExecutor)


def test_a_short_sleep_keeps_its_place():
    """A wait expected shorter than min_sleep_s admits nobody: each request then batches alone."""
    batches: list[int] = []
    sched = batching_queue(3, 200, batches)
    pool = HandlerPool(1, 4, min_sleep_s=1.0)
    try:
        answers = [pool.submit(sched.run, i, 1) for i in range(3)]
        assert [f.result(WAIT_S) for f in answers] == [0, 1, 2]
        assert batches == [1, 1, 1] and pool.threads == 1
    finally:
        sched.close()
        pool.shutdown()


def test_the_scheduler_expects_about_one_batch_run_per_sleep():
    """Followers of a running batch announce a sleep of one batch run (the scheduler's clock measures it)."""
    from navi.batching import sleep

    announced: list[float] = []
    slow_started, release = threading.Event(), threading.Event()
    clock = FakeClock()
    options = BatchingSettings(max_batch_size=1, batch_timeout_ms=0, batch_drop_ms=0, num_batch_threads=1)

    def process(tasks):
        if tasks[0].payload == "slow":
            slow_started.set()
            release.wait(WAIT_S)
        clock.advance(0.05)  # every batch runs 50 ms of the scheduler's time
        return [t.payload for t in tasks]

    sched = BatchScheduler(process, options, clock=clock)
    try:
        assert sched.run("first", 1) == "first"  # one batch of 50 ms measured

        def caller():
            sleep.set_sleep_hooks(announced.append, lambda: None)
            return sched.run("second", 1)

        slow = threading.Thread(target=sched.run, args=("slow", 1))
        slow.start()
        assert slow_started.wait(WAIT_S)
        with futures.ThreadPoolExecutor(1) as side:
            waiter = side.submit(caller)
            deadline = time.monotonic() + WAIT_S  # hang guard: waits for the caller to queue
            while not announced and time.monotonic() < deadline:
                time.sleep(0.001)
            release.set()
            assert waiter.result(WAIT_S) == "second"
        slow.join(WAIT_S)
        # queued behind the running batch (no slot free): the rest of that batch, at most one
        # run, then its own run; with a zero batch timeout that is exactly one measured run
        assert announced[0] == pytest.approx(0.05)
    finally:
        release.set()
        sched.close()


def test_light_load_after_a_burst_stays_on_the_most_recently_idle_thread():
    """Work goes to the thread idle the shortest time (its state still in cache), not round the pool."""
    from navi.batching import sleep

    release = threading.Event()

    def waits_in_a_batch():
        sleep.sleeping(1.0)  # a long wait: the place goes to the next request
        try:
            release.wait(WAIT_S)
        finally:
            sleep.awake()
        return threading.get_ident()

    pool = HandlerPool(2, 8)
    try:
        burst = [pool.submit(waits_in_a_batch) for _ in range(8)]
        deadline = time.monotonic() + WAIT_S
        while pool.holding < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        # all eight hold a request, none counts as running: each sleeps in its "batch"
        assert (pool.threads, pool.holding, pool.running) == (8, 8, 0)
        release.set()
        assert len({f.result(WAIT_S) for f in burst}) == 8
        deadline = time.monotonic() + WAIT_S  # hang guard: waits for every thread to be idle again
        while pool.holding and time.monotonic() < deadline:
            time.sleep(0.001)
        used = {pool.submit(threading.get_ident).result(WAIT_S) for _ in range(20)}
        assert len(used) == 1 and pool.threads == 8 and pool.holding == 0
    finally:
        release.set()
        pool.shutdown()


def test_work_past_the_waiting_bound_runs_at_once_marked_refused():
    """Past max_waiting, work does not queue: it runs on a thread of its own with refusal() set."""
    from navi.server.threads import refusal

    release = threading.Event()
    pool = HandlerPool(1, 1, max_waiting=2)
    try:
        running = threading.Event()
        held = pool.submit(lambda: (running.set(), release.wait(WAIT_S)))
        assert running.wait(WAIT_S)  # taken off the queue: it no longer waits
        waiting = [pool.submit(refusal) for _ in range(2)]  # wait for the one thread
        refused = pool.submit(refusal)
        reason = refused.result(WAIT_S)  # answered while the pool's thread is still held
        assert "--grpc-max-waiting-requests" in reason and not held.done()
        release.set()
        assert [f.result(WAIT_S) for f in waiting] == [None, None]
    finally:
        release.set()
        pool.shutdown()


def test_while_the_oldest_waiting_work_is_past_the_time_bound_new_work_is_refused_but_queued_work_runs():
    """max_wait_s counts from arrival: while the oldest waiting work is past the bound, new
    work is refused at once, unqueued; work already queued runs whatever it waited."""
    from navi.server.threads import refusal

    release = threading.Event()
    pool = HandlerPool(1, 1, max_wait_s=1e-6)
    try:
        running = threading.Event()
        held = pool.submit(lambda: (running.set(), release.wait(WAIT_S)))
        assert running.wait(WAIT_S)
        late = pool.submit(refusal)  # waits for the one thread, far past 1 µs
        time.sleep(0.01)  # not a timing assertion: only makes the wait certainly pass 1 µs
        behind = pool.submit(refusal)
        reason = behind.result(WAIT_S)  # answered while the pool's thread is still held
        assert "the oldest request waiting has waited" in reason and "--max-queue-wait-millis" in reason
        assert not held.done() and pool.waiting == 1
        release.set()
        assert late.result(WAIT_S) is None  # queued before the bound was passed: served, not refused
    finally:
        release.set()
        pool.shutdown()


def _serve_on(pool: HandlerPool, behavior, window_bytes: int = 0):
    """A real grpcio server running ``behavior`` as /t.S/Call on ``pool``; returns (server, port).
    ``window_bytes``: navi's HTTP/2 stream window (0: grpc's own)."""
    import grpc

    from navi.server.app import http2_window_options

    behavior.experimental_thread_pool = pool
    method = grpc.unary_unary_rpc_method_handler(behavior)
    server = grpc.server(futures.ThreadPoolExecutor(2), options=http2_window_options(window_bytes),
                         handlers=[grpc.method_handlers_generic_handler("t.S", {"Call": method})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_a_grpc_call_refused_by_the_pool_is_answered_without_receiving_its_message():
    """A real grpcio server: the refused call is answered RESOURCE_EXHAUSTED where grpcio hands it to
    the pool, its message unread and its handler never run."""
    import grpc

    from navi.server.rawrpc import raw_handler
    from navi.server.threads import refusal

    hold = threading.Event()
    held = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def behavior(request, context):
        held.set()
        hold.wait(WAIT_S)
        return b"ok"

    pool = HandlerPool(1, 1, max_waiting=1)
    handler = raw_handler(behavior, None, "Call")

    def recording(raw, context):  # what grpcio hands the handler
        seen.append((len(raw), refusal()))
        return handler(raw, context)

    server, port = _serve_on(pool, recording)
    payload = b"x" * 300_000
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/Call")
            first = call.future(payload, timeout=WAIT_S)
            assert held.wait(WAIT_S)
            queued = call.future(payload, timeout=WAIT_S)
            while pool.waiting < 1:
                time.sleep(0.001)
            with pytest.raises(grpc.RpcError) as refused:
                call(payload, timeout=WAIT_S)
            hold.set()
            assert first.result() == b"ok" and queued.result() == b"ok"
    finally:
        server.stop(None)
        pool.shutdown()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--grpc-max-waiting-requests" in refused.value.details()
    assert seen == [(len(payload), None)] * 2  # the two served; the refused one never reached it


def test_under_sustained_overload_new_work_is_refused_when_the_queue_ahead_would_take_past_the_bound():
    """max_wait_s against the queue's predicted start once a queue stands (not only the
    oldest's wait): work of ~50 ms arriving every ~10 ms against a 100 ms bound keeps about
    two queued once no thread has been idle for longer than the bound, where the oldest-wait rule alone
    lets ~10 (100 ms of arrivals) queue; a burst at an idle pool is queued whole."""
    from navi.server.threads import refusal

    def work():
        time.sleep(0.05)
        return refusal()

    pool = HandlerPool(1, 1, max_wait_s=0.1)
    try:
        burst = [pool.submit(work) for _ in range(4)]  # 150 ms of queue at once: not refused
        assert [future.result(WAIT_S) for future in burst] == [None] * 4
        arrivals, most_waiting, started = [], 0, time.monotonic()
        for _ in range(70):
            arrivals.append(pool.submit(work))
            # by now the ~8 queued while the backlog was younger than the bound have drained
            if time.monotonic() - started > 0.5:
                most_waiting = max(most_waiting, pool.waiting)
            time.sleep(0.01)
        answers = [future.result(WAIT_S) for future in arrivals]
        refused = [reason for reason in answers if reason is not None]
        # a slower machine measures longer intervals and refuses more, never fewer
        assert most_waiting <= 4 and len(refused) >= 40
        assert any("requests are waiting for a handler thread" in reason and "ms of work at one start every" in reason
                   and "--max-queue-wait-millis" in reason for reason in refused)
    finally:
        pool.shutdown()


def test_work_no_model_queue_would_take_is_refused_unread_when_a_thread_takes_it():
    """wait_refusal(arrival_s, ahead) is asked as a thread takes work (ahead: work started before it and
    still running); a reason refuses the work there, unread; a failing hook refuses nothing."""
    from navi.server.threads import refusal

    asked = []
    verdicts = iter([None, "m:1: the request would wait ~300 ms more for a batch slot", None])

    def wait_refusal(arrival_s, ahead):
        asked.append((arrival_s, ahead))
        verdict = next(verdicts, None)
        if verdict == "boom":
            raise RuntimeError(verdict)
        return verdict

    release = threading.Event()
    pool = HandlerPool(2, 4, wait_refusal=wait_refusal)
    try:
        running = threading.Event()
        held = pool.submit(lambda: (running.set(), release.wait(WAIT_S)))
        assert running.wait(WAIT_S)
        refused = pool.submit(refusal).result(WAIT_S)
        served = pool.submit(refusal).result(WAIT_S)
        assert "~300 ms more for a batch slot" in refused and served is None
        # the held work was running when the other two were taken: one ahead of each
        assert [ahead for _, ahead in asked] == [0, 1, 1]
        assert all(arrival_s <= time.monotonic() for arrival_s, _ in asked)
        verdicts = iter(["boom"])
        assert pool.submit(refusal).result(WAIT_S) is None  # the hook failed: served, not lost
        release.set()
        held.result(WAIT_S)
    finally:
        release.set()
        pool.shutdown()


def test_a_queued_grpc_call_receives_its_message_while_it_waits():
    """A real grpcio server with navi's small stream window: the message of a call queued for a
    thread streams in while it waits (not only once a thread asks), it is served whole, and a
    queued call whose deadline passes meanwhile ends without holding the thread."""
    import grpc

    hold = threading.Event()
    held = threading.Event()

    def behavior(request, context):
        held.set()
        hold.wait(WAIT_S)
        return str(len(request)).encode()

    pool = HandlerPool(1, 1, max_waiting=4)
    server, port = _serve_on(pool, behavior, window_bytes=65536)
    payload = b"x" * 1_000_000
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/Call")
            first = call.future(b"1", timeout=WAIT_S)
            assert held.wait(WAIT_S)
            queued = call.future(payload, timeout=WAIT_S)
            expiring = call.future(payload, timeout=0.5)
            deadline = time.monotonic() + WAIT_S
            while pool.waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            rpc_state = pool._pending[0][2][2]  # grpcio's state of the first queued call
            while rpc_state.request is None and time.monotonic() < deadline:
                time.sleep(0.001)
            assert rpc_state.request == payload  # all 1 MB in, while the only thread is busy
            with pytest.raises(grpc.RpcError) as expired:
                expiring.result()
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            hold.set()
            assert first.result() == b"1" and queued.result() == b"1000000"
            assert call(payload, timeout=WAIT_S) == b"1000000"
    finally:
        hold.set()
        server.stop(None)
        pool.shutdown()


def test_after_a_refusal_queued_grpc_calls_stay_unread_until_a_thread_takes_them(monkeypatch):
    """Under overload (a refusal within RECEIVE_AHEAD_QUIET_S) a queued call's receive is not
    started ahead: one the pool refuses when a thread takes it then costs no receive."""
    import grpc
    from grpc import _server as grpc_server

    from navi.server import threads

    monkeypatch.setattr(threads, "RECEIVE_AHEAD_QUIET_S", 60.0)  # a slow machine stays inside it

    gate = threading.Semaphore(0)
    started = threading.Semaphore(0)

    def behavior(request, context):
        started.release()
        gate.acquire(timeout=WAIT_S)
        return str(len(request)).encode()

    pool = HandlerPool(1, 1, max_waiting=1, receive_ahead=4)
    server, port = _serve_on(pool, behavior, window_bytes=65536)
    payload = b"x" * 300_000

    def queued_state():
        deadline = time.monotonic() + WAIT_S
        while pool.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        # under the pool's lock: a call is queued and its receive started (or not) in one step
        # of submit, and read between the two it looked unread (a fresh-clone CI run failed so)
        with pool._pool_lock:
            return pool._pending[0][2][2]  # grpcio's state of the queued call

    def receiving(rpc_state) -> bool:  # its receive started: pending, or the message already in
        return rpc_state.request is not None or grpc_server._RECEIVE_MESSAGE_TOKEN in rpc_state.due

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/Call")
            first = call.future(b"1", timeout=WAIT_S)
            assert started.acquire(timeout=WAIT_S)
            before = call.future(payload, timeout=WAIT_S)
            assert receiving(queued_state())  # no refusal yet: received ahead
            with pytest.raises(grpc.RpcError) as refused:
                call(payload, timeout=WAIT_S)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.release()  # the first ends; the thread takes the call queued before the refusal
            assert started.acquire(timeout=WAIT_S)
            after = call.future(payload, timeout=WAIT_S)
            assert not receiving(queued_state())  # unread while it waits
            gate.release()
            gate.release()
            assert first.result() == b"1"
            assert before.result() == after.result() == b"300000"
    finally:
        for _ in range(3):
            gate.release()
        server.stop(None)
        pool.shutdown()


class _RawStreams:
    """A raw HTTP/2 connection that opens gRPC streams and sends their messages when told: a client
    that sends a call's headers and holds its message back (navi.bench.h2grpc's frames)."""

    def __init__(self, port: int):
        import socket

        import hpack

        from navi.bench.h2grpc import PREFACE, SETTINGS, frame

        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.settimeout(WAIT_S)
        self._sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self._encoder, self._decoder = hpack.Encoder(), hpack.Decoder()
        self._buffer = b""
        self.statuses: dict[int, tuple[str, str]] = {}  # stream -> (grpc-status, grpc-message)

    def open(self, stream_id: int) -> None:
        from navi.bench.h2grpc import END_HEADERS, HEADERS, frame, request_headers

        block = self._encoder.encode(request_headers("/t.S/Call", "127.0.0.1", None))
        self._sock.sendall(frame(HEADERS, END_HEADERS, stream_id, block))

    def send_message(self, stream_id: int, message: bytes) -> None:
        from navi.bench.h2grpc import DATA, END_STREAM, frame, grpc_body

        self._sock.sendall(frame(DATA, END_STREAM, stream_id, grpc_body(message)))

    def wait_status(self, stream_id: int) -> tuple[str, str]:
        """Read frames until ``stream_id``'s trailers came: its (grpc-status, grpc-message)."""
        from navi.bench.h2grpc import HEADERS

        while stream_id not in self.statuses:
            while len(self._buffer) < 9 or len(self._buffer) < 9 + int.from_bytes(self._buffer[:3], "big"):
                chunk = self._sock.recv(65536)
                assert chunk, "the server closed the connection"
                self._buffer += chunk
            length = int.from_bytes(self._buffer[:3], "big")
            frame_type, stream = self._buffer[3], int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload, self._buffer = self._buffer[9:9 + length], self._buffer[9 + length:]
            if frame_type == HEADERS:
                headers = dict(self._decoder.decode(payload))
                if "grpc-status" in headers:
                    self.statuses[stream] = (headers["grpc-status"], headers.get("grpc-message", ""))
        return self.statuses[stream_id]

    def close(self) -> None:
        self._sock.close()


def test_calls_whose_messages_do_not_come_hold_no_thread():
    """Streams that send their headers and hold their messages back are set aside, not run: the one
    running thread serves another client meanwhile; past max_waiting set aside, a call is refused
    RESOURCE_EXHAUSTED; a message sent late is served; closing the connection ends the rest. Before,
    the first such stream held the thread until its message came, and every other call waited."""
    import grpc

    def behavior(request, context):
        return str(len(request)).encode()

    pool = HandlerPool(1, 1, max_waiting=2)
    server, port = _serve_on(pool, behavior, window_bytes=65536)
    streams = _RawStreams(port)
    try:
        for stream_id, set_aside in ((1, 1), (3, 2)):
            streams.open(stream_id)
            deadline = time.monotonic() + WAIT_S
            while pool.set_aside < set_aside and time.monotonic() < deadline:
                time.sleep(0.001)
        streams.open(5)
        code, message = streams.wait_status(5)
        assert code == "8" and "still sending their messages" in message  # RESOURCE_EXHAUSTED
        assert pool.set_aside == 2
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary("/t.S/Call")(b"abc", timeout=3) == b"3"
        streams.send_message(1, b"late")
        assert streams.wait_status(1) == ("0", "")
        assert pool.set_aside == 1
        streams.close()
        deadline = time.monotonic() + WAIT_S
        while pool.set_aside and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.set_aside == 0
    finally:
        streams.close()
        server.stop(None)
        pool.shutdown()
