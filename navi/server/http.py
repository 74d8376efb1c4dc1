"""The HTTP server of the REST APIs: TF Serving REST (``tfrest``) and KServe V2 HTTP (``v2http``).

aiohttp, on an event loop of its own thread (the gRPC server keeps the main
ones); chosen by measurement, see benchmarks/RESULTS.md "HTTP stack". The
loop only reads, routes and writes: every model call runs on the gRPC
handler pool (``HandlerPool``), so HTTP and gRPC requests share one
admission bound and one set of running threads, and a refused one (the pool's
waiting queue full) is answered 429 without being decoded.

Keep-alive (HTTP/1.1 default; an idle connection is closed after
``http_idle_timeout_s``), gzip both ways (a gzip request body is inflated by
aiohttp; answers of ``COMPRESS_MIN_BYTES`` or more are gzipped when the client
accepts it), bodies over ``max_message_bytes`` answered 413, a body that stops
arriving for ``http_idle_timeout_s`` answered 408, the gRPC side's TLS (mutual:
the chain is the client CA), the connection bound and headers timeout of
``navi.server.connections``, and a drain on stop: new connections are refused,
requests in flight finish within the grace period.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from concurrent import futures
from typing import Awaitable, Callable

from aiohttp import web

from navi.errors import InvalidInput, Overloaded, RequestTooLarge
from navi.server.connections import ConnectionBook, GuardedConnection
from navi.server.status import http_status_of
from navi.server.threads import refusal

log = logging.getLogger(__name__)


def _not_a_client_payload_error(record: logging.LogRecord) -> bool:
    """Drop aiohttp's "Unhandled exception" for a body that failed to decode (bad gzip):
    the handler has answered it 400; aiohttp logs a traceback again draining the rest."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, web.RequestPayloadError)


logging.getLogger("aiohttp.server").addFilter(_not_a_client_payload_error)

#: answers at least this big are gzipped when the client accepts gzip (as gRPC's)
COMPRESS_MIN_BYTES = 4096

#: the longest a request body may go without a byte (the application's copy of http_idle_timeout_s)
BODY_IDLE_TIMEOUT_S = web.AppKey("body_idle_timeout_s", float)


def error_response(status: int, message: str) -> web.Response:
    """An error answer of both REST surfaces: ``{"error": message}`` with ``status``
    (TF Serving's REST API and KServe V2 HTTP answer errors the same way)."""
    return web.json_response({"error": message}, status=status)


async def answer_error(error: BaseException, route: str) -> web.Response:
    """The error answer of ``error`` raised serving ``route`` (``status.http_status_of``; an HTTP
    error of this module's own, such as 408 from ``read_body``, answers as itself)."""
    if isinstance(error, web.HTTPRequestTimeout):
        # the rest of the body may still come: the connection cannot carry another request
        response = error_response(error.status, error.text)
        response.force_close()
        return response
    return error_response(*http_status_of(error, route))


def refuse_if_overloaded() -> None:
    """Raise ``Overloaded`` on a thread the handler pool runs past its waiting bound (``threads.refusal``)."""
    refused = refusal()
    if refused is not None:
        raise Overloaded(refused)


class ModelCalls:
    """Runs blocking data-plane work on the handler pool, awaited by the event loop."""

    def __init__(self, pool: futures.Executor):
        self._pool = pool

    async def run(self, work: Callable, *args):
        """``work(*args)`` on the handler pool; refused there (``Overloaded``) when the pool is full."""

        def guarded():
            refuse_if_overloaded()
            try:
                return work(*args)
            except RecursionError:
                # JSON nested past Python's recursion limit (json.loads, or a walk of its lists)
                raise InvalidInput("the JSON body nests too deeply") from None

        return await asyncio.get_running_loop().run_in_executor(self._pool, guarded)


async def read_body(request: web.Request) -> bytes | bytearray:
    """The request's body (inflated when gzipped); ``RequestTooLarge`` (413) past ``max_message_bytes``.

    With a Content-Length (the common case) the body is copied once, joining
    the chunks aiohttp's parser handed over: ``request.read()`` would copy a
    2.5 MB body three more times (join, extend, ``bytes``) on the event-loop
    thread, holding the GIL that the handler threads need (benchmarks/RESULTS.md
    "REST"). A body with no byte for ``http_idle_timeout_s`` is answered 408.
    """
    # read here, not with request.read(): past the bound, aiohttp 3.14's read()
    # fails building its own 413 (a TypeError, which would answer 500)
    limit = request.app._client_max_size  # noqa: SLF001 - the Application's client_max_size
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(_too_large_message(limit))
    idle_s = request.app[BODY_IDLE_TIMEOUT_S]
    try:
        return await _read_body(request, length, limit, idle_s)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"no byte of the request body arrived for {idle_s:g} s (--http-idle-timeout-secs)") from None
    except web.RequestPayloadError as error:
        # a body that is not what its Content-Encoding says (bad gzip), or a coding aiohttp cannot undo
        raise InvalidInput(f"the body could not be read: {str(error).replace(chr(10), ' ')}") from None
    except ConnectionError:
        # the client went away before its body ended: nobody to answer, nothing to log
        raise InvalidInput("the connection closed before the body ended") from None


