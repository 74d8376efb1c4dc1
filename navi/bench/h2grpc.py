"""A minimal gRPC client on raw HTTP/2 frames, for load generation only.

Why not grpcio's client: on a machine the load generator shares with the
server, every microsecond the client spends is one the server loses, and
grpcio's asyncio client spends about as much CPU on a tiny unary call as the
server it measures (benchmarks/RESULTS.md, "Workers"). This
client sends request bytes serialized once, with header blocks that settle into
the same few indexed bytes per method, parses only frame headers and trailers, and never builds a
response message. HPACK is the ``hpack`` library's; decoding of a header block
is memoized while the peer's dynamic table stands still (``_BlockDecoder``),
which in steady state is every block.

It speaks the part of HTTP/2 (RFC 9113) a unary gRPC call needs, both ways of
flow control included: request bodies of any size are split to the peer's
frame size and windows; the receive windows are opened wide at start and
topped up as data is consumed. It answers SETTINGS and PING, honours
MAX_CONCURRENT_STREAMS (calls beyond it wait), and fails every open call with
UNAVAILABLE when the connection closes. What a load generator does not need
is left out: no TLS, no server push (disabled in SETTINGS), no priorities.
"""
from __future__ import annotations

import asyncio
import os
import struct
import time
import urllib.parse
from collections import deque
from typing import Callable, NamedTuple

import grpc
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id
_FRAME = struct.Struct(">HBBBL")
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GRPC_PREFIX = struct.Struct(">BL")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
#: buffers one writev takes at most (Linux's IOV_MAX)
_IOV_MAX = 1024
#: how long ``open`` waits for the server's first SETTINGS (not an HTTP/2 server: it never comes)
SETTINGS_WAIT_S = 10.0

#: grpc-status number -> StatusCode name
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
REFUSED_STREAM = 0x7
#: RST_STREAM error code -> the gRPC status it means (gRPC's HTTP/2 protocol doc; REFUSED_STREAM is retried)
_RST_STATUS = {0x8: "CANCELLED", 0xB: "RESOURCE_EXHAUSTED"}
#: a refused stream is retried after this long, not at once (the server refused it for a reason)
REFUSED_RETRY_S = 0.002


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """The 9 bytes before a frame's ``length`` bytes of payload."""
    return _FRAME.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame's bytes."""
    return frame_header(len(payload), frame_type, flags, stream_id) + payload


def grpc_body(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed): what a unary request's DATA carries."""
    return _GRPC_PREFIX.pack(0, len(message)) + message


