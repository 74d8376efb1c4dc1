"""The real ``navi serve`` daemon over real gRPC: TF Serving + KServe V2 APIs.

Two daemons per module run the same generated ONNX models:

* ``navi``: short batch timeout, for answers, dtypes, batching, metrics,
  health, reflection and every error code the fast path can produce;
* ``slow``: a 1.5 s batch timeout, a queue bound of 2 and a model directory
  with no version yet, for UNAVAILABLE, RESOURCE_EXHAUSTED, deadlines and the
  SIGTERM drain (last test: it stops the daemon).

Expected answers come from ONNX Runtime run directly on the same inputs.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from navi import codec
from tests.integration.conftest import REPO_ROOT

VERSION = 1700000000000
HOME_MODEL_DIR = REPO_ROOT / "models" / "home"
ROWS_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "flag": np.bool_}
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


# --------------------------------------------------------------------------- models


def _save(model_dir, graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir = model_dir / str(VERSION)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    return version_dir / "model.onnx"


def mixed_graph():
    """Every numeric dtype in, float/double/int64/string out: y = sum(cast(x_i)) @ W + b."""
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), ["N", 4])
              for name, dt in ROWS_DTYPES.items()]
    inputs.append(helper.make_tensor_value_info("s", T.STRING, ["N"]))
    nodes = [helper.make_node("Cast", [name], [f"{name}_f"], to=T.FLOAT) for name in ROWS_DTYPES if name != "f32"]
    nodes += [
        helper.make_node("Sum", ["f32"] + [f"{name}_f" for name in ROWS_DTYPES if name != "f32"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
        helper.make_node("ArgMax", ["y"], ["best"], axis=1, keepdims=0),
        helper.make_node("Cast", ["y"], ["y64"], to=T.DOUBLE),
        helper.make_node("Identity", ["s"], ["s_out"]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", T.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("best", T.INT64, ["N"]),
        helper.make_tensor_value_info("y64", T.DOUBLE, ["N", 3]),
        helper.make_tensor_value_info("s_out", T.STRING, ["N"]),
    ]
    inits = [numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")]
    return helper.make_graph(nodes, "mixed", inputs, outputs, inits)


def fragile_graph():
    """a + b with free widths: warms up fine, fails inside ONNX Runtime when widths differ."""
    inputs = [helper.make_tensor_value_info(n, T.FLOAT, ["N", "K"]) for n in ("a", "b")]
    outputs = [helper.make_tensor_value_info("out", T.FLOAT, ["N", "K"])]
    return helper.make_graph([helper.make_node("Add", ["a", "b"], ["out"])], "fragile", inputs, outputs)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A model repository: mixed/, fragile/, and empty/ (no version yet)."""
    root = tmp_path_factory.mktemp("repo")
    paths = {"mixed": _save(root / "mixed", mixed_graph()), "fragile": _save(root / "fragile", fragile_graph())}
    (root / "empty").mkdir()
    return root, paths


@pytest.fixture(scope="module")
def oracle(repo):
    """ONNX Runtime on the mixed model, run directly."""
    session = ort.InferenceSession(str(repo[1]["mixed"]), providers=["CPUExecutionProvider"])

    def as_text(array):
        # ONNX Runtime's Python API takes strings as str (bytes would become their repr)
        if array.dtype != object:
            return array
        return np.array([v.decode() if isinstance(v, bytes) else v for v in array.ravel()],
                        dtype=object).reshape(array.shape)

    return lambda feeds: dict(zip([o.name for o in session.get_outputs()],
                                  session.run(None, {k: as_text(v) for k, v in feeds.items()})))


@pytest.fixture(scope="module")
def navi(start_navi, repo):
    root, _ = repo
    # the committed demo "home" model serves BPR mode; its input keeps the default name
    return start_navi("--model-dir", root / "mixed", "--model-dir", root / "fragile",
                      "--model-dir", HOME_MODEL_DIR, "--input", "", "--input", "", "--input", "examples",
                      "--batch-time-out-millis", "20", "--max-batch-size", "8",
                      # a batch holds at most as many requests as there are handler threads
                      "--grpc-threads", "8")


