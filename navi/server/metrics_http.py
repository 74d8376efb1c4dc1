"""The ``/metrics`` HTTP endpoint: the Prometheus text format, always.

prometheus-client's own server answers a scraper that prefers OpenMetrics in
OpenMetrics, where every counter must end in ``_total``; the original Navi
only ever spoke the text format (0.0.4), and its counters, which dashboards
query by name, have no suffix. So navi serves ``navi.tally.render_text``
whatever the ``Accept`` header asks for (the text format is what every
Prometheus accepts).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.registry import CollectorRegistry

from navi.tally import TEXT_CONTENT_TYPE, render_text

log = logging.getLogger(__name__)

#: paths answered with the exposition (Prometheus scrapes /metrics by default)
METRICS_PATHS = ("/metrics", "/")
#: scrape connections open at once; past it a new one is closed unread. Each holds a thread:
#: unbounded, 2,000 idle connections made 2,000 threads (benchmarks/RESULTS.md, "Reliability")
METRICS_MAX_CONNECTIONS = 32


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsHTTPServer:
    """Serves ``registry`` on ``host:port`` from a daemon thread; ``port`` 0 picks a free one.

    ``render``, when given, writes the exposition instead (the worker supervisor's merged one).
    A connection silent for ``idle_timeout_s`` is closed, and at most
    ``METRICS_MAX_CONNECTIONS`` are open.
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str, *, idle_timeout_s: float,
                 render: Callable[[], bytes] | None = None):
        render = render or (lambda: render_text(registry))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path not in METRICS_PATHS:
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = render()
                except Exception:  # a broken collector must not kill the endpoint
                    log.exception("rendering /metrics failed")
                    self.send_error(500, "rendering the metrics failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", TEXT_CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, format, *args):  # noqa: A002 - scrapes are not news
                pass

        Handler.timeout = idle_timeout_s  # http.server's socket timeout: a silent client's thread ends
        self._server = _BoundedHTTPServer((host, port), Handler, METRICS_MAX_CONNECTIONS)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        daemon=True)

    def start(self) -> "MetricsHTTPServer":
        """Start answering scrapes."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._server.shutdown()
        self._server.server_close()


__all__ = ["METRICS_MAX_CONNECTIONS", "METRICS_PATHS", "MetricsHTTPServer"]