def request_headers(path: str, authority: str, timeout_s: float | None) -> list[tuple[str, str]]:
    """A unary call's request headers."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
               ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "navi-bench-h2")]
    if timeout_s is not None:
        # grpc-timeout: at most 8 digits and a unit
        headers.append(("grpc-timeout", f"{min(int(timeout_s * 1000), 99_999_999)}m"))
    return headers


class _TableMemo:
    """Results of an HPACK coder memoized by key while its dynamic table stands still.

    A coding that inserts nothing into the table gives the same result for as
    long as the table does not change; any coding that changes it clears the
    memo (which also holds at most ``limit`` results).
    """

    def __init__(self, table, limit: int = 4096) -> None:
        self._table = table
        self._limit = limit
        self._memo: dict = {}

    def _state(self) -> tuple:
        entries = self._table.dynamic_entries
        # the newest entry itself (held, so its identity cannot be reused by another object)
        return (entries[0] if entries else None, len(entries), self._table.maxsize)

    def get(self, key, code: Callable[[], object]):
        """The memoized result for ``key``, else ``code()`` (kept if it left the table as it was)."""
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        before = self._state()
        result = code()
        after = self._state()
        if before[0] is not after[0] or before[1:] != after[1:]:
            self._memo.clear()
        elif len(self._memo) < self._limit:
            self._memo[key] = result
        return result


class CallResult(NamedTuple):
    """How one call ended: ``code`` None for OK, else the StatusCode name."""

    code: str | None
    details: str
    #: the response message (no gRPC prefix), when the connection collects bodies
    body: bytes | None = None


class _BlockEncoder:
    """HPACK encoding of request headers, one block per method, as a real client's.

    The first call of a method adds its headers to the server's dynamic table;
    from the second on, the block is the table's indices, the same bytes every
    time (the server then parses a few bytes, not literals), kept until the
    table changes (another method's first call).
    """

    def __init__(self, authority: str, timeout_s: float | None) -> None:
        self._encoder = hpack.Encoder()
        self._memo = _TableMemo(self._encoder.header_table)
        self._authority = authority
        self._timeout_s = timeout_s

    def block(self, path: str) -> bytes:
        """The header block of one call of ``path``, to be sent now (blocks are sent in encoding order)."""
        return self._memo.get(path, lambda: self._encoder.encode(
            request_headers(path, self._authority, self._timeout_s)))


class _BlockDecoder:
    """HPACK decoding, memoized while the dynamic table does not change: a server answering
    the same call over and over settles into blocks that insert nothing."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._memo = _TableMemo(self._decoder.header_table)

    def decode(self, block: bytes) -> list:
        """The block's headers as (name, value) byte pairs."""
        return self._memo.get(block, lambda: self._decoder.decode(block, raw=True))


class _Stream:
    __slots__ = ("call", "future", "started", "code", "details", "http_status", "body", "window", "rest")

    def __init__(self, call: tuple, started: float, collect: bool):
        #: (path, request body, future): what a refused stream retries with
        self.call = call
        self.future: asyncio.Future = call[2]
        self.started = started
        self.code: int | None = None
        self.details = ""
        self.http_status = b"200"
        self.body = bytearray() if collect else None
        self.window = 0
        self.rest: memoryview | None = None


class H2GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary gRPC calls; ``call`` is the API.

    ``collect_bodies`` keeps each response message (tests compare them with
    grpcio's); a load generator leaves it off.
    """

    def __init__(self, authority: str, timeout_s: float | None = None, collect_bodies: bool = False):
        self.authority = authority
        self.timeout_s = timeout_s
        self.collect_bodies = collect_bodies
        #: the transport is gone
        self.closed = False
        #: the server sent GOAWAY: calls it took still finish, no new call starts here
        self.draining = False
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._ready = self._loop.create_future()
        self._encoder = _BlockEncoder(authority, timeout_s)
        self._decoder = _BlockDecoder()
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._inbuf = bytearray()
        self._out: list = []
        self._flush_scheduled = False
        # flow control: what we may send, and what we have consumed unannounced
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._peer_max_streams = 1 << 31
        self._blocked: deque[int] = deque()
        self._waiting: deque = deque()
        self._received_unannounced = 0
        self._continuation: tuple[int, int, bytearray] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        # calls past their timeout are looked for this often
        self._sweep_every_s = None if timeout_s is None else min(1.0, timeout_s)

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float | None = None,
                   collect_bodies: bool = False) -> "H2GrpcConnection":
        """Connect to ``host:port`` (plaintext, prior knowledge); returns once the server's SETTINGS came."""
        loop = asyncio.get_running_loop()
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        transport, protocol = await loop.create_connection(lambda: cls(authority, timeout_s, collect_bodies),
                                                           host, port)
        try:
            await asyncio.wait_for(asyncio.shield(protocol._ready), SETTINGS_WAIT_S)
        except BaseException:
            transport.abort()
            raise
        return protocol

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._fd = transport.get_extra_info("socket").fileno()
        settings = (_SETTING.pack(SETTINGS_ENABLE_PUSH, 0) + _SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW))
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))
        if self.timeout_s is not None:
            self._sweeper = self._loop.call_later(self._sweep_every_s, self._sweep)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if not self._ready.done():
            self._ready.set_exception(exc or ConnectionError("connection closed"))
        reason = f"connection lost: {exc}" if exc else "connection closed"
        for stream_id in list(self._streams):
            self._finish(stream_id, "UNAVAILABLE", reason)
        while self._waiting:
            future = self._waiting.popleft()[2]
            if not future.done():
                future.set_result(CallResult("UNAVAILABLE", reason))

    def close(self) -> None:
        """Close the connection; open calls end UNAVAILABLE."""
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()

    # -- sending -------------------------------------------------------------

    def call(self, path: str, body: bytes) -> "asyncio.Future[CallResult]":
        """Start a unary call of ``path`` with ``body`` (from ``grpc_body``); its future is the result."""
        future = self._loop.create_future()
        if self.closed or self.draining:
            future.set_result(CallResult("UNAVAILABLE", "connection closed" if self.closed else "server going away"))
        elif len(self._streams) >= self._peer_max_streams:
            self._waiting.append((path, body, future))
        else:
            self._start(path, body, future)
        return future

    def _start(self, path: str, body: bytes, future: asyncio.Future) -> None:
        block = self._encoder.block(path)
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id > MAX_STREAM_ID:  # this connection has used up its stream ids
            self.draining = True
        stream = _Stream((path, body, future), time.monotonic(), self.collect_bodies)
        self._streams[stream_id] = stream
        out = self._out
        out.append(frame_header(len(block), HEADERS, END_HEADERS, stream_id))
        out.append(block)
        size = len(body)
        if (not self._blocked and size <= self._send_window and size <= self._peer_initial_window
                and size <= self._peer_max_frame):
            out.append(frame_header(size, DATA, END_STREAM, stream_id))
            out.append(body)
            self._send_window -= size
        else:
            stream.window = self._peer_initial_window
            stream.rest = memoryview(body)
            self._blocked.append(stream_id)
            self._pump()
        self._schedule_flush()

    def _pump(self) -> None:
        """Send what the windows allow of the bodies still waiting, oldest first."""
        out = self._out
        for _ in range(len(self._blocked)):
            if self._send_window <= 0:
                break
            stream_id = self._blocked[0]
            stream = self._streams.get(stream_id)
            if stream is None or stream.rest is None:
                self._blocked.popleft()
                continue
            rest = stream.rest
            while rest and stream.window > 0 and self._send_window > 0:
                size = min(len(rest), stream.window, self._send_window, self._peer_max_frame)
                chunk, rest = rest[:size], rest[size:]
                out.append(frame_header(size, DATA, 0 if rest else END_STREAM, stream_id))
                out.append(chunk)
                stream.window -= size
                self._send_window -= size
            stream.rest = rest or None
            if not rest:
                self._blocked.popleft()
            elif stream.window > 0:
                break  # out of connection window: the oldest body goes on first when it opens
            else:
                self._blocked.rotate(-1)  # waiting on its own stream's window: let the others go
        if out:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if not out or self.closed:
            return
        if self._transport.get_write_buffer_size() == 0:
            # Nothing queued in the transport: hand the frames to the kernel in one gathered
            # write (asyncio's writelines would first join them: one more copy of every body).
            try:
                sent = os.writev(self._fd, out[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the transport's own write reports the failure (connection_lost)
            while out and sent >= len(out[0]):
                sent -= len(out.pop(0))
            if out and sent:
                out[0] = memoryview(out[0])[sent:]
        if out:
            self._transport.writelines(out)

    # -- receiving -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self._inbuf
        buf += data
        position, end_of_data = 0, len(buf)
        while end_of_data - position >= 9:
            high, low, frame_type, flags, stream_id = _FRAME.unpack_from(buf, position)
            start = position + 9
            end = start + ((high << 8) | low)
            if end > end_of_data:
                break
            stream_id &= 0x7FFFFFFF
            if frame_type == DATA:
                self._on_data(stream_id, flags, buf, start, end)
            elif frame_type == HEADERS or frame_type == CONTINUATION:
                self._on_headers(frame_type, stream_id, flags, buf, start, end)
            elif frame_type == WINDOW_UPDATE:
                increment = _U32.unpack_from(buf, start)[0] & 0x7FFFFFFF
                if stream_id == 0:
                    self._send_window += increment
                elif stream_id in self._streams:
                    self._streams[stream_id].window += increment
                if self._blocked:
                    self._pump()
            elif frame_type == SETTINGS:
                if not flags & ACK:
                    self._on_settings(buf[start:end])
            elif frame_type == PING:
                if not flags & ACK:
                    self._out.append(frame(PING, ACK, 0, bytes(buf[start:end])))
                    self._schedule_flush()
            elif frame_type == RST_STREAM:
                code = _U32.unpack_from(buf, start)[0]
                if code == REFUSED_STREAM and stream_id in self._streams:
                    # not processed at all (RFC 9113 8.7): retried, as grpc's clients do; a
                    # server may refuse a stream that arrives just as another one closes
                    self._waiting.appendleft(self._streams.pop(stream_id).call)
                    self._loop.call_later(REFUSED_RETRY_S, self._start_waiting)
                else:
                    self._finish(stream_id, _RST_STATUS.get(code, "INTERNAL"),
                                 f"stream reset by the server (HTTP/2 error {code})")
            elif frame_type == GOAWAY:
                last_stream_id = _U32.unpack_from(buf, start)[0] & 0x7FFFFFFF
                self.draining = True
                for open_id in [s for s in self._streams if s > last_stream_id]:
                    self._finish(open_id, "UNAVAILABLE", "server going away")
            position = end
        del buf[:position]

    def _on_data(self, stream_id: int, flags: int, buf: bytearray, start: int, end: int) -> None:
        self._received_unannounced += end - start
        if self._received_unannounced > MAX_WINDOW // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._received_unannounced)))
            self._received_unannounced = 0
            self._schedule_flush()
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.body is not None:
            if flags & PADDED:
                pad = buf[start]
                start, end = start + 1, end - pad
            stream.body += buf[start:end]
        if flags & END_STREAM:
            self._end_stream(stream_id, stream)

    def _on_headers(self, frame_type: int, stream_id: int, flags: int, buf: bytearray, start: int, end: int) -> None:
        if frame_type == HEADERS:
            if flags & PADDED:
                pad = buf[start]
                start, end = start + 1, end - pad
            if flags & PRIORITY_FLAG:
                start += 5
            if not flags & END_HEADERS:
                self._continuation = (stream_id, flags, bytearray(buf[start:end]))
                return
            block = bytes(buf[start:end])
        else:
            if self._continuation is None:
                return
            if not flags & END_HEADERS:
                self._continuation[2].extend(buf[start:end])
                return
            stream_id, flags, partial = self._continuation
            partial += buf[start:end]
            self._continuation = None
            block = bytes(partial)
        headers = self._decoder.decode(block)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        for name, value in headers:
            if name == b"grpc-status":
                stream.code = int(value)
            elif name == b"grpc-message":
                stream.details = urllib.parse.unquote(value.decode("utf-8", "replace"))
            elif name == b":status":
                stream.http_status = value
        if flags & END_STREAM:
            self._end_stream(stream_id, stream)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
        self._out.append(frame(SETTINGS, ACK, 0))
        if not self._ready.done():
            # the server's limits are known: calls may start (none beyond its stream limit)
            self._ready.set_result(None)
        if self._blocked:
            self._pump()
        self._schedule_flush()

    # -- ending calls --------------------------------------------------------

    def _end_stream(self, stream_id: int, stream: _Stream) -> None:
        if stream.code is None:
            status = stream.http_status.decode()
            self._finish(stream_id, "UNKNOWN" if status == "200" else "UNAVAILABLE",
                         f"no grpc-status (HTTP status {status})")
        else:
            self._finish(stream_id, None if stream.code == 0 else STATUS_NAMES.get(stream.code, "UNKNOWN"),
                         stream.details)

    def _finish(self, stream_id: int, code: str | None, details: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.future.done():
            body = bytes(stream.body[5:]) if stream.body is not None and code is None else None
            stream.future.set_result(CallResult(code, details, body))
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start the calls waiting for a stream, as far as the server's stream limit allows."""
        while self._waiting and len(self._streams) < self._peer_max_streams and not self.closed:
            path, body, future = self._waiting.popleft()
            if self.draining:
                future.set_result(CallResult("UNAVAILABLE", "server going away"))
            else:
                self._start(path, body, future)
        if self.draining and not self._streams:
            self.close()  # every call the server took has ended

    def _sweep(self) -> None:
        """End the calls past their timeout DEADLINE_EXCEEDED (and reset them at the server)."""
        now = time.monotonic()
        late = [stream_id for stream_id, stream in self._streams.items() if now - stream.started > self.timeout_s]
        for stream_id in late:
            self._out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(0x8)))
            self._finish(stream_id, "DEADLINE_EXCEEDED", "deadline passed (client)")
        if late:
            self._schedule_flush()
        if not self.closed:
            self._sweeper = self._loop.call_later(self._sweep_every_s, self._sweep)


__all__ = ["CallResult", "H2GrpcConnection", "STATUS_NAMES", "frame", "frame_header", "grpc_body", "request_headers"]
