"""`navi serve --runtime tf` and `--runtime torch` with real models built here, answering through
our stubs and through the official tensorflow-serving-api client, compared with each framework
run directly.

TensorFlow registers its own ``tensorflow/core/...`` protos in protobuf's default pool, and the
official ``tensorflow_serving`` package its ``tensorflow_serving/apis/...`` ones; the test process
talks through navi's generated stubs, so everything TensorFlow-side (building the SavedModels,
the reference answers, the official client) runs in subprocesses.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest

from navi._proto.tensorflow.core.example import example_pb2
from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.torch_models import TYPED_SPEC
from navi import codec

TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- TensorFlow side

#: run in a subprocess: builds the SavedModels under argv[1] and pickles the reference answers
TF_BUILD = textwrap.dedent('''
    import pickle, sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf

    root = Path(sys.argv[1])

    sys.path.insert(0, sys.argv[2])  # the repository, for tests.tf_models
    from tests.tf_models import build_estimator_style, build_typed, example

    build_typed(root / "typed" / "1")
    build_estimator_style(root / "estimator" / "1")

    # Models that parse tf.Example cannot run on made-up inputs: like TF Serving, they ship
    # warmup records (assets.extra/tf_serving_warmup_requests, a TFRecord of PredictionLogs)
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    extra = root / "estimator" / "1" / "assets.extra"
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "estimator"
        warm = tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, 0.5]))}))
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([warm.SerializeToString()] * 2))
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())

    rng = np.random.default_rng(7)
    rows = 4
    feeds = {
        "f32": rng.normal(size=(rows, 2)).astype(np.float32),
        "f64": rng.normal(size=rows),
        "i32": rng.integers(-100, 100, size=rows, dtype=np.int32),
        "i64": rng.integers(-(2**40), 2**40, size=(rows, 3), dtype=np.int64),
        "flag": rng.integers(0, 2, size=rows).astype(bool),
        "text": np.array([f"row {i} \\u00e9".encode() for i in range(rows)], dtype=object),
    }
    loaded = tf.saved_model.load(str(root / "typed" / "1"))
    typed_out = {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in feeds.items()}).items()}

    examples = [example(1.0, 2.0), example(-1.0, 0.5), example(0.25, 0.0)]
    estimator = tf.saved_model.load(str(root / "estimator" / "1")).signatures
    classified = estimator["serving_default"](inputs=tf.constant(examples))
    regressed = estimator["regress"](inputs=tf.constant(examples))
    with open(root / "reference.pkl", "wb") as out:
        pickle.dump({
            "feeds": feeds, "typed": typed_out, "examples": [[1.0, 2.0], [-1.0, 0.5], [0.25, 0.0]],
            "classes": classified["classes"].numpy(), "scores": classified["scores"].numpy(),
            "regress": regressed["outputs"].numpy(),
        }, out)
''')


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf-models")
    result = subprocess.run([sys.executable, "-c", TF_BUILD, str(root), str(REPO)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(root / "reference.pkl", "rb") as reference:
        return root, pickle.load(reference)


@pytest.fixture(scope="module")
def tf_navi(start_navi, tf_models):
    root, _ = tf_models
    return start_navi("--runtime", "tf", "--model-dir", root / "typed", "--model-dir", root / "estimator",
                      "--input", "", "--output", "", "--intra-op-parallelism", "1",
                      "--inter-op-parallelism", "1", "--batch-time-out-millis", "1")


def stub_of(daemon) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(daemon.channel())


def predict_request(model: str, feeds: dict[str, np.ndarray], typed_fields: bool = False) -> predict_pb2.PredictRequest:
    """A PredictRequest with numbers in tensor_content, or in the typed *_val fields."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    fields = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val",
              np.int64: "int64_val", np.bool_: "bool_val"}
    for name, array in feeds.items():
        tensor = request.inputs[name]
        if typed_fields and array.dtype != object:
            tensor.dtype = codec.tf_dtype_of(array.dtype)
            for size in array.shape:
                tensor.tensor_shape.dim.add(size=size)
            getattr(tensor, fields[array.dtype.type]).extend(array.reshape(-1).tolist())
        else:
            codec.ndarray_to_tensor_proto(array, tensor)
    return request


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        value = got[name]
        assert value.shape == expected.shape, name
        if expected.dtype == object:
            assert [bytes(x) for x in value.reshape(-1)] == [bytes(x) for x in expected.reshape(-1)], name
        else:
            assert value.dtype == expected.dtype, name
            np.testing.assert_array_equal(value, expected, err_msg=name)


