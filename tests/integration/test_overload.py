"""Overload: a flood past the admission bounds is refused promptly, unread; the admitted are served.

Real daemon, real gRPC clients, no timed assertions: which answers come, not how fast
(the figures are in benchmarks/RESULTS.md, "Reliability").
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from tests.integration.conftest import REPO_ROOT

HOME = REPO_ROOT / "models" / "home"
INFER = "/inference.GRPCInferenceService/ModelInfer"
ROWS = 100  # ~2.4 MB per request: each costs the one running thread milliseconds
FLOOD = 300

#: the rules that may refuse a request under the flood; each names its flag
RULES = ("--max-queue-wait-millis", "--grpc-max-waiting-requests")


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", HOME, "--onnx-use-converter", "none", "--input", "",
                      "--grpc-threads", "1", "--grpc-max-waiting-requests", "8",
                      "--max-queue-wait-millis", "20")


def _dense_request(channel) -> bytes:
    """A ModelInfer of ROWS zero rows for every input of the home model (dense mode)."""
    metadata = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata",
        request_serializer=kserve_pb2.ModelMetadataRequest.SerializeToString,
        response_deserializer=kserve_pb2.ModelMetadataResponse.FromString,
    )(kserve_pb2.ModelMetadataRequest(name="home"), timeout=30)
    request = kserve_pb2.ModelInferRequest(model_name="home")
    for spec in metadata.inputs:
        shape = [ROWS] + [int(d) for d in spec.shape[1:]]
        dtype = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64}[spec.datatype]
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        request.raw_input_contents.append(np.zeros(shape, dtype).tobytes())
    return request.SerializeToString()


def _answers(channel, payload: bytes, count: int) -> list[tuple[str, str]]:
    infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    calls = [infer.future(payload, timeout=120) for _ in range(count)]
    answers = []
    for call in calls:
        try:
            call.result()
            answers.append(("OK", ""))
        except grpc.RpcError as error:
            answers.append((error.code().name, error.details() or ""))
    return answers


def test_a_flood_past_the_bounds_is_refused_resource_exhausted_and_the_admitted_are_served(navi):
    with navi.channel() as channel:
        payload = _dense_request(channel)
        assert _answers(channel, payload, 1) == [("OK", "")]
        answers = _answers(channel, payload, FLOOD)
        codes = {code for code, _ in answers}
        assert codes == {"OK", "RESOURCE_EXHAUSTED"}, [a for a in answers if a[0] not in ("OK", "RESOURCE_EXHAUSTED")][:3]
        refused = [details for code, details in answers if code == "RESOURCE_EXHAUSTED"]
        assert all(any(rule in details for rule in RULES) for details in refused), refused[:3]
        # refused before parsing: the time and count bounds of the handler pool
        assert any("for a handler thread" in details for details in refused), refused[:3]
        # after the flood, a request is served as before
        assert _answers(channel, payload, 3) == [("OK", "")] * 3
    assert "Traceback" not in navi.log_text()


@pytest.mark.parametrize("window_bytes", ["0", "16384"])
def test_large_requests_are_served_whatever_the_stream_window(start_navi, window_bytes):
    """`--grpc-stream-window-bytes 0` gives grpc's own window back; a small one still serves 2.4 MB."""
    daemon = start_navi("--model-dir", HOME, "--onnx-use-converter", "none", "--input", "",
                        "--grpc-stream-window-bytes", window_bytes)
    with daemon.channel() as channel:
        payload = _dense_request(channel)
        assert len(payload) > 2_000_000
        assert _answers(channel, payload, 4) == [("OK", "")] * 4