async def _read_body(request: web.Request, length: int | None, limit: int, idle_s: float) -> bytes | bytearray:
    """The body as its chunks arrive, each within ``idle_s`` of the last (``TimeoutError``)."""
    if request.content.is_eof():
        # all of it has arrived (a small body comes with its headers): no timer to arm
        return await _collect_body(request, length, limit, None, idle_s)
    async with asyncio.timeout(idle_s) as idle:
        return await _collect_body(request, length, limit, idle, idle_s)


async def _collect_body(request: web.Request, length: int | None, limit: int,
                        idle: asyncio.Timeout | None, idle_s: float) -> bytes | bytearray:
    """The body's chunks, pushing ``idle`` ``idle_s`` past each.

    Nothing is allocated by the declared Content-Length: a client that
    declares 64 MiB and sends one byte holds one byte. The chunks are joined
    once at the end (a body of one chunk is not copied at all).
    """
    stream = request.content
    loop = asyncio.get_running_loop()
    if length is not None and "Content-Encoding" not in request.headers:
        # the parser never feeds more than Content-Length bytes
        chunks: list[bytes] = []
        filled = 0
        while filled < length:
            chunk, _ = await stream.readchunk()
            if not chunk:
                break
            chunks.append(chunk)
            filled += len(chunk)
            if idle is not None:
                idle.reschedule(loop.time() + idle_s)
        if filled != length:
            raise InvalidInput(f"the body ended after {filled} of its Content-Length {length} bytes")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    body = bytearray()
    while chunk := await stream.readany():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(_too_large_message(limit))
        if idle is not None:
            idle.reschedule(loop.time() + idle_s)
    return body


def _too_large_message(max_size) -> str:
    return f"request body over {max_size} bytes (max_message_bytes, --max-message-bytes)"


def compressed(request: web.Request, response: web.Response) -> web.Response:
    """``response``, gzipped when it is large and the client accepts gzip."""
    body = response.body
    if body is not None and len(body) >= COMPRESS_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.gzip)
    return response


@web.middleware
async def _edge_middleware(request: web.Request, handler):
    """Tell the connection's guard a request runs (its headers are complete) and when it ends;
    answer every error as ``{"error": ...}``, aiohttp's own (413 body too large, 404 no route, 405) too.

    One middleware, not two: each is a coroutine frame per request.
    """
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    guarded = isinstance(connection, GuardedConnection)
    if guarded:
        connection.request_started()
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as too_large:
        return error_response(413, _too_large_message(too_large.max_size))
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        return error_response(http_error.status, f"{http_error.reason}: {request.method} {request.path}")
    finally:
        if guarded:
            connection.request_ended()


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections are bounded by a ``ConnectionBook`` (aiohttp's TCPSite, guarded)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, book: ConnectionBook,
                 ssl_context: ssl.SSLContext | None):
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._book = book

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    @property
    def bound_port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._book.protocol_factory(self._runner.server), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            # a TLS handshake is part of the time to the first request's headers
            ssl_handshake_timeout=self._book.headers_timeout_s if self._ssl_context else None)


class HttpServer:
    """The REST port: an aiohttp application on its own event-loop thread.

    ``routes`` are (method, path, handler) of every surface; at most
    ``max_connections`` are open, each closed when a request's headers take
    over ``headers_timeout_s`` or it is idle ``idle_timeout_s``
    (``navi.server.connections``).
    """

    def __init__(self, host: str, port: int, routes, *, max_body_bytes: int,
                 ssl_context: ssl.SSLContext | None, max_connections: int,
                 headers_timeout_s: float, idle_timeout_s: float):
        self._host = host
        self._port = port
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._ssl = ssl_context
        self.connections = ConnectionBook(max_connections, headers_timeout_s)
        self._idle_timeout_s = idle_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def start(self) -> int:
        """Bind and serve on a new thread; returns the bound port (``OSError`` when it cannot bind)."""
        started: futures.Future = futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="http", daemon=True)
        self._thread.start()
        self.port = started.result()
        return self.port

    def _serve(self, started: futures.Future) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as error:  # noqa: BLE001 - handed to start()
            started.set_exception(error)
            loop.close()
            return
        started.set_result(self.port)
        loop.run_forever()
        loop.close()

    async def _bind(self) -> None:
        app = web.Application(client_max_size=self._max_body_bytes,
                              middlewares=[_edge_middleware])
        app[BODY_IDLE_TIMEOUT_S] = self._idle_timeout_s
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        # no access log line per request: the metrics count them
        runner = self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                              keepalive_timeout=self._idle_timeout_s)
        await runner.setup()
        site = _GuardedSite(runner, self._host, self._port, self.connections, self._ssl)
        await site.start()
        self.port = site.bound_port

    def stop(self, grace_s: float) -> None:
        """Stop accepting, let requests in flight finish within ``grace_s``, then close."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or not loop.is_running():
            return

        async def drain():
            # aiohttp's shutdown: close the listening sockets, wait for handlers up to the timeout
            runner._shutdown_timeout = grace_s  # noqa: SLF001 - aiohttp reads it in cleanup()
            await runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(grace_s + 5.0)
        except Exception:  # noqa: BLE001 - stopping must not fail the process's own stop
            log.exception("HTTP server drain failed")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["BODY_IDLE_TIMEOUT_S", "COMPRESS_MIN_BYTES", "HttpServer", "ModelCalls", "answer_error", "compressed", "error_response", "read_body",
           "refuse_if_overloaded"]
