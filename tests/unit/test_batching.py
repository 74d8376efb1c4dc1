"""BatchScheduler behaviour on a fake clock: no sleeps decide any assertion."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from navi.batching import BatchScheduler, FakeClock, SchedulerClosed, split_rows
from navi.errors import DeadlineExceeded, Overloaded, RuntimeFailure
from navi.settings import BatchingSettings

WAIT_S = 10.0  # hang guard only: futures that should resolve do so at once


class Recorder:
    """A process_batch that doubles each request's rows and records batch shapes."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, tasks):
        with self.lock:
            self.batches.append([t.rows for t in tasks])
        merged = np.concatenate([t.payload for t in tasks])
        outputs = {"y": merged * 2, "n": np.arange(len(merged))}
        return split_rows(outputs, [t.rows for t in tasks])


def make(clock, **options):
    recorder = Recorder()
    defaults = {"batch_timeout_ms": 10.0, "batch_drop_ms": 0, "eager_when_idle": False}
    settings = BatchingSettings(**{**defaults, **options})
    return BatchScheduler(recorder, settings, clock=clock, name="m:1"), recorder


def payload(rows, value=1.0):
    return np.full((rows, 2), value, dtype=np.float32)


def test_closes_on_max_batch_size():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=3, batch_timeout_ms=1000)
    futures = [sched.submit(payload(1), 1) for _ in range(3)]
    for f in futures:
        f.result(WAIT_S)
    assert rec.batches == [[1, 1, 1]]
    sched.close()


def test_closes_on_max_batch_rows_and_oversize_runs_alone():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=100, max_batch_rows=10, batch_timeout_ms=1000)
    a, b, c = (sched.submit(payload(4), 4) for _ in range(3))
    a.result(WAIT_S), b.result(WAIT_S)
    assert rec.batches == [[4, 4]]
    assert not c.done() and sched.num_queued == 1
    clock.advance(1.0)
    c.result(WAIT_S)
    big = sched.submit(payload(15), 15)
    big.result(WAIT_S)
    assert rec.batches == [[4, 4], [4], [15]]
    sched.close()


def test_closes_when_first_request_waited_timeout():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=8, batch_timeout_ms=10)
    first = sched.submit(payload(1), 1)
    clock.advance(0.004)
    second = sched.submit(payload(2), 2)
    clock.advance(0.005)
    # 9 ms after the first request nothing may have run: time only moves by hand
    assert sched.num_queued == 2 and not first.done()
    clock.advance(0.001)
    first.result(WAIT_S), second.result(WAIT_S)
    assert rec.batches == [[1, 2]]
    sched.close()


def test_zero_timeout_takes_at_once():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=8, batch_timeout_ms=0)
    sched.submit(payload(1), 1).result(WAIT_S)
    assert rec.batches == [[1]]
    sched.close()


def test_outputs_split_back_per_request():
    clock = FakeClock()
    sched, _ = make(clock, max_batch_size=3, batch_timeout_ms=1000)
    futures = [sched.submit(payload(rows, value), rows) for rows, value in [(2, 1), (1, 5), (3, 7)]]
    results = [f.result(WAIT_S) for f in futures]
    assert [r["y"].shape for r in results] == [(2, 2), (1, 2), (3, 2)]
    assert np.all(results[0]["y"] == 2) and np.all(results[1]["y"] == 10)
    assert np.all(results[2]["y"] == 14)
    assert results[2]["n"].tolist() == [3, 4, 5]
    sched.close()


def test_request_waiting_past_drop_limit_is_shed_rest_runs():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=8, batch_timeout_ms=10, batch_drop_ms=5)
    old = sched.submit(payload(1), 1)
    clock.advance(0.008)
    fresh = sched.submit(payload(2), 2)
    clock.advance(0.002)
    with pytest.raises(Overloaded) as err:
        old.result(WAIT_S)
    assert err.value.code.value == "RESOURCE_EXHAUSTED"
    assert fresh.result(WAIT_S)["y"].shape == (2, 2)
    assert rec.batches == [[2]]
    sched.close()


def test_request_past_deadline_is_not_run():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=8, batch_timeout_ms=10)
    late = sched.submit(payload(1), 1, deadline_s=clock.monotonic() + 0.005)
    ok = sched.submit(payload(1), 1, deadline_s=clock.monotonic() + 1.0)
    clock.advance(0.010)
    with pytest.raises(DeadlineExceeded):
        late.result(WAIT_S)
    ok.result(WAIT_S)
    assert rec.batches == [[1]]
    sched.close()


