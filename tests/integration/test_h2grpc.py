"""navi.bench.h2grpc, the load generator's raw HTTP/2 gRPC client, against the real daemon.

Every answer is compared with grpcio's for the same bytes: bodies byte-identical,
the same status codes and messages; 1.3 MB requests, several at once, go
through both directions of flow control against the daemon's default window.
"""
from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import pytest

from navi.bench.h2grpc import H2GrpcConnection, grpc_body
from navi.bench.requests import TF_PREDICT, fetch_inputs
from navi.bench.workloads import dense_workload, home_workload
from tests.integration.conftest import REPO_ROOT

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", MODELS / "home", "--model-dir", MODELS / "dense",
                      "--input", "examples", "--input", "", "--output", "")


def _spec_dir():
    return sorted(d for d in (MODELS / "home").iterdir() if d.is_dir())[-1]


def _grpcio_answer(channel, method: str, payload: bytes) -> tuple[str | None, str, bytes | None]:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        return None, "", call(payload, timeout=60)
    except grpc.RpcError as error:
        return error.code().name, error.details() or "", None


def _h2_answers(port: int, calls: list[tuple[str, bytes]], timeout_s: float = 60.0):
    async def run():
        connection = await H2GrpcConnection.open("127.0.0.1", port, timeout_s, collect_bodies=True)
        try:
            return await asyncio.gather(*(connection.call(m, grpc_body(p)) for m, p in calls))
        finally:
            connection.close()

    return asyncio.run(run())


def test_answers_equal_grpcio_for_dense_bpr_and_client_errors(navi):
    tiny = dense_workload("tfserving", "dense", fetch_inputs(navi.address, "dense", "tfserving"), batch_rows=2)
    small = home_workload("tfserving", "home", candidates=100, spec_dir=_spec_dir(), distinct_requests=4)
    assert min(len(p) for p in small.payloads) > 1_000_000  # past every default window: flow control runs
    calls = [(tiny.method, p) for p in tiny.payloads] + [(small.method, p) for p in small.payloads]
    calls += [
        (TF_PREDICT, b"\xff\x01"),  # undecodable: INVALID_ARGUMENT
        (TF_PREDICT, small.payloads[0].replace(b"home", b"nope", 1)),  # unknown model: NOT_FOUND
        ("/tensorflow.serving.PredictionService/NoSuchMethod", b""),  # UNIMPLEMENTED
    ]
    answers = _h2_answers(navi.port, calls)
    with navi.channel() as channel:
        expected = [_grpcio_answer(channel, method, payload) for method, payload in calls]
    assert [(a.code, a.details, a.body) for a in answers] == expected
    codes = [code for code, _, _ in expected]
    assert codes[-3:] == ["INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"]
    assert all(code is None for code in codes[:-3])


def test_many_calls_in_flight_on_one_connection(navi):
    small = home_workload("tfserving", "home", candidates=100, spec_dir=_spec_dir(), distinct_requests=2)
    tiny = dense_workload("tfserving", "dense", fetch_inputs(navi.address, "dense", "tfserving"), batch_rows=2)
    # large and small interleaved, more than the daemon's handler threads
    calls = [(small.method, small.payloads[i % 2]) if i % 3 == 0 else (tiny.method, tiny.payloads[i % 16])
             for i in range(48)]
    answers = _h2_answers(navi.port, calls)
    assert [a.code for a in answers] == [None] * len(calls)
    assert all(a.body for a in answers)


@pytest.fixture
def slow_server():
    """A grpcio server whose one method sleeps 2 s, answering 3 streams at a time."""
    def sleepy(request, context):
        time.sleep(2.0)
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(sleepy)})
    server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[handler],
                         options=[("grpc.max_concurrent_streams", 3)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield server, port
    server.stop(0)


def test_deadline_max_concurrent_streams_and_a_lost_connection(slow_server):
    _, slow_server = slow_server

    async def run():
        connection = await H2GrpcConnection.open("127.0.0.1", slow_server, timeout_s=0.5)
        late = await connection.call("/test.Slow/Sleep", grpc_body(b""))
        # the server enforces the grpc-timeout it was sent, or the client's sweep ends it
        assert late.code == "DEADLINE_EXCEEDED"
        patient = await H2GrpcConnection.open("127.0.0.1", slow_server, timeout_s=30.0, collect_bodies=True)
        # six calls, three streams allowed: the rest wait for a stream, none is refused
        answers = await asyncio.gather(*(patient.call("/test.Slow/Sleep", grpc_body(b"")) for _ in range(6)))
        assert [(a.code, a.body) for a in answers] == [(None, b"late")] * 6
        pending = patient.call("/test.Slow/Sleep", grpc_body(b""))
        await asyncio.sleep(0.2)
        patient._transport.abort()
        lost = await pending
        assert lost.code == "UNAVAILABLE"
        assert (await patient.call("/test.Slow/Sleep", grpc_body(b""))).code == "UNAVAILABLE"
        connection.close()

    asyncio.run(run())


def test_a_server_going_away_finishes_what_it_took_and_takes_nothing_new(slow_server):
    server, port = slow_server

    async def run():
        connection = await H2GrpcConnection.open("127.0.0.1", port, timeout_s=30.0, collect_bodies=True)
        taken = connection.call("/test.Slow/Sleep", grpc_body(b""))
        await asyncio.sleep(0.3)  # the server has it
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, 10)  # GOAWAY, then a grace
        while not connection.draining:
            await asyncio.sleep(0.01)
        refused = await connection.call("/test.Slow/Sleep", grpc_body(b""))
        assert (refused.code, refused.details) == ("UNAVAILABLE", "server going away")
        assert (await taken) == (None, "", b"late")  # taken before the GOAWAY: answered
        await stopping
        assert connection.closed or connection._transport.is_closing()

    asyncio.run(run())
