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


class MetricsHTTPServer:
    """Serves ``registry`` on ``host:port`` from a daemon thread; ``port`` 0 picks a free one.

    ``render``, when given, writes the exposition instead (the worker supervisor's merged one).
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0",
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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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


__all__ = ["METRICS_PATHS", "MetricsHTTPServer"]
