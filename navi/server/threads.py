"""Which threads run which RPCs.

grpcio's sync server runs every RPC on one thread pool, in arrival order. With
navi's few handler threads (``ServerSettings.grpc_threads``, as many as cores)
a health check or a metadata call would then wait behind every queued
Predict: measured on 2 cores with 16 callers on the heavy model, a health
check took 270 ms. The model-running methods therefore get a pool of their
own and everything else (health, reflection, metadata, status, liveness)
runs on a small control pool that requests cannot fill.
"""
from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Callable

#: threads for the RPCs that do not run a model; their work is short, and the
#: health service's Watch does not hold a thread (it is non-blocking)
CONTROL_THREADS = 4


def on_pool(behavior: Callable, pool: futures.ThreadPoolExecutor) -> Callable:
    """``behavior`` as an RPC handler that grpcio runs on ``pool``.

    grpcio runs a handler on the pool named by its ``experimental_thread_pool``
    attribute (how grpcio-health-checking's non-blocking Watch gets a pool of
    its own); a bound method cannot carry attributes, so a thin function does.
    """

    def handler(request, context):
        return behavior(request, context)

    handler.__name__ = getattr(behavior, "__name__", "handler")
    handler.__doc__ = getattr(behavior, "__doc__", None)
    handler.experimental_thread_pool = pool
    return handler


_current = threading.local()


class ArrivalStampingPool(futures.ThreadPoolExecutor):
    """A thread pool that remembers when each piece of work was handed to it.

    grpcio submits an RPC to its pool the moment the call arrives; with few
    handler threads a request can then wait there longer than in any batch
    queue. The stamp lets ``--batch-drop-millis`` and the response-time metric
    count that wait too (``request_arrival_s`` on the thread running the RPC).
    """

    def submit(self, fn, /, *args, **kwargs):
        """As ``ThreadPoolExecutor.submit``; the work sees its hand-in time."""
        arrival_s = time.monotonic()

        def run():
            _current.arrival_s = arrival_s
            try:
                return fn(*args, **kwargs)
            finally:
                _current.arrival_s = None

        return super().submit(run)


def request_arrival_s() -> float | None:
    """``time.monotonic()`` when the RPC running on this thread reached its pool, if known."""
    return getattr(_current, "arrival_s", None)