def test_queue_bound_refuses_at_once():
    clock = FakeClock()
    sched, _ = make(clock, max_batch_size=8, max_queued_requests=2, batch_timeout_ms=10)
    queued = [sched.submit(payload(1), 1) for _ in range(2)]
    with pytest.raises(Overloaded):
        sched.submit(payload(1), 1)
    clock.advance(0.010)
    for f in queued:
        f.result(WAIT_S)
    sched.submit(payload(1), 1)  # room again
    sched.close()


def test_close_drains_every_accepted_request():
    clock = FakeClock()
    sched, rec = make(clock, max_batch_size=4, batch_timeout_ms=10_000, num_batch_threads=2)
    futures = [sched.submit(payload(1), 1) for _ in range(10)]
    sched.close()  # time never reaches the timeout: the drain alone runs them
    assert all(f.done() and f.exception() is None for f in futures)
    assert sum(len(b) for b in rec.batches) == 10
    with pytest.raises(SchedulerClosed):
        sched.submit(payload(1), 1)


def test_failing_batch_answers_every_request():
    def boom(tasks):
        raise ValueError("bad batch")

    clock = FakeClock()
    sched = BatchScheduler(boom, BatchingSettings(max_batch_size=2, batch_timeout_ms=5,
                                                  eager_when_idle=False),
                           clock=clock, name="m:1")
    futures = [sched.submit(None, 1) for _ in range(2)]
    for f in futures:
        with pytest.raises(RuntimeFailure, match="bad batch"):
            f.result(WAIT_S)
    sched.close()


def test_several_batches_in_flight():
    """Two workers run two batches at the same time (each waits for the other)."""
    both_running = threading.Barrier(2, timeout=WAIT_S)

    def process(tasks):
        both_running.wait()
        return [t.rows for t in tasks]

    clock = FakeClock()
    sched = BatchScheduler(process, BatchingSettings(max_batch_size=1, num_batch_threads=2,
                                                     inline_when_idle=False),
                           clock=clock, name="m:1")
    a, b = sched.submit(None, 1), sched.submit(None, 2)
    assert (a.result(WAIT_S), b.result(WAIT_S)) == (1, 2)
    sched.close()


def test_eager_when_idle_runs_at_once_then_accumulates_while_busy():
    release, started = threading.Event(), threading.Event()
    batches = []

    def process(tasks):
        batches.append([t.payload for t in tasks])
        started.set()
        if len(batches) == 1:
            release.wait(WAIT_S)  # hold the first batch until the others queued
        return [t.payload for t in tasks]

    clock = FakeClock()
    sched = BatchScheduler(
        process, BatchingSettings(max_batch_size=8, batch_timeout_ms=1000, num_batch_threads=2,
                                  eager_when_idle=True, inline_when_idle=False),
        clock=clock, name="m:1",
    )
    first = sched.submit("a", 1)  # the queue is idle: no waiting for company
    assert started.wait(WAIT_S)  # the first batch is running
    rest = [sched.submit(p, 1) for p in "bcd"]
    # one batch is running, so the second worker waits (time stands still)
    assert sched.num_queued == 3 and not any(f.done() for f in rest)
    release.set()
    assert first.result(WAIT_S) == "a" and [f.result(WAIT_S) for f in rest] == list("bcd")
    assert batches == [["a"], ["b", "c", "d"]]
    sched.close()


def test_inline_when_idle_runs_on_the_caller_then_queues_while_busy():
    release, started = threading.Event(), threading.Event()
    threads, batches = [], []

    def process(tasks):
        threads.append(threading.current_thread())
        batches.append([t.payload for t in tasks])
        if len(batches) == 1:
            started.set()
            release.wait(WAIT_S)  # hold the inline batch until the others queued
        return [t.payload for t in tasks]

    clock = FakeClock()
    sched = BatchScheduler(
        process, BatchingSettings(max_batch_size=8, batch_timeout_ms=1000, num_batch_threads=2),
        clock=clock, name="m:1",
    )
    caller = threading.Thread(target=lambda: batches.append(["result", sched.submit("a", 1).result(0)]))
    caller.start()
    assert started.wait(WAIT_S)
    rest = [sched.submit(p, 1) for p in "bc"]  # a batch is running: these queue for the workers
    assert sched.num_queued == 2 and not any(f.done() for f in rest)
    release.set()
    caller.join(WAIT_S)
    assert [f.result(WAIT_S) for f in rest] == ["b", "c"]
    assert threads[0] is caller and all(t is not caller for t in threads[1:])
    assert ["result", "a"] in batches and ["b", "c"] in batches
    sched.close()


