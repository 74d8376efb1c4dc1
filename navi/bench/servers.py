"""Server processes of the benchmarks: the bare transport server, launching and stopping targets.

The "bare transport" server is a minimal sync gRPC server answering
constant bytes without parsing: the transport ceiling a Python server is
compared with.
"""
from __future__ import annotations

import time
from concurrent import futures
from pathlib import Path
from typing import Sequence

import numpy as np


def constant_predict_response(rows: int = 1, model: str = "bare") -> bytes:
    """Serialized PredictResponse with one float output of ``rows`` x 1 zeros."""
    from navi._proto.tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = model
    tensor = response.outputs["output_0"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = rows
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_content = np.zeros((rows, 1), np.float32).tobytes()
    return response.SerializeToString()


def start_bare_server(port: int, response: bytes = b"", threads: int = 16, host: str = "127.0.0.1"):
    """Start a sync gRPC server answering every unary method with ``response``.

    Nothing is parsed: the request arrives as bytes and the constant bytes go
    back, so it measures what gRPC in Python costs and nothing else. Returns
    the started ``grpc.Server`` and its bound port (``port`` 0 picks one).
    """
    return serve_every_method(lambda request, context: response, port, threads, host)


def serve_every_method(handle, port: int, threads: int = 16, host: str = "127.0.0.1"):
    """Start a sync gRPC server whose every unary method is ``handle(request bytes, context) -> bytes``.

    The benchmarks' reference servers (the bare one above,
    ``benchmarks/minimal_predict_server.py``). Returns the started
    ``grpc.Server`` and its bound port (``port`` 0 picks one).
    """
    import grpc

    handler = grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=None)

    class AnyMethod(grpc.GenericRpcHandler):
        def service(self, handler_call_details):
            return handler

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        handlers=[AnyMethod()],
        options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)],
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def serve_until_signalled(server) -> None:
    """Block until SIGTERM or SIGINT, then stop ``server`` (a ``grpc.Server``) with a 1 s grace:
    the main loop of the reference servers run as processes."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1.0).wait()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for servers the benchmarks start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(address: str, timeout_s: float = 120.0, health_service: str | None = "",
                       process=None) -> None:
    """Block until a server at ``address`` is up.

    With ``health_service`` (a string; "" = the whole server) the gRPC health
    service must answer SERVING; with None, an open channel is enough (the
    bare server has no health service). ``process``, when given, is a
    ``subprocess.Popen`` whose early exit aborts the wait.
    """
    import grpc

    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process for {address} exited with code {process.returncode}")
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
                if health_service is None:
                    return
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=health_service), timeout=2.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.FutureTimeoutError:
                last_error = "not accepting connections"
            except grpc.RpcError as error:
                last_error = error.code().name
        time.sleep(0.25)
    raise TimeoutError(f"{address} not serving after {timeout_s:.0f} s ({last_error})")


def launch_server(command: Sequence[str], address: str, timeout_s: float = 180.0, health_service: str | None = "",
                  log_path: Path | None = None):
    """Start a server subprocess and wait until it serves; returns the ``subprocess.Popen``.

    Its output goes to ``log_path`` (or is discarded). The caller stops it
    (``stop_server``).
    """
    import subprocess

    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(address, timeout_s, health_service, process)
    except BaseException:
        stop_server(process)
        raise
    return process


def stop_server(process, grace_s: float = 15.0) -> None:
    """SIGTERM a server subprocess, SIGKILL it if it outlives ``grace_s``."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
