"""The HTTP port's connection bounds: how many are open, how long a request's headers may take.

aiohttp bounds neither. A connection that sends half a request line is held
until its keep-alive timer (an hour by default), and nothing caps how many are
open: a client trickling headers over thousands of connections holds memory and
file descriptors and never reaches admission (``threads.HandlerPool``). So
every connection's protocol is wrapped here before aiohttp's sees a byte:

* **Bound.** Past ``max_connections`` open, a new connection is answered 503
  and closed before anything of it is read.
* **Headers on time.** From a connection's start, and from the first byte
  after a request has been answered, its next request must reach its handler
  (the headers complete) within ``headers_timeout_s`` (plus at most a sweep
  period), or the connection is closed. A request being handled is never
  timed here: its body has its own rule (``http.read_body``: no gap longer
  than the idle timeout), and a slow model keeps its client's connection.

An idle keep-alive connection is aiohttp's to close (``keepalive_timeout``).
The gRPC port has the same two bounds from grpc core
(``app.grpc_connection_options``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math

from navi.errors import LogLimiter

log = logging.getLogger(__name__)

#: at most one "connections full" warning per this many seconds (each one counts those since the last)
FULL_LOG_PERIOD_S = 10.0

_full_log = LogLimiter(FULL_LOG_PERIOD_S)


def _full_answer(max_connections: int) -> bytes:
    body = json.dumps({"error": f"the server holds {max_connections} open connections "
                                f"(max_connections, --max-connections); try again or another replica"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
    return head.encode() + body


class ConnectionBook:
    """The open connections of one port, and the limits every one of them keeps.

    Late headers are found by a sweep every ``sweep_period_s`` rather than a
    timer per request: arming and cancelling a timer for every request cost
    more than the rest of the guard together.
    """

    def __init__(self, max_connections: int, headers_timeout_s: float):
        self.max_connections = max_connections
        self.headers_timeout_s = headers_timeout_s
        #: a connection's headers are late by at most this much more before it is closed
        self.sweep_period_s = min(1.0, headers_timeout_s / 4)
        self.open: set[GuardedConnection] = set()
        #: the answer to a connection past the bound
        self.full_answer = _full_answer(max_connections)
        self._sweeping = False

    def protocol_factory(self, inner_factory):
        """A protocol factory for ``loop.create_server``: ``inner_factory``'s protocols, guarded."""
        return lambda: GuardedConnection(inner_factory(), self)

    def admit(self, connection: GuardedConnection) -> bool:
        """Count ``connection`` in, or False when ``max_connections`` are open."""
        if len(self.open) >= self.max_connections:
            _full_log.log(log, "full", "HTTP connection refused: %d open (max_connections)", len(self.open),
                          level=logging.WARNING)
            return False
        self.open.add(connection)
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(self.sweep_period_s, self._sweep)
        return True

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        late = [connection for connection in self.open if connection.headers_deadline_s < now_s]
        for connection in late:
            connection.headers_late()
        loop.call_later(self.sweep_period_s, self._sweep)


class GuardedConnection(asyncio.Protocol):
    """One connection: refused past the bound, closed when a request's headers are late.

    Runs on the event loop's thread only, like the protocol it wraps.
    """

    __slots__ = ("_inner", "_book", "_transport", "_loop", "headers_deadline_s", "_in_request")

    def __init__(self, inner: asyncio.Protocol, book: ConnectionBook):
        self._inner: asyncio.Protocol | None = inner
        self._book = book
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        #: when the headers now awaited are late (event-loop time); infinity when none are awaited
        self.headers_deadline_s = math.inf
        self._in_request = False

    # -- asyncio's calls, passed on to aiohttp's protocol

    def connection_made(self, transport) -> None:
        self._transport = transport
        if not self._book.admit(self):
            self._inner = None
            transport.write(self._book.full_answer)
            transport.close()
            return
        self._inner.connection_made(transport)
        self.headers_deadline_s = self._loop.time() + self._book.headers_timeout_s

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self._in_request and self.headers_deadline_s == math.inf:
            self.headers_deadline_s = self._loop.time() + self._book.headers_timeout_s
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.headers_deadline_s = math.inf
        if self._inner is None:
            return
        self._book.open.discard(self)
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    # -- the HTTP layer's calls (``http._edge_middleware``)

    def request_started(self) -> None:
        """A request's headers are complete and its handler runs: it is not timed here."""
        self._in_request = True
        self.headers_deadline_s = math.inf

    def request_ended(self) -> None:
        """Its handler returned: the next byte starts the next request's clock."""
        self._in_request = False

    def headers_late(self) -> None:
        """The book's sweep found this connection's headers late: close it."""
        self.headers_deadline_s = math.inf
        if self._transport is not None:
            # abort: a trickling client is owed no orderly close
            self._transport.abort()


__all__ = ["ConnectionBook", "GuardedConnection", "FULL_LOG_PERIOD_S"]