def test_split_rows_rejects_wrong_first_axis():
    with pytest.raises(ValueError, match="first axis 3"):
        split_rows({"y": np.zeros((2, 1))}, [1, 2])


def _thread_recorder():
    threads, batches = [], []

    def process(tasks):
        threads.append(threading.current_thread())
        batches.append([t.payload for t in tasks])
        return [t.payload for t in tasks]

    return process, threads, batches


def test_a_waiting_caller_runs_its_own_batch():
    """run() queues and leads: the batch runs on the caller's thread, no worker hand-off."""
    process, threads, batches = _thread_recorder()
    sched = BatchScheduler(process, BatchingSettings(max_batch_size=4, batch_timeout_ms=0,
                                                     inline_when_idle=False),
                           clock=FakeClock(), name="m:1")
    assert sched.run("a", 1) == "a"
    assert batches == [["a"]] and threads == [threading.current_thread()]
    sched.close()


def test_the_caller_completing_a_batch_leads_it_for_everyone():
    """A second caller filling the batch takes it and answers the first, who slept."""
    process, threads, batches = _thread_recorder()
    clock = FakeClock()
    sched = BatchScheduler(process, BatchingSettings(max_batch_size=2, batch_timeout_ms=10_000,
                                                     eager_when_idle=False, num_batch_threads=1),
                           clock=clock, name="m:1")
    first_answer = []
    first = threading.Thread(target=lambda: first_answer.append(sched.run("a", 1)))
    first.start()
    while sched.num_queued == 0:  # the first caller queued and sleeps (time stands still)
        threading.Event().wait(0.001)
    second = threading.current_thread()
    assert sched.run("b", 1) == "b"  # the batch is full now: this caller takes and runs it
    first.join(WAIT_S)
    assert first_answer == ["a"] and batches == [["a", "b"]] and threads == [second]
    sched.close()


def test_a_caller_giving_up_leaves_its_task_to_the_workers():
    clock = FakeClock()
    process, threads, batches = _thread_recorder()
    sched = BatchScheduler(process, BatchingSettings(max_batch_size=8, batch_timeout_ms=1000,
                                                     batch_drop_ms=0, eager_when_idle=False),
                           clock=clock, name="m:1")
    task = sched.submit("a", 1)
    with pytest.raises(TimeoutError):
        task.result(0.05)  # the timeout has not passed on the scheduler's clock
    assert not task.done() and sched.num_queued == 1
    clock.advance(1.0)  # now a worker times the batch out and runs it: nobody else waits
    for _ in range(int(WAIT_S / 0.001)):
        if task.done():
            break
        threading.Event().wait(0.001)
    assert task.result(0) == "a"
    assert threads and threads[0].name.startswith("m:1-batch-")
    sched.close()