@pytest.mark.tf
@pytest.mark.parametrize("typed_fields", [False, True], ids=["tensor_content", "typed_fields"])
def test_tf_predict_every_dtype_equals_tensorflow(tf_navi, tf_models, typed_fields):
    _, reference = tf_models
    response = stub_of(tf_navi).Predict(predict_request("typed", reference["feeds"], typed_fields),
                                        timeout=TIMEOUT_S)
    assert response.model_spec.name == "typed" and response.model_spec.version.value == 1
    got = {name: codec.tensor_proto_to_ndarray(tensor, name) for name, tensor in response.outputs.items()}
    assert_same(got, reference["typed"])
    assert response.outputs["text_out"].dtype == types_pb2.DT_STRING
    assert response.outputs["flag_out"].dtype == types_pb2.DT_BOOL


@pytest.mark.tf
def test_tf_bad_dtype_is_invalid_argument_and_serving_goes_on(tf_navi, tf_models):
    _, reference = tf_models
    stub = stub_of(tf_navi)
    feeds = dict(reference["feeds"], i32=reference["feeds"]["f32"][:, 0].copy())  # float for int32
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_request("typed", feeds), timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "i32" in raised.value.details()
    response = stub.Predict(predict_request("typed", reference["feeds"]), timeout=TIMEOUT_S)
    assert "score" in response.outputs


@pytest.mark.tf
def test_tf_metadata_is_the_signature(tf_navi):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "typed"
    response = stub_of(tf_navi).GetModelMetadata(request, timeout=TIMEOUT_S)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    inputs = {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in sig.inputs.items()}
    assert inputs == {
        "f32": (types_pb2.DT_FLOAT, [-1, 2]), "f64": (types_pb2.DT_DOUBLE, [-1]),
        "i32": (types_pb2.DT_INT32, [-1]), "i64": (types_pb2.DT_INT64, [-1, 3]),
        "flag": (types_pb2.DT_BOOL, [-1]), "text": (types_pb2.DT_STRING, [-1]),
    }
    assert sig.outputs["text_out"].dtype == types_pb2.DT_STRING


def tf_example(x: list[float]) -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.extend(x)
    return example


def regression_with_context(examples) -> regression_pb2.RegressionRequest:
    """A Regress request to "estimator": ``examples`` and a context of x = [100, 100], unused = 1."""
    regression = regression_pb2.RegressionRequest()
    regression.model_spec.name = "estimator"
    with_context = regression.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.extend([100.0, 100.0])
    with_context.context.features.feature["unused"].int64_list.value.append(1)
    with_context.examples.extend(tf_example(x) for x in examples)
    return regression


