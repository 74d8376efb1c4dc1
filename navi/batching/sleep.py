"""Telling a thread's pool that the thread sleeps until its batch answers.

A request handler thread that waits for a batch someone else runs uses no
CPU; a pool that knows it can let another request in meanwhile, so requests
keep joining batches while the number of threads running Python stays at
the cores (``navi.server.threads.HandlerPool``). The scheduler calls
``sleeping()`` before such a wait and ``awake()`` after it; on a thread
whose pool registered no hooks both do nothing. Kept here, below the server,
so the scheduler needs to know nothing of thread pools.
"""
from __future__ import annotations

import threading
from typing import Callable

class _Hooks(threading.local):
    hooks: tuple[Callable[[float], None], Callable[[], None]] | None = None  # a thread without: None


_local = _Hooks()


def set_sleep_hooks(on_sleep: Callable[[float], None], on_wake: Callable[[], None]) -> None:
    """Register what the calling thread's pool does when the thread sleeps (for about so many seconds) and wakes."""
    _local.hooks = (on_sleep, on_wake)


def sleeping(expected_s: float) -> None:
    """The calling thread is about to wait about ``expected_s`` for an answer (it must call ``awake`` after)."""
    hooks = _local.hooks
    if hooks is not None:
        hooks[0](expected_s)


def awake() -> None:
    """The calling thread's wait, announced with ``sleeping``, is over."""
    hooks = _local.hooks
    if hooks is not None:
        hooks[1]()