def test_close_waits_for_batches_led_by_callers():
    release, started = threading.Event(), threading.Event()

    def process(tasks):
        started.set()
        release.wait(WAIT_S)
        return [t.payload for t in tasks]

    sched = BatchScheduler(process, BatchingSettings(), clock=FakeClock(), name="m:1")
    caller = threading.Thread(target=lambda: sched.run("a", 1))
    caller.start()
    assert started.wait(WAIT_S)
    closer = threading.Thread(target=sched.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # the caller's batch still runs: the model must not go yet
    release.set()
    closer.join(WAIT_S)
    caller.join(WAIT_S)
    assert not closer.is_alive()


@pytest.mark.parametrize("max_batch_size,num_batch_threads,timeout_ms,eager", [
    (1, 1, 0, True), (4, 2, 1, True), (8, 2, 2, False), (16, 3, 0.5, True),
])
def test_many_callers_and_submitters_each_get_their_own_answer(max_batch_size, num_batch_threads,
                                                               timeout_ms, eager):
    """Real clock, real threads: callers that lead, callers that wait, futures nobody waits on."""
    in_flight, most_in_flight, lock = [0], [0], threading.Lock()

    def process(tasks):
        with lock:
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        try:
            assert len(tasks) <= max_batch_size
            return [task.payload * 10 for task in tasks]
        finally:
            with lock:
                in_flight[0] -= 1

    sched = BatchScheduler(process, BatchingSettings(max_batch_size=max_batch_size,
                                                     num_batch_threads=num_batch_threads,
                                                     batch_timeout_ms=timeout_ms, batch_drop_ms=0,
                                                     eager_when_idle=eager),
                           name="m:1")
    failures, submitted = [], []

    def caller(index):
        for k in range(60):
            value = index * 1000 + k
            try:
                if k % 5 == 0:  # a future, waited for later (or by nobody but a worker)
                    submitted.append((value, sched.submit(value, 1)))
                elif sched.run(value, 1) != value * 10:
                    failures.append(value)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures
    assert all(task.result(WAIT_S) == value * 10 for value, task in submitted)
    sched.close(WAIT_S)
    assert most_in_flight[0] <= num_batch_threads


def test_time_waited_before_the_queue_is_not_shed_but_starts_the_timeout():
    """A request that waited for a handler thread (arrival_s in the past) is not shed for it:
    batch_drop_ms measures the batch queue. Its batch timeout counts from arrival_s."""
    clock = FakeClock()
    process, threads, batches = _thread_recorder()
    sched = BatchScheduler(process, BatchingSettings(batch_timeout_ms=100, batch_drop_ms=90,
                                                     eager_when_idle=False),
                           clock=clock, name="m:1")
    # waited 0.2 s before the queue: past both the drop and the timeout, runs at once
    assert sched.run("waited", 1, arrival_s=clock.monotonic() - 0.2) == "waited"
    assert batches == [["waited"]]
    sched.close()


def test_wait_behind_busy_slots_is_not_shed_wait_with_a_free_slot_is():
    """batch_drop_ms counts queued time while a batch slot was free, not time behind running batches."""
    clock = FakeClock()
    started, release = threading.Event(), threading.Event()

    def process(tasks):
        if tasks[0].payload == "long":
            started.set()
            release.wait(WAIT_S)
        return [t.payload for t in tasks]

    sched = BatchScheduler(process, BatchingSettings(num_batch_threads=1, batch_timeout_ms=50,
                                                     batch_drop_ms=90, eager_when_idle=False),
                           clock=clock, name="m:1")
    long = sched.submit("long", 1)
    clock.advance(0.05)  # its timeout: a worker takes it, the only slot is busy
    assert started.wait(WAIT_S)
    behind = sched.submit("behind", 1)
    clock.advance(0.5)  # 500 ms behind the running batch: not counted
    release.set()
    assert long.result(WAIT_S) == "long"
    assert behind.result(WAIT_S) == "behind"
    sched.close()
    # a queue left alone with its slot free (a 200 ms timeout > the 90 ms drop) is shed
    lonely_sched = BatchScheduler(process, BatchingSettings(num_batch_threads=1, batch_timeout_ms=200,
                                                            batch_drop_ms=90, eager_when_idle=False),
                                  clock=clock, name="m:2")
    lonely = lonely_sched.submit("lonely", 1)
    clock.advance(0.2)
    with pytest.raises(Overloaded, match="slot free"):
        lonely.result(WAIT_S)
    lonely_sched.close()


def test_admit_refuses_what_submit_would_refuse():
    clock = FakeClock()
    sched, _ = make(clock, max_queued_requests=1, batch_timeout_ms=1000)
    sched.admit()
    queued = sched.submit(payload(1), 1)
    with pytest.raises(Overloaded, match="--max-queued-requests"):
        sched.admit()
    sched.close()
    assert queued.result(WAIT_S)["y"].shape == (1, 2)
    with pytest.raises(SchedulerClosed):
        sched.admit()


class GatedBatches:
    """A process_batch that blocks each batch until released, while the test moves the fake clock."""

    def __init__(self):
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def __call__(self, tasks):
        self.started.release()
        assert self.release.acquire(timeout=WAIT_S)
        merged = np.concatenate([t.payload for t in tasks])
        return split_rows({"y": merged}, [t.rows for t in tasks])


def measured_scheduler(run_s, **batching):
    """A scheduler of gated batches whose recent batch time is one 1-row batch of ``run_s`` (fake clock)."""
    clock = FakeClock()
    gated = GatedBatches()
    settings = BatchingSettings(batch_timeout_ms=0, batch_drop_ms=0, inline_when_idle=False, **batching)
    sched = BatchScheduler(gated, settings, clock=clock, name="m:1")
    first = start_batch(sched, gated)
    clock.advance(run_s)
    gated.release.release()
    first.result(WAIT_S)
    return sched, gated, clock


def finish(sched, gated, batches, tasks):
    """Let ``batches`` gated batches run, check every task of ``tasks`` was answered, and close."""
    for _ in range(batches):
        gated.release.release()
    for task in tasks:
        task.result(WAIT_S)
    sched.close()


def start_batch(sched, gated, rows=1):
    """Submit ``rows`` rows and wait until their batch runs (a slot was free); the task."""
    task = sched.submit(payload(rows), rows)
    assert gated.started.acquire(timeout=WAIT_S)
    return task


@pytest.mark.parametrize("max_queue_wait_ms,refused", [(100, True), (1000, False), (0, False)])
def test_admission_refuses_when_the_wait_for_a_slot_would_be_too_long(max_queue_wait_ms, refused):
    """Estimated wait = what is left of the running batch, plus rounds of queued batches (recent time per
    row); the next batch taken is never refused."""
    sched, gated, clock = measured_scheduler(0.2, max_batch_size=2, num_batch_threads=1,
                                             max_queue_wait_ms=max_queue_wait_ms)
    running = start_batch(sched, gated)
    # the next batch's two places: taken when the only slot frees, in ~200 ms, yet never refused
    waiting = [sched.submit(payload(1), 1) for _ in range(2)]
    if refused:
        # a third joins the batch after: 200 ms + that 2-row batch at 200 ms a row
        with pytest.raises(Overloaded, match="--max-queue-wait-millis"):
            sched.admit()
        with pytest.raises(Overloaded, match="~600 ms more"):
            sched.submit(payload(1), 1)
        clock.advance(0.15)  # what is left of the running batch shrinks
        with pytest.raises(Overloaded, match="~450 ms more"):
            sched.admit()
    else:
        waiting.append(sched.submit(payload(1), 1))
    for _ in range(1 + -(-len(waiting) // 2)):
        gated.release.release()
    for task in [running, *waiting]:
        task.result(WAIT_S)
    sched.admit()  # the queue is empty again: admitted
    sched.close()


def test_admission_counts_the_wait_before_the_queue():
    """A request that already waited (for a server thread) has that much less of the bound left."""
    sched, gated, clock = measured_scheduler(0.02, max_batch_size=1, num_batch_threads=1, max_queue_wait_ms=100)
    running = start_batch(sched, gated)
    queued = sched.submit(payload(1), 1)  # the next batch
    # a newcomer's batch starts in ~20 ms (the running one) + ~20 ms (the queued one)
    sched.admit(arrival_s=clock.monotonic() - 0.05)  # 50 + 40 <= 100: admitted
    with pytest.raises(Overloaded, match="waited 70 ms and would wait ~40 ms more"):
        sched.admit(arrival_s=clock.monotonic() - 0.07)
    finish(sched, gated, 2, (running, queued))


def test_admission_with_two_slots_follows_the_sooner_then_the_later_batch():
    """Batch k after the queued ones waits for the (k mod slots)-th soonest end; max_batch_rows counts too."""
    sched, gated, clock = measured_scheduler(0.2, max_batch_size=16, max_batch_rows=4, num_batch_threads=2,
                                             max_queue_wait_ms=100)
    older = start_batch(sched, gated)
    clock.advance(0.15)  # the older batch ends in ~50 ms
    younger = start_batch(sched, gated)
    clock.advance(0.01)  # ~40 ms and ~190 ms left
    # 4 rows fill the next batch (rows, not requests, close it here): it follows the older one
    waiting = [sched.submit(payload(2), 2) for _ in range(2)]
    # the next request's batch follows the younger one: ~190 ms
    with pytest.raises(Overloaded, match="~190 ms more"):
        sched.admit()
    finish(sched, gated, 3, [older, younger, *waiting])


def test_an_admitted_request_is_not_refused_by_the_wait_bound_after_its_parse():
    """admit() decides before the parse; run(admitted=True) keeps only the queue's other limits."""
    sched, gated, clock = measured_scheduler(0.2, max_batch_size=1, num_batch_threads=1, max_queue_wait_ms=100,
                                             max_queued_requests=2)
    running = start_batch(sched, gated)
    queued = sched.submit(payload(1), 1)  # the next batch
    with pytest.raises(Overloaded, match="for a batch slot"):
        sched.admit()  # its batch would start in ~400 ms
    answers = []
    admitted = threading.Thread(target=lambda: answers.append(sched.run(payload(1), 1, admitted=True)))
    admitted.start()
    while sched.num_queued < 2:
        time.sleep(0.001)
    with pytest.raises(Overloaded, match="for a batch slot"):
        sched.submit(payload(1), 1)  # not admitted: the wait bound applies
    with pytest.raises(Overloaded, match="--max-queued-requests"):
        sched.run(payload(1), 1, admitted=True)  # admitted: the count limit still applies
    for _ in range(3):
        gated.release.release()
    for task in (running, queued):
        task.result(WAIT_S)
    admitted.join(WAIT_S)
    assert answers and answers[0]["y"].shape == (1, 2)
    sched.close()