@pytest.mark.tf
def test_tf_classify_and_regress_equal_tensorflow(tf_navi, tf_models):
    _, reference = tf_models
    stub = stub_of(tf_navi)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "estimator"
    request.input.example_list.examples.extend(tf_example(x) for x in reference["examples"])
    result = stub.Classify(request, timeout=TIMEOUT_S).result
    labels = [[c.label.encode() for c in row.classes] for row in result.classifications]
    scores = np.array([[c.score for c in row.classes] for row in result.classifications], dtype=np.float32)
    assert labels == [list(row) for row in reference["classes"]]
    np.testing.assert_array_equal(scores, reference["scores"])

    # context features merge into each example; the example's own "x" wins over the context's
    regression = regression_with_context(reference["examples"])
    values = [r.value for r in stub.Regress(regression, timeout=TIMEOUT_S).result.regressions]
    np.testing.assert_array_equal(np.array(values, dtype=np.float32), reference["regress"])

    # the typed model exports no regress signature
    regression.model_spec.name = "typed"
    with pytest.raises(grpc.RpcError) as raised:
        stub.Regress(regression, timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def rest_post(daemon, path: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` as JSON to the daemon's REST port: (HTTP status, JSON answer)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{daemon.rest_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.tf
def test_tf_rest_classify_and_regress_equal_grpc(tf_navi, tf_models):
    """TF Serving REST ``:classify`` / ``:regress`` (the JSON of TF Serving's REST API
    documentation) answer what the gRPC Classify / Regress answer for the same examples."""
    _, reference = tf_models
    stub = stub_of(tf_navi)
    examples = [{"x": x} for x in reference["examples"]]

    status, classified = rest_post(tf_navi, "/v1/models/estimator:classify", {"examples": examples})
    assert status == 200, classified
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "estimator"
    request.input.example_list.examples.extend(tf_example(x) for x in reference["examples"])
    over_grpc = stub.Classify(request, timeout=TIMEOUT_S).result
    labels = [[label for label, _ in row] for row in classified["result"]]
    scores = [[score for _, score in row] for row in classified["result"]]
    assert labels == [[c.label for c in row.classes] for row in over_grpc.classifications]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32),
                                  np.array([[c.score for c in row.classes] for row in over_grpc.classifications],
                                           dtype=np.float32))
    # TensorFlow's own answer; float32 scores written as their shortest decimal (0.1, not 0.10000000149011612)
    assert labels == [[label.decode() for label in row] for row in reference["classes"]]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), reference["scores"])
    assert all(repr(score) == str(np.float32(score)) for row in scores for score in row)

    # context features merge into each example (the example's own "x" wins), as over gRPC
    context = {"x": [100.0, 100.0], "unused": 1}
    regression = regression_with_context(reference["examples"])
    over_grpc = [r.value for r in stub.Regress(regression, timeout=TIMEOUT_S).result.regressions]
    for path, body in (("/v1/models/estimator:regress", {"examples": examples, "context": context}),
                       ("/v1/models/estimator/versions/1:regress",
                        {"signature_name": "regress", "examples": examples, "context": context})):
        status, regressed = rest_post(tf_navi, path, body)
        assert status == 200, regressed
        assert set(regressed) == {"result"}
        np.testing.assert_array_equal(np.array(regressed["result"], dtype=np.float32),
                                      np.array(over_grpc, dtype=np.float32))
        np.testing.assert_array_equal(np.array(regressed["result"], dtype=np.float32), reference["regress"])

    # errors as TF Serving's REST API words them: {"error": ...} with the gRPC code's HTTP status
    status, error = rest_post(tf_navi, "/v1/models/typed:regress", {"examples": examples})
    assert status == 501 and "regress" in error["error"], error
    status, error = rest_post(tf_navi, "/v1/models/estimator:classify", {"examples": [{"x": [1.0]}]})
    assert status == 400 and set(error) == {"error"}, error


# ----------------------------------------------------------------------------- official client

#: run in a subprocess: the official tensorflow-serving-api client; prints outputs as JSON
OFFICIAL_CLIENT = textwrap.dedent('''
    import importlib.util, json, pickle, sys, types
    # tensorflow's generated protos without running tensorflow/__init__ (seconds the client does not need)
    spec = importlib.util.find_spec("tensorflow")
    package = types.ModuleType("tensorflow")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = package
    import grpc
    import numpy as np
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    address, model, feeds_path = sys.argv[1:4]
    with open(feeds_path, "rb") as source:
        feeds = pickle.load(source)
    dtypes = {"float32": types_pb2.DT_FLOAT, "float64": types_pb2.DT_DOUBLE, "int32": types_pb2.DT_INT32,
              "int64": types_pb2.DT_INT64, "bool": types_pb2.DT_BOOL}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, array in feeds.items():
        tensor = request.inputs[name]
        for size in array.shape:
            tensor.tensor_shape.dim.add(size=size)
        if array.dtype == object:
            tensor.dtype = types_pb2.DT_STRING
            tensor.string_val.extend(bytes(x) for x in array.reshape(-1))
        else:
            tensor.dtype = dtypes[array.dtype.name]
            tensor.tensor_content = array.tobytes()
    response = stub.Predict(request, timeout=30)
    outputs = {name: {"dtype": int(t.dtype), "shape": [d.size for d in t.tensor_shape.dim],
                      "content": t.tensor_content.hex(), "strings": [s.hex() for s in t.string_val]}
               for name, t in response.outputs.items()}
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = model
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert stub.GetModelMetadata(meta_request, timeout=30).metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    print(json.dumps({
        "version": response.model_spec.version.value, "outputs": outputs,
        "inputs": {k: [int(v.dtype), [d.size for d in v.tensor_shape.dim]] for k, v in sig.inputs.items()},
    }))
''')

_NUMPY_OF_TF = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
                types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_}


def official_predict(daemon, model: str, feeds: dict[str, np.ndarray], tmp_path: Path) -> dict:
    """Predict + GetModelMetadata with tensorflow-serving-api's own stubs, in a subprocess."""
    feeds_path = tmp_path / "feeds.pkl"
    feeds_path.write_bytes(pickle.dumps(feeds))
    result = subprocess.run([sys.executable, "-c", OFFICIAL_CLIENT, daemon.address, model, str(feeds_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = {}
    for name, tensor in answer["outputs"].items():
        if tensor["dtype"] == types_pb2.DT_STRING:
            outputs[name] = np.array([bytes.fromhex(s) for s in tensor["strings"]], dtype=object).reshape(
                tensor["shape"])
        else:
            outputs[name] = np.frombuffer(bytes.fromhex(tensor["content"]),
                                          dtype=_NUMPY_OF_TF[tensor["dtype"]]).reshape(tensor["shape"])
    answer["outputs"] = outputs
    return answer


@pytest.mark.tf
def test_tf_official_client(tf_navi, tf_models, tmp_path):
    _, reference = tf_models
    answer = official_predict(tf_navi, "typed", reference["feeds"], tmp_path)
    assert answer["version"] == 1
    assert_same(answer["outputs"], reference["typed"])
    assert answer["inputs"]["text"] == [types_pb2.DT_STRING, [-1]]
    assert answer["inputs"]["i64"] == [types_pb2.DT_INT64, [-1, 3]]


# ----------------------------------------------------------------------------- PyTorch side



@pytest.fixture(scope="module")
def torch_model(tmp_path_factory):
    import torch

    class Typed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, weight: torch.Tensor, small: torch.Tensor,
                    ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor, torch.Tensor]:
            return self.linear(x), weight * 3.0, small + 1, ids.sum(dim=1), torch.logical_not(mask)

    torch.manual_seed(3)
    version_dir = tmp_path_factory.mktemp("torch-models") / "scripted" / "1"
    version_dir.mkdir(parents=True)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; serving it is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Typed().eval())
        torch.jit.save(scripted, str(version_dir / "model.pt"))
    (version_dir / "model.json").write_text(json.dumps(TYPED_SPEC))
    rng = np.random.default_rng(11)
    rows = 5
    feeds = {
        "x": rng.normal(size=(rows, 4)).astype(np.float32),
        "weight": rng.normal(size=rows),
        "small": rng.integers(-50, 50, size=rows, dtype=np.int32),
        "ids": rng.integers(-(2**40), 2**40, size=(rows, 3), dtype=np.int64),
        "mask": rng.integers(0, 2, size=rows).astype(bool),
    }
    with torch.inference_mode():
        direct = scripted(*(torch.from_numpy(feeds[e["name"]]) for e in TYPED_SPEC["inputs"]))
    expected = {e["name"]: t.numpy() for e, t in zip(TYPED_SPEC["outputs"], direct)}
    return version_dir, feeds, expected


@pytest.fixture(scope="module")
def torch_navi(start_navi, torch_model):
    version_dir, _, _ = torch_model
    return start_navi("--runtime", "torch", "--model-dir", version_dir.parent, "--input", "", "--output", "",
                      "--intra-op-parallelism", "1", "--inter-op-parallelism", "1",
                      "--batch-time-out-millis", "1")


@pytest.mark.torch
@pytest.mark.parametrize("typed_fields", [False, True], ids=["tensor_content", "typed_fields"])
def test_torch_predict_every_dtype_equals_torch(torch_navi, torch_model, typed_fields):
    _, feeds, expected = torch_model
    response = stub_of(torch_navi).Predict(predict_request("scripted", feeds, typed_fields), timeout=TIMEOUT_S)
    assert response.model_spec.name == "scripted" and response.model_spec.version.value == 1
    got = {name: codec.tensor_proto_to_ndarray(tensor, name) for name, tensor in response.outputs.items()}
    assert_same(got, expected)


@pytest.mark.torch
def test_torch_checks_dtype_and_shape_and_keeps_serving(torch_navi, torch_model):
    _, feeds, expected = torch_model
    stub = stub_of(torch_navi)
    for bad in (dict(feeds, ids=feeds["x"][:, :3].copy()), dict(feeds, x=feeds["x"][:, :3].copy())):
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(predict_request("scripted", bad), timeout=TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = predict_request("scripted", feeds)
    request.output_filter.append("id_sum")
    response = stub.Predict(request, timeout=TIMEOUT_S)
    assert list(response.outputs) == ["id_sum"]
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(response.outputs["id_sum"]), expected["id_sum"])


@pytest.mark.torch
def test_torch_official_client(torch_navi, torch_model, tmp_path):
    _, feeds, expected = torch_model
    answer = official_predict(torch_navi, "scripted", feeds, tmp_path)
    assert answer["version"] == 1
    assert_same(answer["outputs"], expected)
    assert answer["inputs"]["mask"] == [types_pb2.DT_BOOL, [-1]]
    assert answer["inputs"]["x"] == [types_pb2.DT_FLOAT, [-1, 4]]


@pytest.fixture(scope="module")
def flagged_torch_model(tmp_path_factory):
    """A TorchScript model with no model.json, its inputs named by flags: float x [N, 3], int64 ids [N]."""
    torch = pytest.importorskip("torch")

    class Flagged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 3)

        def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return (x * self.embedding(ids)).sum(dim=1)

    torch.manual_seed(5)
    root = tmp_path_factory.mktemp("torch-flagged")
    (root / "flagged" / "1").mkdir(parents=True)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.pt").write_bytes(b"not a TorchScript file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Flagged().eval())
        torch.jit.save(scripted, str(root / "flagged" / "1" / "model.pt"))
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([7, 2], dtype=np.int64)}
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["ids"])).numpy()
    return root, feeds, expected


@pytest.mark.torch
def test_torch_inputs_named_by_flags_are_served(start_navi, flagged_torch_model):
    """The synthetic warmup navi guesses (float32 [1, 1] ids) fails; the model serves all the same."""
    root, feeds, expected = flagged_torch_model
    daemon = start_navi("--runtime", "torch", "--model-dir", root / "flagged", "--model-dir", root / "broken",
                        "--input", "x,ids", "--output", "y", "--batch-time-out-millis", "1")
    log_text = daemon.log_text()
    assert "synthetic warmup skipped, the model serves without it" in log_text
    assert "navi ready: serving flagged\n" in log_text  # only what is served
    assert "not serving (no version loaded" in log_text and log_text.rstrip().endswith("broken")
    response = stub_of(daemon).Predict(predict_request("flagged", feeds), timeout=TIMEOUT_S)
    np.testing.assert_allclose(codec.tensor_proto_to_ndarray(response.outputs["y"]), expected, rtol=1e-6)
    # nothing checks the guessed inputs first: PyTorch's refusal is the client's error, not INTERNAL
    with pytest.raises(grpc.RpcError) as raised:
        stub_of(daemon).Predict(predict_request("flagged", dict(feeds, ids=np.array([99, 1]))), timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
