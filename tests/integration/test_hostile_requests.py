"""Hostile requests against the real daemon: undecodable bytes, impossible shapes, amplification.

Every answer must be a gRPC status a client can act on: INVALID_ARGUMENT for
a message that is not one or that contradicts itself, RESOURCE_EXHAUSTED
naming the bound and its flag for one past a per-request bound, NOT_FOUND for
an unknown model whatever the length of its name; never INTERNAL, and no
memory kept per refused request.
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import model_service_pb2, predict_pb2, prediction_service_pb2
from navi.segdense import find_spec_files, load_layout
from navi.workload import make_bprs
from tests.integration.conftest import REPO_ROOT, proc_status

HOME = REPO_ROOT / "models" / "home"
DENSE = REPO_ROOT / "models" / "dense"

SERVICES = [
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
METHODS = [(f"/{service.full_name}/{method.name}", method) for service in SERVICES for method in service.methods]

#: bytes no message type parses: a tag cut short, a field longer than the
#: message, a varint field with no value, an invalid wire type, a valid
#: ModelInferRequest cut in the middle of its tensor
UNDECODABLE = {
    "ff": b"\xff",
    "length past end": b"\x0a\x07\x66",
    "varint missing": b"\x08",
    "wire type 7": b"\x0f",
    "truncated": kserve_pb2.ModelInferRequest(
        model_name="dense", raw_input_contents=[b"\0" * 64]).SerializeToString()[:-20],
}

#: a name field that is not UTF-8: at the top level (KServe model name, health
#: service) or inside the model_spec (TF Serving)
BAD_UTF8_TOP = b"\x0a\x02\xff\xfe"
BAD_UTF8_SPEC = b"\x0a\x04\x0a\x02\xff\xfe"


def _bad_utf8(method) -> bytes | None:
    first = method.input_type.fields_by_number.get(1)
    if first is None:
        return None
    if first.type == first.TYPE_STRING:
        return BAD_UTF8_TOP
    if first.message_type is not None and first.message_type.name == "ModelSpec":
        return BAD_UTF8_SPEC
    return None


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", HOME, "--model-dir", DENSE)


def _call(channel, path: str, method, payload: bytes, timeout_s: float = 20.0):
    """Send ``payload`` as the request of ``path``; the grpc.RpcError, or None if it succeeded."""
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            for _ in stream(payload, timeout=timeout_s):
                break
        else:
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(payload, timeout=timeout_s)
    except grpc.RpcError as error:
        return error
    return None


@pytest.mark.parametrize("path,method", METHODS, ids=[path for path, _ in METHODS])
def test_every_method_answers_undecodable_bytes_invalid_argument(navi, path, method):
    payloads = dict(UNDECODABLE)
    bad_utf8 = _bad_utf8(method)
    if bad_utf8 is not None:
        payloads["bad utf-8"] = bad_utf8
    with navi.channel() as channel:
        for what, payload in payloads.items():
            error = _call(channel, path, method, payload)
            assert error is not None, f"{path} accepted {what} bytes"
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, error.code(), error.details())
            assert "malformed" in error.details(), (what, error.details())


def test_undecodable_requests_keep_no_memory(navi):
    """The generated deserializers leaked ~16 KB per undecodable request (48 MB per 3,000)."""
    by_name = dict(METHODS)
    targets = [(path, by_name[path]) for path in (
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        "/tensorflow.serving.PredictionService/Classify",
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/tensorflow.serving.ModelService/GetModelStatus",
    )]
    payloads = [b"\x0a\x07\x66", b"\xff", BAD_UTF8_SPEC]

    def hammer(count: int) -> None:
        with navi.channel() as channel:
            for i in range(count):
                path, method = targets[i % len(targets)]
                error = _call(channel, path, method, payloads[i % len(payloads)])
                assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT

    hammer(600)  # warm-up: threads, arenas, caches
    before = proc_status(navi.process.pid, "VmRSS")
    count = 3000
    hammer(count)
    grown = proc_status(navi.process.pid, "VmRSS") - before
    assert grown < count * 16 * 1024 / 4, f"RSS grew {grown / 1e6:.1f} MB over {count} undecodable requests"


def _predict(channel, request, timeout_s: float = 30.0):
    stub = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=predict_pb2.PredictRequest.SerializeToString,
                               response_deserializer=predict_pb2.PredictResponse.FromString)
    return stub(request, timeout=timeout_s)


def _infer(channel, request, timeout_s: float = 30.0):
    stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=kserve_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=kserve_pb2.ModelInferResponse.FromString)
    return stub(request, timeout=timeout_s)


def _dense_request(dims, values=(1.0,), dtype=types_pb2.DT_FLOAT, content=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dense"
    tensor = request.inputs["x"]
    tensor.dtype = dtype
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if content is not None:
        tensor.tensor_content = content
    elif dtype == types_pb2.DT_STRING:
        tensor.string_val.extend(values)
    else:
        tensor.float_val.extend(values)
    return request


def _code(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("dims,content,code,words", [
    ([2**32, 2**32], None, grpc.StatusCode.INVALID_ARGUMENT, "int64"),
    ([2**62, 2**62], None, grpc.StatusCode.INVALID_ARGUMENT, "int64"),
    ([-5, 16], None, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ([2**45, 16], None, grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-request-decoded-bytes"),
    ([2, 16], b"\0" * 100, grpc.StatusCode.INVALID_ARGUMENT, "tensor_content has 100 bytes"),
    ([2**61, 16], b"\0" * 128, grpc.StatusCode.INVALID_ARGUMENT, "int64"),
])
def test_tf_shapes_that_cannot_be_allocated(navi, dims, content, code, words):
    with navi.channel() as channel:
        got, details = _code(lambda: _predict(channel, _dense_request(dims, content=content)))
    assert got == code, details
    assert words in details


def test_tf_string_broadcast_to_huge_shape(navi):
    request = _dense_request([2**45], values=[b"abc"], dtype=types_pb2.DT_STRING)
    request.model_spec.name = "home"
    request.inputs["examples"].CopyFrom(request.inputs["x"])
    del request.inputs["x"]
    with navi.channel() as channel:
        got, details = _code(lambda: _predict(channel, request))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "max_request_decoded_bytes" in details


@pytest.mark.parametrize("shape,raw,code", [
    ([2**45], True, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ([2**45], False, grpc.StatusCode.INVALID_ARGUMENT),
    ([2**32, 2**32], True, grpc.StatusCode.INVALID_ARGUMENT),
    ([2**32, 2**32], False, grpc.StatusCode.INVALID_ARGUMENT),
    ([-1], True, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_kserve_bytes_shapes_that_cannot_be_allocated(navi, shape, raw, code):
    request = kserve_pb2.ModelInferRequest(model_name="home")
    tensor = request.inputs.add(name="examples", datatype="BYTES", shape=shape)
    if raw:
        request.raw_input_contents.append(b"\x03\0\0\0abc")
    else:
        tensor.contents.bytes_contents.append(b"abc")
    with navi.channel() as channel:
        got, details = _code(lambda: _infer(channel, request))
    assert got == code, details


def _home_bpr(candidates: int, **features) -> bytes:
    layout = load_layout(*find_spec_files(next(HOME.iterdir())))
    return make_bprs(layout, 1, candidates=candidates, seed=3, **features)[0]


def test_one_bpr_broadcast_to_many_is_bounded_before_it_is_decoded(navi):
    """One 155 KB BPR sent with shape [2000] used to decode and run 20,000 rows (RSS 0.7 -> 3.0 GB)."""
    bpr = _home_bpr(100)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "home"
    tensor = request.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=2000)
    tensor.string_val.append(bpr)
    before = proc_status(navi.process.pid, "VmRSS")
    with navi.channel() as channel:
        got, details = _code(lambda: _predict(channel, request))
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "--max-request-decoded-bytes" in details
        # under the bytes bound, over the rows bound: 200 x 100 rows
        del tensor.string_val[:]
        tensor.string_val.append(_home_bpr(100, continuous_per_candidate=20, binary_per_candidate=2,
                                           discrete_per_candidate=2))
        tensor.tensor_shape.dim[0].size = 200
        got, details = _code(lambda: _predict(channel, request))
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "--max-request-rows" in details and "20000 rows" in details
        # the same BPR sent as one value of shape [2] is TF Serving's fill and is served
        tensor.tensor_shape.dim[0].size = 2
        response = _predict(channel, request)
    assert list(response.outputs["output_0"].tensor_shape.dim)[0].size == 200
    assert proc_status(navi.process.pid, "VmRSS") - before < 200 * 1024 * 1024


def test_long_model_name_gets_not_found_with_a_short_message(navi):
    name = "m" * 4000
    with navi.channel() as channel:
        request = _dense_request([1, 16], values=[0.5] * 16)
        request.model_spec.name = name
        got, details = _code(lambda: _predict(channel, request))
        assert got == grpc.StatusCode.NOT_FOUND, details
        assert len(details) < 400 and "4000 characters" in details
        stub = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                   request_serializer=kserve_pb2.ModelMetadataRequest.SerializeToString,
                                   response_deserializer=kserve_pb2.ModelMetadataResponse.FromString)
        got, details = _code(lambda: stub(kserve_pb2.ModelMetadataRequest(name=name), timeout=10))
        assert got == grpc.StatusCode.NOT_FOUND, details
        assert len(details) < 400


def test_daemon_still_serves_after_hostile_requests(navi):
    with navi.channel() as channel:
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        request = _dense_request([2, 16], content=x.tobytes())
        response = _predict(channel, request)
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [2, 4]
    assert "Exception deserializing" not in navi.log_text()


def test_128_requests_in_flight_with_the_defaults_all_succeed(navi):
    """No request is refused for having waited for a handler thread (the defaults: as many
    running threads as cores, 64 holding requests, batch_drop_ms 90)."""
    bpr = _home_bpr(10)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "home"
    tensor = request.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(bpr)
    with navi.channel() as channel:
        stub = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                   response_deserializer=predict_pb2.PredictResponse.FromString)
        calls = [stub.future(request, timeout=120) for _ in range(128)]
        codes = []
        for call in calls:
            try:
                rows = call.result().outputs["output_0"].tensor_shape.dim[0].size
                codes.append("OK" if rows == 10 else f"rows {rows}")
            except grpc.RpcError as error:
                codes.append(f"{error.code().name}: {error.details()}")
    assert codes == ["OK"] * 128, [code for code in codes if code != "OK"][:3]
