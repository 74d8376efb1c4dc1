"""The HTTP server of the REST APIs: TF Serving REST (``tfrest``) and KServe V2 HTTP (``v2http``).

aiohttp, on an event loop of its own thread (the gRPC server keeps the main
ones); chosen by measurement, see benchmarks/RESULTS.md "HTTP stack". The
loop only reads, routes and writes: every model call runs on the gRPC
handler pool (``HandlerPool``), so HTTP and gRPC requests share one
admission bound and one set of running threads, and a refused one (the pool's
waiting queue full) is answered 429 without being decoded.

Keep-alive (HTTP/1.1 default), gzip both ways (a gzip request body is
inflated by aiohttp; answers of ``COMPRESS_MIN_BYTES`` or more are gzipped when
the client accepts it), bodies over ``max_message_bytes`` answered 413, the
gRPC side's TLS (mutual: the chain is the client CA), and a drain on stop: new
connections are refused, requests in flight finish within the grace period.
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


def error_response(status: int, message: str) -> web.Response:
    """An error answer of both REST surfaces: ``{"error": message}`` with ``status``
    (TF Serving's REST API and KServe V2 HTTP answer errors the same way)."""
    return web.json_response({"error": message}, status=status)


async def answer_error(error: BaseException, route: str) -> web.Response:
    """The error answer of ``error`` raised serving ``route`` (``status.http_status_of``)."""
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

    With a Content-Length (the common case) the body is copied once, chunk by
    chunk as aiohttp's parser hands them over, into a buffer of that size:
    ``request.read()`` would copy a 2.5 MB body three more times (join, extend,
    ``bytes``) on the event-loop thread, holding the GIL that the handler
    threads need (benchmarks/RESULTS.md "REST").
    """
    # read here, not with request.read(): past the bound, aiohttp 3.14's read()
    # fails building its own 413 (a TypeError, which would answer 500)
    limit = request.app._client_max_size  # noqa: SLF001 - the Application's client_max_size
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(_too_large_message(limit))
    try:
        return await _read_body(request, length, limit)
    except web.RequestPayloadError as error:
        # a body that is not what its Content-Encoding says (bad gzip), or a coding aiohttp cannot undo
        raise InvalidInput(f"the body could not be read: {str(error).replace(chr(10), ' ')}") from None
    except ConnectionError:
        # the client went away before its body ended: nobody to answer, nothing to log
        raise InvalidInput("the connection closed before the body ended") from None


async def _read_body(request: web.Request, length: int | None, limit: int) -> bytes | bytearray:
    stream = request.content
    if length is not None and "Content-Encoding" not in request.headers:
        # the parser never feeds more than Content-Length bytes
        body = bytearray(length)
        view = memoryview(body)
        filled = 0
        while filled < length:
            chunk, _ = await stream.readchunk()
            if not chunk:
                break
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != length:
            raise InvalidInput(f"the body ended after {filled} of its Content-Length {length} bytes")
        return body
    body = bytearray()
    async for chunk in stream.iter_any():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(_too_large_message(limit))
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
async def _errors_middleware(request: web.Request, handler):
    """Every error as ``{"error": ...}``: aiohttp's own (413 body too large, 404 no route, 405) too."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as too_large:
        return error_response(413, _too_large_message(too_large.max_size))
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        return error_response(http_error.status, f"{http_error.reason}: {request.method} {request.path}")


class HttpServer:
    """The REST port: an aiohttp application on its own event-loop thread.

    ``routes`` are (method, path, handler) of every surface.
    """

    def __init__(self, host: str, port: int, routes, *, max_body_bytes: int,
                 ssl_context: ssl.SSLContext | None):
        self._host = host
        self._port = port
        self._routes = routes
        self._max_body_bytes = max_body_bytes
        self._ssl = ssl_context
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
                              middlewares=[_errors_middleware])
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        # no access log line per request: the metrics count them
        runner = self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl, reuse_port=False)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

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

__all__ = ["COMPRESS_MIN_BYTES", "HttpServer", "ModelCalls", "answer_error", "compressed", "error_response", "read_body",
           "refuse_if_overloaded"]