def make_inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {
        "f32": rng.standard_normal((rows, 4)).astype(np.float32),
        "f64": rng.standard_normal((rows, 4)),
        "i32": rng.integers(-50, 50, (rows, 4), dtype=np.int32),
        "i64": rng.integers(-50, 50, (rows, 4), dtype=np.int64),
        "flag": rng.integers(0, 2, (rows, 4)).astype(bool),
        "s": np.array([f"row-{seed}-{i}".encode() for i in range(rows)], dtype=object),
    }
    return feeds


def predict_request(feeds, model="mixed", typed=False, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, array in feeds.items():
        tensor = request.inputs[name]
        if typed and array.dtype != object:
            tensor.dtype = codec.tf_dtype_of(array.dtype)
            for size in array.shape:
                tensor.tensor_shape.dim.add(size=size)
            field = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val",
                     np.int64: "int64_val", np.bool_: "bool_val"}[array.dtype.type]
            getattr(tensor, field).extend(array.reshape(-1).tolist())
        else:
            codec.ndarray_to_tensor_proto(array, tensor)
    return request


def _as_bytes(item) -> bytes:
    # ONNX Runtime hands string outputs back as str, the wire as bytes
    return item.encode() if isinstance(item, str) else bytes(item)


def assert_outputs_equal(outputs: dict, expected: dict):
    assert set(outputs) == set(expected)
    for name, want in expected.items():
        got = outputs[name]
        assert got.shape == want.shape, name
        if want.dtype == object:
            assert [_as_bytes(x) for x in got.reshape(-1)] == [_as_bytes(x) for x in want.reshape(-1)], name
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


def decode(response) -> dict[str, np.ndarray]:
    return {name: codec.tensor_proto_to_ndarray(t, name) for name, t in response.outputs.items()}


