"""Wire fuzzing of every RPC and REST route against the real daemon (navi.bench.wirefuzz), CI-sized.

A fixed seed, a few thousand structured and byte-level mutations of valid
requests to every method navi serves: every answer is a status with a message
(never UNKNOWN or INTERNAL, never a hang to the deadline), the answers to the
valid reference requests are byte-identical before and after, and RSS stays
within 10% of RSS after the warm-up; over HTTP every error is a 4xx (or a
route's own 501 / 503) with a JSON ``{"error": ...}`` body. ``benchmarks/wire_fuzz.py``
runs 200,000 (gRPC) and 50,000 (``--http``).
"""
from __future__ import annotations

import grpc

from navi.bench import wirefuzz
from tests.integration.conftest import REPO_ROOT

HOME = REPO_ROOT / "models" / "home"
DENSE = REPO_ROOT / "models" / "dense"


def test_every_rpc_survives_a_fixed_seed_of_hostile_requests(start_navi):
    navi = start_navi("--model-dir", HOME, "--model-dir", DENSE)
    seeds = wirefuzz.valid_seeds(HOME)
    assert {s.path.rsplit("/", 1)[1] for s in seeds} >= {
        "Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata", "GetModelStatus",
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "Check", "Watch"}
    report = wirefuzz.fuzz(navi.address, navi.process.pid, seeds, count=2000, warmup=4000, seed=17)
    assert report.sent == 6000
    assert report.violations == [], report.violations[:5]
    assert report.references_identical, report.reference_diffs
    assert report.rss_growth < 0.10, (report.rss_warm_bytes, report.rss_end_bytes)
    codes = {code for (_, code) in report.codes}
    # the mutations reach past parsing: some are served, some refused for their content
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND"} <= codes, report.codes
    assert navi.process.poll() is None


def test_every_rest_route_survives_a_fixed_seed_of_hostile_requests(start_navi):
    navi = start_navi("--model-dir", HOME, "--model-dir", DENSE)
    seeds = wirefuzz.http_seeds(HOME)
    assert {s.route for s in seeds} >= {
        "tfrest GET status", "tfrest GET metadata", "tfrest POST predict", "tfrest POST classify",
        "tfrest POST regress", "v2 GET v2", "v2 GET live", "v2 GET ready", "v2 GET model", "v2 GET config",
        "v2 POST infer"}
    report = wirefuzz.fuzz_http("127.0.0.1", navi.rest_port, navi.process.pid, seeds, count=1500, warmup=1000,
                                seed=23, threads=3)
    assert report.sent == 2500
    assert report.violations == [], report.violations[:5]
    assert report.references_identical, report.reference_diffs
    assert report.rss_growth < 0.10, (report.rss_warm_bytes, report.rss_end_bytes)
    statuses = {status for (_, status) in report.codes}
    # served, refused for content, unknown models and routes, wrong methods, gzip bombs
    assert {200, 400, 404, 405, 413} <= statuses, report.codes
    assert "Traceback" not in navi.log_text()
    assert navi.process.poll() is None


def test_the_rest_checker_flags_what_it_must():
    request = wirefuzz.HttpRequest("POST", "/v2/models/dense/infer", {}, b"{}")
    check = wirefuzz.check_http
    assert check(request, 500, {}, b'{"error": "boom"}', 0.1, 10) != ""
    assert check(request, 502, {}, b'{"error": "boom"}', 0.1, 10) != ""
    assert check(request, 400, {}, b"400: Bad Request", 0.1, 10) != ""
    assert check(request, 400, {}, b'{"error": ""}', 0.1, 10) != ""
    assert check(request, 0, {}, b"", 0.1, 10) != ""
    assert check(request, 400, {}, b'{"error": "bad shape"}', 0.1, 10) == ""
    assert check(request, 503, {}, b'{"name": "dense", "ready": false}', 0.1, 10) == ""
    truncated = wirefuzz.HttpRequest("POST", "/v2/models/dense/infer", {"Content-Length": "9"}, b"{}", truncated=True)
    assert check(truncated, 0, {}, b"", 0.1, 10) == ""


def test_the_checker_flags_what_it_must():
    seed = wirefuzz.Seed("/inference.GRPCInferenceService/ModelInfer", None)
    assert wirefuzz._check(seed, b"", "INTERNAL", "boom", 0.1, 10) != ""
    assert wirefuzz._check(seed, b"", "UNKNOWN", "boom", 0.1, 10) != ""
    assert wirefuzz._check(seed, b"", "INVALID_ARGUMENT", "", 0.1, 10) != ""
    assert wirefuzz._check(seed, b"", "DEADLINE_EXCEEDED", "Deadline Exceeded", 10.0, 10) != ""
    assert wirefuzz._check(seed, b"", "INVALID_ARGUMENT", "malformed", 0.1, 10) == ""
    assert grpc.StatusCode.OK.name == "OK"


def test_watch_streams_opened_and_cancelled_do_not_wedge_the_server(start_navi):
    """grpcio's HealthServicer sent under its lock while the server thread ran a cancelled
    Watch's close callback, which waited for that lock: every RPC then hung (found by the fuzzer)."""
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    navi = start_navi("--model-dir", DENSE)
    errors = []

    def churn():
        with navi.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for i in range(150):
                stream = stub.Watch(health_pb2.HealthCheckRequest(service="dense" if i % 2 else "x"), timeout=10)
                try:
                    next(stream)
                except grpc.RpcError as error:
                    errors.append(error.code())
                stream.cancel()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    with navi.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service="dense"), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "'nope'" in error.details()
