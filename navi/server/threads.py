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
