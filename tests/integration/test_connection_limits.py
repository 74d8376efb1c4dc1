"""Connection bounds of the real daemon's two ports, tried as a hostile client would (issue 17).

Before them, a REST client could hold a connection for an hour by sending half
a request line, and open as many as the file-descriptor limit allowed; a body
that declared 64 MiB made the daemon allocate 64 MiB before the first byte of
it. Here: headers trickled past --handshake-timeout-secs are cut off, a body
that stops is answered 408 after --http-idle-timeout-secs, an idle keep-alive
connection is closed after it, past --max-connections a new connection is
refused (REST 503, gRPC UNAVAILABLE) and served again once others close, a
silent gRPC connection is closed after the handshake timeout, and a declared
length allocates nothing; Predict streams that never send their message do not
stop serving (they used to hold every running handler thread), and idle /metrics
connections are bounded and closed (each held a thread, unbounded).
"""
from __future__ import annotations

import json
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import REPO_ROOT, proc_status

DENSE = REPO_ROOT / "models" / "dense"
MAX_CONNECTIONS = 4
HANDSHAKE_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", DENSE, "--max-connections", str(MAX_CONNECTIONS),
                      "--handshake-timeout-secs", str(HANDSHAKE_TIMEOUT_S),
                      "--http-idle-timeout-secs", str(IDLE_TIMEOUT_S))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(15)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and the seconds that took."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def _predict_bytes(rows: int = 1) -> bytes:
    body = json.dumps({"instances": [[0.5] * 16] * rows}).encode()
    return (b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _health(channel: grpc.Channel):
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError as error:
        return error.code()


def test_trickled_headers_are_cut_off_at_the_handshake_timeout(navi):
    """A byte of header every 0.2 s keeps a connection busy, but its headers never end: closed
    at the handshake timeout, not at the idle one (which the trickle would keep resetting)."""
    sock = _connect(navi.rest_port)
    started = time.monotonic()
    head = b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\nX-Slow: "
    try:
        for byte in head + b"a" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S + 1.5
    assert sock.recv(100) == b""


def test_half_a_request_line_is_closed_at_the_handshake_timeout(navi):
    sock = _connect(navi.rest_port)
    sock.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\n")
    received, took_s = _read_until_closed(sock)
    assert received == b""
    assert HANDSHAKE_TIMEOUT_S * 0.8 <= took_s < HANDSHAKE_TIMEOUT_S + 1.5


def test_keepalive_connection_serves_then_closes_when_idle(navi):
    """A kept-alive connection is not timed by the handshake timeout between requests: a second
    request after a pause longer than it is served; idle past the idle timeout, it is closed."""
    sock = _connect(navi.rest_port)
    for _ in range(2):
        sock.sendall(_predict_bytes())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(HANDSHAKE_TIMEOUT_S * 1.5)
    received, took_s = _read_until_closed(sock)
    assert received == b""
    assert took_s < IDLE_TIMEOUT_S + 1.5


def test_a_body_that_stops_is_answered_408(navi):
    sock = _connect(navi.rest_port)
    sock.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"instances\": ")
    started = time.monotonic()
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"Connection: close" in answer
    assert b"--http-idle-timeout-secs" in answer
    assert IDLE_TIMEOUT_S * 0.8 <= time.monotonic() - started < IDLE_TIMEOUT_S + 1.5


