"""Clocks for the batch scheduler: the real one and a fake for tests.

The scheduler never calls ``time`` or ``Condition.wait`` directly; it asks a
clock (TF Serving's ``Env*`` idea), so tests move time by hand and assert
exactly when a batch closes without sleeping.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the scheduler needs from time: read it and wait on a condition."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        """Wait on ``cond`` (held by the caller) until notified or ``timeout_s`` passed.

        May return early (spuriously); callers re-check their predicate.
        """


class SystemClock:
    """The real clock: ``time.monotonic`` and ``Condition.wait`` with a timeout."""

    def monotonic(self) -> float:
        """Seconds from ``time.monotonic()``."""
        return time.monotonic()

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        """Block on ``cond`` for at most ``timeout_s`` real seconds (None = until notified)."""
        cond.wait(timeout_s)


class FakeClock:
    """A clock that moves only when ``advance`` is called.

    Threads waiting through ``wait`` are woken by every ``advance`` (and by
    ordinary notifications of their condition) and re-check their predicate
    against the new time; real time never makes a timeout fire.
    """

    def __init__(self, start_s: float = 1000.0):
        self._now_s = start_s
        self._lock = threading.Lock()
        self._conds: set[threading.Condition] = set()

    def monotonic(self) -> float:
        """The fake time in seconds."""
        with self._lock:
            return self._now_s

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        """Wait on ``cond`` until notified or until the next ``advance``."""
        with self._lock:
            # Registered while the caller still holds ``cond``: ``advance`` has to
            # take ``cond`` to notify, so it cannot slip in before we wait.
            self._conds.add(cond)
        # The real-time guard only bounds a lost wakeup in a broken test; the
        # caller re-checks its predicate on the fake time after every return.
        cond.wait(5.0)

    def advance(self, delta_s: float) -> None:
        """Move time forward by ``delta_s`` seconds and wake every waiter."""
        with self._lock:
            self._now_s += delta_s
            conds = list(self._conds)
        for cond in conds:
            with cond:
                cond.notify_all()