def metrics_of(daemon) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics", timeout=10).read()
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def sample_value(families, family_name, sample_name, **labels) -> float:
    family = families[family_name]
    return sum(s.value for s in family.samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


# --------------------------------------------------------------------------- Predict


@pytest.mark.parametrize("typed", [False, True], ids=["tensor_content", "typed_val"])
def test_predict_matches_onnxruntime(stub, oracle, typed):
    feeds = make_inputs(5, seed=1)
    response = stub.Predict(predict_request(feeds, typed=typed), timeout=30)
    assert response.model_spec.name == "mixed"
    assert response.model_spec.version.value == VERSION
    assert response.model_spec.signature_name == "serving_default"
    for name, tensor in response.outputs.items():
        assert tensor.tensor_shape.dim[0].size == 5
        if tensor.dtype != types_pb2.DT_STRING:
            assert tensor.tensor_content and not tensor.float_val, name
    assert_outputs_equal(decode(response), oracle(feeds))


def test_output_filter_and_version(stub, oracle):
    feeds = make_inputs(2, seed=2)
    request = predict_request(feeds, version=VERSION)
    request.output_filter.extend(["best", "y64"])
    response = stub.Predict(request, timeout=30)
    expected = oracle(feeds)
    assert_outputs_equal(decode(response), {k: expected[k] for k in ("best", "y64")})
    assert response.outputs["best"].dtype == types_pb2.DT_INT64
    assert response.outputs["y64"].dtype == types_pb2.DT_DOUBLE


def test_gzip_both_ways(navi, oracle):
    feeds = make_inputs(300, seed=3)  # answer above the compression threshold
    with navi.channel() as channel:
        gz_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = gz_stub.Predict(predict_request(feeds), timeout=30, compression=grpc.Compression.Gzip)
    assert_outputs_equal(decode(response), oracle(feeds))


def test_concurrent_requests_are_batched_and_split(start_navi, repo, oracle):
    """Eight concurrent requests make one batch (it closes on its size: its timeout is 10 s and a
    request at an idle queue waits for company), and each caller gets exactly its own rows."""
    root, _ = repo
    daemon = start_navi("--model-dir", root / "mixed", "--input", "", "--max-batch-size", "8",
                        "--batch-time-out-millis", "10000", "--batch-eager-when-idle", "false",
                        "--batch-drop-millis", "0", "--grpc-threads", "8")
    callers = 8
    barrier = threading.Barrier(callers)
    with daemon.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        before = metrics_of(daemon)

        def call(index):
            feeds = make_inputs(1 + index % 3, seed=100 + index)
            barrier.wait()
            return feeds, stub.Predict(predict_request(feeds), timeout=60)

        with ThreadPoolExecutor(callers) as pool:
            results = list(pool.map(call, range(callers)))
    for feeds, response in results:  # each caller got exactly its own rows
        assert_outputs_equal(decode(response), oracle(feeds))
    after = metrics_of(daemon)

    def delta(sample, **labels):
        return (sample_value(after, ":navi:batch_requests", sample, **labels)
                - sample_value(before, ":navi:batch_requests", sample, **labels))

    assert delta(":navi:batch_requests_count") == 1  # one batch...
    assert delta(":navi:batch_requests_sum") == callers  # ...of all eight requests


def test_official_tensorflow_serving_client(navi, oracle, tmp_path):
    """tensorflow-serving-api's own stubs and messages, in a process of their own.

    Our generated messages share the proto package names with the official
    ones, so both cannot live in one process; the daemon is separate anyway.
    """
    feeds = make_inputs(3, seed=4)
    np.savez(tmp_path / "feeds.npz", **{k: v for k, v in feeds.items() if k != "s"})
    script = textwrap.dedent(f"""
        import importlib.util, json, sys, types
        import numpy as np
        # Load tensorflow's generated protos without running tensorflow/__init__
        # (seconds of runtime start-up the client does not need).
        spec = importlib.util.find_spec("tensorflow")
        package = types.ModuleType("tensorflow")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = package
        import grpc
        from tensorflow.core.framework import tensor_pb2, types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

        feeds = dict(np.load({str(tmp_path / "feeds.npz")!r}))
        dtypes = {{"float32": types_pb2.DT_FLOAT, "float64": types_pb2.DT_DOUBLE, "int32": types_pb2.DT_INT32,
                   "int64": types_pb2.DT_INT64, "bool": types_pb2.DT_BOOL}}
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel({navi.address!r}))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mixed"
        for name, array in feeds.items():
            tensor = request.inputs[name]
            tensor.dtype = dtypes[array.dtype.name]
            for size in array.shape:
                tensor.tensor_shape.dim.add(size=size)
            tensor.tensor_content = array.tobytes()
        strings = request.inputs["s"]
        strings.dtype = types_pb2.DT_STRING
        strings.tensor_shape.dim.add(size=3)
        strings.string_val.extend({[bytes(x) for x in feeds["s"]]!r})
        response = stub.Predict(request, timeout=30)
        outputs = {{}}
        for name, tensor in response.outputs.items():
            outputs[name] = {{"dtype": int(tensor.dtype), "shape": [d.size for d in tensor.tensor_shape.dim],
                             "content": tensor.tensor_content.hex(),
                             "strings": [s.hex() for s in tensor.string_val]}}
        meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta_request.model_spec.name = "mixed"
        meta = stub.GetModelMetadata(meta_request, timeout=30)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sig_map)
        sig = sig_map.signature_def["serving_default"]
        print(json.dumps({{
            "version": response.model_spec.version.value, "outputs": outputs,
            "meta_version": meta.model_spec.version.value, "method": sig.method_name,
            "inputs": {{k: [int(v.dtype), [d.size for d in v.tensor_shape.dim]] for k, v in sig.inputs.items()}},
            "out_sig": {{k: [int(v.dtype), [d.size for d in v.tensor_shape.dim]] for k, v in sig.outputs.items()}},
        }}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["version"] == VERSION and answer["meta_version"] == VERSION
    expected = oracle(feeds)
    for name, want in expected.items():
        got = answer["outputs"][name]
        assert got["shape"] == list(want.shape)
        if want.dtype == object:
            assert [bytes.fromhex(s) for s in got["strings"]] == [_as_bytes(x) for x in want]
        else:
            array = np.frombuffer(bytes.fromhex(got["content"]), dtype=want.dtype).reshape(want.shape)
            np.testing.assert_allclose(array, want, rtol=1e-6)
    assert answer["method"] == "tensorflow/serving/predict"
    assert answer["inputs"]["f64"] == [types_pb2.DT_DOUBLE, [-1, 4]]
    assert answer["inputs"]["s"] == [types_pb2.DT_STRING, [-1]]
    assert answer["out_sig"]["best"] == [types_pb2.DT_INT64, [-1]]


def test_get_model_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mixed"
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == "mixed" and response.model_spec.version.value == VERSION
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert set(sig.inputs) == set(ROWS_DTYPES) | {"s"}
    assert sig.inputs["i32"].dtype == types_pb2.DT_INT32
    assert [d.size for d in sig.outputs["y"].tensor_shape.dim] == [-1, 3]


def test_get_model_status(navi):
    with navi.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "mixed"
        response = stub.GetModelStatus(request, timeout=30)
        (status,) = response.model_version_status
        assert status.version == VERSION
        assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelStatus(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "model-dir" in info.value.details()


def test_bpr_mode_matches_converter_plus_onnxruntime(stub):
    from navi.converter import BprConverter
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    version_dir = HOME_MODEL_DIR / str(VERSION)
    layout = load_layout_from_dir(version_dir)
    payloads = make_bprs(layout, 3, candidates=4, seed=21)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    dense = BprConverter(layout).convert(payloads)
    (expected,) = session.run(None, {name: dense[name] for name in layout.feed_order})
    for input_name in ("examples", "whatever_name"):  # one string tensor is taken by any name
        request = predict_request({input_name: np.array(payloads, dtype=object)}, model="home")
        response = stub.Predict(request, timeout=30)
        assert response.model_spec.name == "home" and response.model_spec.version.value == VERSION
        got = decode(response)["output_0"]
        assert got.shape == expected.shape == (12, 1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    broken = predict_request({"examples": np.array([payloads[0], payloads[1][:40]], dtype=object)}, model="home")
    code, details = _code_of(stub.Predict, broken)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _raw_predict(navi):
    """Predict with the request given as bytes: messages no protobuf writer makes."""
    channel = grpc.insecure_channel(f"127.0.0.1:{navi.port}")
    return channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=None,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )


def test_bpr_request_in_any_wire_shape_gets_the_same_answer(navi, stub):
    """Canonical requests take the zero-copy path, unusual ones the full parse: same rows."""
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    layout = load_layout_from_dir(HOME_MODEL_DIR / str(VERSION))
    payloads = make_bprs(layout, 2, candidates=3, seed=5)
    request = predict_request({"examples": np.array(payloads, dtype=object)}, model="home")
    expected = decode(stub.Predict(request, timeout=30))["output_0"]
    canonical = request.SerializeToString()
    # The same request with its tensor split in two halves inside one map entry:
    # protobuf merges them (the scanner declines such entries and parses in full).
    tensor = request.inputs["examples"]
    head = predict_pb2.PredictRequest(model_spec=request.model_spec)
    half_a = tensor.__class__(dtype=tensor.dtype, tensor_shape=tensor.tensor_shape, string_val=payloads[:1])
    half_b = tensor.__class__(string_val=payloads[1:])

    def field(number: int, payload: bytes) -> bytes:
        return codec_varint(number << 3 | 2) + codec_varint(len(payload)) + payload

    entry = field(1, b"examples") + field(2, half_a.SerializeToString()) + field(2, half_b.SerializeToString())
    merged = head.SerializeToString() + field(2, entry)
    call = _raw_predict(navi)
    for raw in (canonical, merged):
        got = decode(call(raw, timeout=30))["output_0"]
        np.testing.assert_array_equal(got, expected)


def codec_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_malformed_predict_request_is_invalid_argument(navi, stub, oracle):
    call = _raw_predict(navi)
    for raw in (b"\x12\x50garbage", b"\xff\xff\xff", bytes([0x0A, 0x05]) + b"ab"):
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
        assert "malformed PredictRequest" in info.value.details()
    # and the daemon keeps serving
    feeds = make_inputs(2, seed=9)
    assert_outputs_equal(decode(stub.Predict(predict_request(feeds), timeout=30)), oracle(feeds))


# --------------------------------------------------------------------------- errors


def _code_of(call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value.code(), info.value.details()


def test_error_codes(stub):
    feeds = make_inputs(2, seed=5)
    code, details = _code_of(stub.Predict, predict_request(feeds, model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    code, _ = _code_of(stub.Predict, predict_request(feeds, version=42))
    assert code == grpc.StatusCode.NOT_FOUND

    missing = dict(feeds)
    del missing["i32"]
    code, details = _code_of(stub.Predict, predict_request(missing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "i32" in details
    code, details = _code_of(stub.Predict, predict_request({**feeds, "extra": feeds["f32"]}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "extra" in details
    code, _ = _code_of(stub.Predict, predict_request({**feeds, "f32": feeds["s"]}))  # strings for floats
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code_of(stub.Predict, predict_request({**feeds, "f32": np.zeros((2, 5), np.float32)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    bad = predict_request(feeds)
    bad.inputs["f32"].tensor_content = b"\x00" * 3
    code, details = _code_of(stub.Predict, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensor_content" in details
    request = predict_request(feeds)
    request.output_filter.append("no_such_output")
    code, _ = _code_of(stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code_of(stub.Predict, predict_request(feeds, signature_name="other"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_runtime_failure_is_internal_and_daemon_keeps_serving(stub, oracle):
    fragile = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 4), np.float32)}
    code, _ = _code_of(stub.Predict, predict_request(fragile, model="fragile"))
    assert code == grpc.StatusCode.INTERNAL
    fine = {"a": np.ones((2, 3), np.float32), "b": np.full((2, 3), 2, np.float32)}
    response = stub.Predict(predict_request(fine, model="fragile"), timeout=30)
    np.testing.assert_array_equal(decode(response)["out"], np.full((2, 3), 3, np.float32))
    feeds = make_inputs(1, seed=6)
    assert_outputs_equal(decode(stub.Predict(predict_request(feeds), timeout=30)), oracle(feeds))


def test_classify_regress_multi_inference_unimplemented(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "mixed"
    code, details = _code_of(stub.Classify, request)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "Predict" in details
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "mixed"
    assert _code_of(stub.Regress, request)[0] == grpc.StatusCode.UNIMPLEMENTED
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name = "mixed"
    assert _code_of(stub.MultiInference, request)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_every_rpc_answers_with_a_status(navi):
    """Each method of every service, called with an empty request, answers: no crash."""
    from navi._proto.kserve import grpc_predict_v2_pb2
    from navi._proto.tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
    from google.protobuf import message_factory

    with navi.channel() as channel:
        for module in (prediction_service_pb2, model_service_pb2, grpc_predict_v2_pb2):
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    request_class = message_factory.GetMessageClass(method.input_type)
                    response_class = message_factory.GetMessageClass(method.output_type)
                    call = channel.unary_unary(
                        f"/{service.full_name}/{method.name}",
                        request_serializer=request_class.SerializeToString,
                        response_deserializer=response_class.FromString,
                    )
                    try:
                        call(request_class(), timeout=30)
                    except grpc.RpcError as error:
                        assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
                            method.full_name, error.code(), error.details())


# --------------------------------------------------------------------------- KServe V2


def test_kserve_infer_raw_and_typed(kstub, oracle):
    feeds = make_inputs(4, seed=7)
    for raw in (True, False):
        request = kserve_pb2.ModelInferRequest(model_name="mixed", id=f"req-{raw}")
        for name, array in feeds.items():
            tensor = request.inputs.add(name=name, datatype=codec.kserve_datatype_of(array.dtype),
                                        shape=array.shape)
            if raw:
                request.raw_input_contents.append(
                    codec.bytes_to_raw(array) if array.dtype == object else array.tobytes())
            else:
                field = {np.float32: "fp32_contents", np.float64: "fp64_contents", np.int32: "int_contents",
                         np.int64: "int64_contents", np.bool_: "bool_contents",
                         np.object_: "bytes_contents"}[array.dtype.type]
                getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
        response = kstub.ModelInfer(request, timeout=30)
        assert (response.model_name, response.model_version, response.id) == ("mixed", str(VERSION), f"req-{raw}")
        back = kserve_pb2.ModelInferRequest()
        for out, content in zip(response.outputs, response.raw_output_contents):
            back.inputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            back.raw_input_contents.append(content)
        assert_outputs_equal(codec.kserve_request_inputs(back), oracle(feeds))


def test_kserve_metadata_and_readiness(kstub):
    assert kstub.ServerLive(kserve_pb2.ServerLiveRequest(), timeout=30).live
    assert kstub.ServerReady(kserve_pb2.ServerReadyRequest(), timeout=30).ready
    assert kstub.ModelReady(kserve_pb2.ModelReadyRequest(name="mixed"), timeout=30).ready
    assert not kstub.ModelReady(kserve_pb2.ModelReadyRequest(name="mixed", version="7"), timeout=30).ready
    assert kstub.ServerMetadata(kserve_pb2.ServerMetadataRequest(), timeout=30).name == "navi"
    meta = kstub.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="mixed"), timeout=30)
    assert meta.versions == [str(VERSION)] and meta.platform == "onnxruntime_onnx"
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["flag"] == ("BOOL", [-1, 4]) and inputs["s"] == ("BYTES", [-1])
    code, _ = _code_of(kstub.ModelMetadata, kserve_pb2.ModelMetadataRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- health, reflection, metrics


def test_health(navi):
    with navi.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mixed", "fragile", "home"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection(navi):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with navi.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
                "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        file_proto = database.FindFileContainingSymbol("tensorflow.serving.PredictionService")
        assert file_proto.name == "tensorflow_serving/apis/prediction_service.proto"


def test_metrics_parse(navi, stub):
    feeds = make_inputs(3, seed=8)
    stub.Predict(predict_request(feeds), timeout=30)
    families = metrics_of(navi)
    assert sample_value(families, ":navi:num_requests", ":navi:num_requests_total") >= 1
    assert sample_value(families, ":navi:num_requests_by_model", ":navi:num_requests_by_model_total",
                        model_name="mixed") >= 1
    assert sample_value(families, ":navi:num_requests_failed", ":navi:num_requests_failed_total") >= 0
    assert sample_value(families, ":navi:num_predictions", ":navi:num_predictions_total",
                        model_name="mixed") >= 1
    assert sample_value(families, ":navi:predicted_rows", ":navi:predicted_rows_total",
                        model_name="mixed") >= 3
    assert sample_value(families, ":navi:response_time", ":navi:response_time_count", model_name="mixed") >= 1
    assert ":navi:navi_version" in families and ":navi:model_inference_time" in families
    # the handler pool's gauges, read when scraped: nothing held once the handler
    # thread is back from sending the answer (the client may see it a moment before)
    deadline = time.monotonic() + 5
    while True:
        held = [sample_value(families, name, name)
                for name in (":navi:handler_threads_running", ":navi:requests_in_flight")]
        if held == [0, 0] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        families = metrics_of(navi)
    assert held == [0, 0]
    # made-up model names (test_error_codes sent "nope") must not create series
    assert not any(sample.labels.get("model_name") == "nope"
                   for family in families.values() for sample in family.samples)


# --------------------------------------------------------------------------- slow daemon


@pytest.fixture(scope="module")
def slow(start_navi, repo):
    from navi.settings import BatchingSettings

    root, _ = repo
    # these tests need requests to wait in the queue for the batch timeout
    eager = ["--batch-eager-when-idle", "false"] if "eager_when_idle" in BatchingSettings.model_fields else []
    return start_navi(*eager, "--model-dir", root / "mixed", "--model-dir", root / "empty",
                      "--batch-time-out-millis", "1500", "--max-batch-size", "64",
                      "--max-queued-requests", "2", "--batch-drop-millis", "0", "--input", "",
                      "--shutdown-grace-secs", "20",
                      # three requests in flight at once reach the queue bound of two
                      "--grpc-threads", "8")


def test_not_loaded_is_unavailable(slow):
    with slow.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        code, details = _code_of(stub.Predict, predict_request(make_inputs(1, 9), model="empty"))
        assert code == grpc.StatusCode.UNAVAILABLE and "empty" in details
        health = health_pb2_grpc.HealthStub(channel)
        statuses = {s: health.Check(health_pb2.HealthCheckRequest(service=s), timeout=30).status
                    for s in ("", "mixed", "empty")}
        assert statuses == {"": health_pb2.HealthCheckResponse.NOT_SERVING,
                            "mixed": health_pb2.HealthCheckResponse.SERVING,
                            "empty": health_pb2.HealthCheckResponse.NOT_SERVING}


def test_deadline_and_overload(slow, oracle):
    with slow.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        code, _ = _code_of(lambda r, timeout: stub.Predict(r, timeout=0.3), predict_request(make_inputs(1, 10)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.6)  # let the expired request leave the queue
        feeds = [make_inputs(1, 11), make_inputs(2, 12)]
        queued = [stub.Predict.future(predict_request(f), timeout=30) for f in feeds]
        time.sleep(0.3)  # both are in the queue, waiting for the 1.5 s batch timeout
        code, details = _code_of(stub.Predict, predict_request(make_inputs(1, 13)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for f, call in zip(feeds, queued):
            assert_outputs_equal(decode(call.result()), oracle(f))


def test_sigterm_drains_in_flight_requests(slow, oracle):
    with slow.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="mixed"), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        feeds = make_inputs(3, seed=14)
        in_flight = stub.Predict.future(predict_request(feeds), timeout=30)
        time.sleep(0.3)  # queued, waiting for its batch timeout
        slow.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert_outputs_equal(decode(in_flight.result()), oracle(feeds))
    assert slow.wait_exit(timeout_s=30) == 0
    assert "draining" in slow.log_text()


def test_health_and_metadata_do_not_wait_behind_queued_requests(start_navi, repo, oracle):
    """One handler thread, held for 3 s by a request waiting out its batch timeout,
    two more requests queued behind it: control calls still answer at once."""
    root, _ = repo
    daemon = start_navi("--model-dir", root / "mixed", "--input", "", "--grpc-threads", "1",
                        "--batch-eager-when-idle", "false", "--batch-time-out-millis", "3000",
                        "--batch-drop-millis", "0", "--max-queue-wait-millis", "0", "--max-batch-size", "8")
    with daemon.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        feeds = [make_inputs(1, seed=40 + i) for i in range(3)]
        queued = [stub.Predict.future(predict_request(f), timeout=30) for f in feeds]
        time.sleep(0.3)  # the first holds the only handler thread, the others wait for it
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="mixed"), timeout=1.0).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "mixed"
        request.metadata_field.append("signature_def")
        assert stub.GetModelMetadata(request, timeout=1.0).model_spec.name == "mixed"
        assert not any(call.done() for call in queued)  # the data plane really was busy
        for f, call in zip(feeds, queued):
            assert_outputs_equal(decode(call.result()), oracle(f))  # answered after all