def test_connections_past_the_bound_are_refused_on_both_ports_then_served_again(navi):
    held = [_connect(navi.rest_port) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    refused = _connect(navi.rest_port)
    answer, took_s = _read_until_closed(refused)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"--max-connections" in answer and took_s < 1.0
    for sock in held:
        sock.close()
    time.sleep(0.2)
    sock = _connect(navi.rest_port)
    sock.sendall(_predict_bytes())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()

    # gRPC: each channel with its own connection
    channels = [navi.channel(**{"grpc.use_local_subchannel_pool": 1}) for _ in range(MAX_CONNECTIONS + 1)]
    statuses = [_health(channel) for channel in channels]
    assert statuses[:MAX_CONNECTIONS] == [health_pb2.HealthCheckResponse.SERVING] * MAX_CONNECTIONS
    assert statuses[MAX_CONNECTIONS] == grpc.StatusCode.UNAVAILABLE
    for channel in channels:
        channel.close()
    time.sleep(0.5)
    with navi.channel() as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_a_silent_grpc_connection_is_closed_at_the_handshake_timeout(navi):
    """grpc core's own default would hold it 120 s."""
    sock = _connect(navi.port)
    received, took_s = _read_until_closed(sock)
    assert b"handshake timeout" in received  # the GOAWAY's debug text
    assert took_s < HANDSHAKE_TIMEOUT_S + 1.5


def test_a_declared_body_length_allocates_nothing(navi):
    """Bodies declaring 60 MB that send a few bytes: the old code allocated each whole
    (+240 MB here); held memory must follow the bytes received."""
    before = proc_status(navi.process.pid, "VmRSS")
    socks = [_connect(navi.rest_port) for _ in range(MAX_CONNECTIONS)]
    for sock in socks:
        sock.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 60000000\r\n\r\n{\"instances\": ")
    time.sleep(IDLE_TIMEOUT_S / 2)
    grew = proc_status(navi.process.pid, "VmRSS") - before
    for sock in socks:
        sock.close()
    assert grew < 40 << 20, f"RSS grew {grew >> 20} MiB"


def test_predict_streams_that_never_send_their_message_do_not_stop_serving(navi):
    """Ten Predict streams whose headers came and whose messages never do (a few hundred bytes from
    one client): before, they held every running handler thread and every other Predict was
    refused RESOURCE_EXHAUSTED; eight such health Watch streams held the control threads, and
    health Check (a Kubernetes probe) timed out. Now they are set aside and the daemon serves on."""
    import hpack

    from navi._proto.tensorflow.core.framework import types_pb2
    from navi._proto.tensorflow_serving.apis import predict_pb2
    from navi.bench.h2grpc import END_HEADERS, HEADERS, PREFACE, SETTINGS, frame, request_headers
    from navi.server.threads import CONTROL_THREADS

    silent = _connect(navi.port)
    encoder = hpack.Encoder()
    frames = PREFACE + frame(SETTINGS, 0, 0)
    for stream_id in range(1, 21, 2):
        block = encoder.encode(request_headers("/tensorflow.serving.PredictionService/Predict", "navi", None))
        frames += frame(HEADERS, END_HEADERS, stream_id, block)
    # and as many health Watch streams as there are control threads, twice: each used to hold one
    for stream_id in range(21, 21 + 2 * 2 * CONTROL_THREADS, 2):
        block = encoder.encode(request_headers("/grpc.health.v1.Health/Watch", "navi", None))
        frames += frame(HEADERS, END_HEADERS, stream_id, block)
    silent.sendall(frames)
    time.sleep(0.5)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dense"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=16)
    tensor.tensor_content = bytes(2 * 16 * 4)
    with navi.channel() as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                      response_deserializer=predict_pb2.PredictResponse.FromString)
        for _ in range(5):
            assert predict(request, timeout=3).outputs["y"].tensor_shape.dim[0].size == 2
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    silent.close()


def test_idle_metrics_connections_are_bounded_and_closed(navi):
    """The /metrics server runs a thread per connection: 2,000 idle ones made 2,000 threads, held
    forever. Now at most METRICS_MAX_CONNECTIONS are open (the rest closed at once), a silent one
    is closed at the handshake timeout, and scrapes are answered again afterwards."""
    import urllib.request

    from navi.server.metrics_http import METRICS_MAX_CONNECTIONS

    threads_before = proc_status(navi.process.pid, "Threads")
    socks = [_connect(navi.prometheus_port) for _ in range(100)]
    time.sleep(0.5)
    assert proc_status(navi.process.pid, "Threads") <= threads_before + METRICS_MAX_CONNECTIONS
    received, took_s = _read_until_closed(socks[0])
    assert received == b"" and took_s < HANDSHAKE_TIMEOUT_S + 1.5
    for sock in socks:
        sock.close()
    time.sleep(HANDSHAKE_TIMEOUT_S + 0.5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{navi.prometheus_port}/metrics", timeout=10).read()
    assert b":navi:" in body
