"""gRPC health checking (``grpc.health.v1.Health``) that no client can wedge.

grpcio-health-checking's ``HealthServicer`` (1.7x-1.8x) calls a Watch
stream's ``send_response`` while holding its lock; that call blocks until
grpc's one server thread has processed the write. When a client cancels
another Watch at that moment, the same server thread runs the cancelled
call's close callback, which waits for that lock: the server thread and the
handler wait on each other and the whole server stops answering every RPC of
every service (found by the wire fuzzer: four clients opening and cancelling
Watch streams wedged the daemon within seconds; ``benchmarks/wire_fuzz.py``).

Here every send happens outside the lock, so the close callback only ever
waits for a few dictionary operations. Check answers an unknown service
NOT_FOUND with a message naming it (grpcio's sends none).

Open Watch streams are bounded (``MAX_WATCHES``): each holds about 11 KB of
grpc core's memory while open (20,000 on one connection took the daemon from
214 to 445 MiB), and nothing else bounds how many a client opens. A service
name nobody watches any more is forgotten, so watching random names leaves
nothing behind.
"""
from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from navi.errors import quote

_Response = health_pb2.HealthCheckResponse

#: open Watch streams past which a new one is refused RESOURCE_EXHAUSTED (a
#: load balancer or sidecar watches with one or a few per connection)
MAX_WATCHES = 1000


class HealthService(health.HealthServicer):
    """``HealthServicer`` whose lock is never held across a send, with bounded Watch streams
    (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._open_watches = 0  # under self._lock

    def Check(self, request, context):  # noqa: N802 - gRPC's name
        with self._lock:
            status = self._server_status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no health status for service {quote(request.service)}")
        return _Response(status=status)

    def Watch(self, request, context, send_response_callback=None):  # noqa: N802 - gRPC's name
        if send_response_callback is None:
            # blocking mode: the parent's callback only appends to a queue
            return super().Watch(request, context)
        service = request.service
        with self._lock:
            refused = self._open_watches >= MAX_WATCHES
            if not refused:
                self._open_watches += 1
                status = self._server_status.get(service, _Response.SERVICE_UNKNOWN)
                self._send_response_callbacks.setdefault(service, set()).add(send_response_callback)
                context.add_callback(self._on_close_callback(send_response_callback, service))
        if refused:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{MAX_WATCHES} health Watch streams are open, the most this server keeps; "
                          "close one, or poll with Check")
        send_response_callback(_Response(status=status))
        # a set() between reading the status and registering has been sent
        # already, possibly before our initial answer: end on the latest
        with self._lock:
            latest = self._server_status.get(service, _Response.SERVICE_UNKNOWN)
        if latest != status:
            send_response_callback(_Response(status=latest))
        return None

    def _on_close_callback(self, send_response_callback, service):
        def callback():
            with self._lock:
                watchers = self._send_response_callbacks.get(service)
                if watchers is not None and send_response_callback in watchers:
                    watchers.discard(send_response_callback)
                    self._open_watches -= 1
                    if not watchers:
                        del self._send_response_callbacks[service]
            send_response_callback(None)

        return callback

    def set(self, service, status):
        """Set ``service``'s status and tell its watchers (outside the lock)."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
            watchers = list(self._send_response_callbacks.get(service, ()))
        for send_response_callback in watchers:
            send_response_callback(_Response(status=status))

    def enter_graceful_shutdown(self):
        """Every service NOT_SERVING, for good (later ``set`` calls are ignored)."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            services = list(self._server_status)
        for service in services:
            self.set(service, _Response.NOT_SERVING)
        with self._lock:
            self._gracefully_shutting_down = True
