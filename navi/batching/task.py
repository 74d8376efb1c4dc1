"""One request's share of a batch, and the handle its caller waits on."""
from __future__ import annotations

from typing import Any

# task states: waiting in its queue, taken into a batch, answered
QUEUED, TAKEN, DONE = 0, 1, 2


class BatchTask:
    """A queued request: its payload, its row count and when it must be answered.

    ``rows`` is the request's size in a batch (TF's ``BatchTask::size()``):
    the number of rows it adds to the batch's first axis. ``arrival_s`` and
    ``deadline_s`` are on the scheduler's clock; ``deadline_s`` None = none.

    It is also the request's future: ``result()``, ``exception()`` and
    ``done()`` as on ``concurrent.futures.Future``. Waiting through a
    scheduler lets the waiting thread run due batches itself (see
    ``BatchScheduler``), so a lone waiter is never a hand-off away from its
    answer. A task made outside a scheduler (``ServedModel.run_now``) is only
    a record of the request.
    """

    __slots__ = ("payload", "rows", "arrival_s", "deadline_s", "state", "owned", "waiter",
                 "queued_s", "slots_busy_mark_s", "_value", "_error", "_scheduler")

    def __init__(self, payload: Any, rows: int, arrival_s: float, deadline_s: float | None = None,
                 scheduler: Any = None):
        self.payload = payload
        self.rows = rows
        self.arrival_s = arrival_s
        self.deadline_s = deadline_s
        self.state = QUEUED
        # when it entered its queue, and the queue's all-slots-busy total then
        # (scheduler clock): what batch_drop_ms measures (see BatchScheduler)
        self.queued_s = arrival_s
        self.slots_busy_mark_s = 0.0
        # whether a thread waits (or is about to wait) for this task's answer
        self.owned = False
        # the Condition of the thread blocked on this task, if any (scheduler-owned)
        self.waiter = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._scheduler = scheduler

    def done(self) -> bool:
        """Whether the task has its answer (a result or an error)."""
        return self.state == DONE

    def result(self, timeout_s: float | None = None) -> Any:
        """The task's result; raises its error, or ``TimeoutError`` after ``timeout_s`` seconds."""
        error = self.exception(timeout_s)
        if error is not None:
            raise error
        return self._value

    def exception(self, timeout_s: float | None = None) -> BaseException | None:
        """The task's error (None on success), waiting as ``result`` does."""
        if self.state != DONE:
            if self._scheduler is None:
                raise RuntimeError("this task belongs to no scheduler and was never answered")
            self._scheduler.wait_for(self, timeout_s)
        return self._error

    def settle(self, value: Any, error: BaseException | None) -> None:
        """Record the answer and wake the waiting thread (the scheduler holds its lock)."""
        self._value = value
        self._error = error
        self.state = DONE
        if self.waiter is not None:
            self.waiter.notify()
