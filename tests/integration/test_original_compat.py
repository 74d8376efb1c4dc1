"""What a user of the original Navi already has works unchanged with ``navi serve``.

* the original's ``scripts/run_onnx.sh`` and ``scripts/run_tf2.sh`` argument lists, exactly
  (the port a free one, the model directories real models built here with the output names
  those scripts name), start navi and get a Predict answered;
* ``/metrics`` carries every metric of the original's ``metrics.rs`` under its exact name and
  type, counters without ``_total``, histograms with the original's buckets (milliseconds,
  microseconds), and parses with prometheus-client's parser;
* ``--customops-lib`` loads onnxruntime-extensions' library into ONNX Runtime: a model using
  its ``ai.onnx.contrib`` ops is served and answered correctly; without the flag that model
  fails to load with a clear error while the daemon keeps serving the others.
"""
from __future__ import annotations

import functools
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper
from prometheus_client.parser import text_string_to_metric_families

from navi import __version__, codec
from navi._proto.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from navi.metrics import (
    CONVERTER_TIME_BUCKETS_US,
    MODEL_INFERENCE_TIME_BUCKETS_MS,
    RESPONSE_TIME_BUCKETS_MS,
    customop_version,
    version_number,
)
from navi.segdense import load_layout_from_dir
from navi.workload import full_bpr

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0


@functools.lru_cache(maxsize=None)
def get_library_path() -> str:
    """onnxruntime-extensions' custom-op library, asked in a subprocess: importing the
    package here would import torch into the test process, whose protobuf registrations
    break the official tensorflow-serving-api client of later test modules."""
    code = "from onnxruntime_extensions import get_library_path; print(get_library_path())"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          timeout=120).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save(model, path: Path) -> Path:
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def calibrated_model(path: Path) -> Path:
    """x float32 [N, 2] -> caligrated_probabilities = sigmoid(x) (the output run_onnx.sh names)."""
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["caligrated_probabilities"])], "calibrated",
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("caligrated_probabilities", T.FLOAT, ["N", 2])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def contrib_model(path: Path) -> Path:
    """text string [N] -> upper (StringUpper) and length (StringLength), ops of ai.onnx.contrib."""
    graph = helper.make_graph(
        [helper.make_node("StringUpper", ["text"], ["upper"], domain="ai.onnx.contrib"),
         helper.make_node("StringLength", ["text"], ["length"], domain="ai.onnx.contrib")],
        "contrib",
        [helper.make_tensor_value_info("text", T.STRING, ["N"])],
        [helper.make_tensor_value_info("upper", T.STRING, ["N"]),
         helper.make_tensor_value_info("length", T.INT64, ["N"])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    return _save(helper.make_model(graph, opset_imports=opsets), path)


def predict(address: str, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, array in inputs.items():
        codec.ndarray_to_tensor_proto(array, request.inputs[name])
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT_S)
    return {name: codec.tensor_proto_to_ndarray(tensor) for name, tensor in response.outputs.items()}


def scrape(daemon) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics",
                                  timeout=TIMEOUT_S).read().decode()


# ----------------------------------------------------------------------------- run scripts


def test_run_onnx_sh_arguments(start_navi, tmp_path):
    """scripts/run_onnx.sh of the original, exactly (port and model dir adjusted)."""
    calibrated_model(tmp_path / "models" / "int8" / "1679693908377" / "model.onnx")
    args = ["--port", str(free_port()), "--num-worker-threads", "8", "--intra-op-parallelism", "8",
            "--inter-op-parallelism", "8", "--model-check-interval-secs", "30",
            "--model-dir", "models/int8", "--output", "caligrated_probabilities", "--input", "",
            "--modelsync-cli", "echo", "--onnx-ep-options", "use_arena=true"]
    navi = start_navi(*args, cwd=tmp_path)
    x = np.array([[0.0, 2.0], [-1.0, 0.5]], np.float32)
    outputs = predict(navi.address, "int8", x=x)
    np.testing.assert_allclose(outputs["caligrated_probabilities"], 1 / (1 + np.exp(-x)), rtol=1e-6)
    log = navi.log_text()
    assert "ignored" not in log  # every flag of the script has its meaning here


TF_BUILD = textwrap.dedent('''
    import sys
    import tensorflow as tf

    class Click(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
        def serve(self, features):
            return {"output_0": tf.reduce_sum(features, axis=1, keepdims=True) * 0.5}

    module = Click()
    tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.serve})
''')


def test_run_tf2_sh_arguments(start_navi, tmp_path):
    """scripts/run_tf2.sh of the original, exactly: the SavedModel's runtime comes from its files."""
    version_dir = tmp_path / "models" / "click" / "1679693908377"
    subprocess.run([sys.executable, "-c", TF_BUILD, str(version_dir)], check=True, timeout=300,
                   capture_output=True)
    args = ["--port", str(free_port()), "--num-worker-threads", "8", "--intra-op-parallelism", "8",
            "--inter-op-parallelism", "8", "--model-check-interval-secs", "30",
            "--model-dir", "models/click/", "--input", "", "--output", "output_0"]
    navi = start_navi(*args, cwd=tmp_path)
    features = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]], np.float32)
    outputs = predict(navi.address, "click", features=features)
    np.testing.assert_allclose(outputs["output_0"], features.sum(axis=1, keepdims=True) * 0.5, rtol=1e-6)


# ----------------------------------------------------------------------------- metrics

#: every metric of the original's metrics.rs (+ bootstrap.rs): name -> Prometheus type
ORIGINAL_METRICS = {
    ":navi:num_requests": "counter",
    ":navi:num_requests_failed": "counter",
    ":navi:num_requests_dropped": "counter",
    ":navi:num_batches_dropped": "counter",
    ":navi:num_batch_prediction": "counter",
    ":navi:num_predictions": "counter",
    ":navi:prediction_score_sum": "counter",
    ":navi:new_model_snapshot": "counter",
    ":navi:num_requests_by_model": "counter",
    ":navi:num_requests_failed_by_model": "counter",
    ":navi:num_requests_dropped_by_model": "counter",
    ":navi:num_batches_dropped_by_model": "counter",
    ":navi:inference_failed_requests_by_model": "counter",
    ":navi:num_prediction_by_model": "counter",
    ":navi:num_batch_prediction_by_model": "counter",
    ":navi:batch_size": "gauge",
    ":navi:navi_version": "gauge",
    ":navi:customop_version": "gauge",
    ":navi:mpsc_channel_size": "gauge",
    ":navi:blocking_request_num": "gauge",
    ":navi:cert_expiry_epoch": "gauge",
    ":navi:model_snapshot_version": "gauge",
    ":navi:batch_size_by_model": "gauge",
    ":navi:response_time": "histogram",
    ":navi:model_inference_time": "histogram",
    ":navi:converter_time": "histogram",
}


def _le(bounds) -> set[str]:
    return {str(float(b)) for b in bounds} | {"+Inf"}


def test_metrics_have_the_original_names_types_and_units(start_navi, tmp_path):
    home = REPO / "models" / "home"
    navi = start_navi("--model-dir", home, "--customops-lib", get_library_path())
    layout = load_layout_from_dir(next(home.iterdir()))
    payload = np.array([full_bpr(layout, candidates=3, seed=1)], dtype=object)
    for _ in range(2):
        outputs = predict(navi.address, "home", examples=payload)
    assert outputs["output_0"].shape == (3, 1)
    with pytest.raises(grpc.RpcError):  # a failed request for the failure counters
        predict(navi.address, "home", examples=np.array([b"\x0f\xff not a BPR"], dtype=object))
    text = scrape(navi)
    lines = text.splitlines()

    for name, kind in ORIGINAL_METRICS.items():
        assert f"# TYPE {name} {kind}" in lines, name
    # counters as the original writes them: the sample is the bare name, never name_total
    assert ":navi:num_requests 3.0" in lines
    assert ':navi:num_requests_by_model{model_name="home"} 3.0' in lines
    assert ':navi:num_predictions{model_name="home"} 2.0' in lines  # requests answered
    assert ':navi:num_requests_failed_by_model{model_name="home"} 1.0' in lines
    assert ':navi:new_model_snapshot{model_name="home"} 1.0' in lines
    for name, kind in ORIGINAL_METRICS.items():
        if kind == "counter":
            assert not any(line.startswith(name + "_total") for line in lines), name
    # gauges without labels, and the original's values
    assert f":navi:navi_version {float(version_number(__version__))}" in lines
    assert f":navi:customop_version {float(customop_version(Path(get_library_path())))}" in lines
    assert ":navi:batch_size " in text and ":navi:mpsc_channel_size " in text

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in ORIGINAL_METRICS.items():
        assert families[name].type == kind, name
    for name, bounds in ((":navi:response_time", RESPONSE_TIME_BUCKETS_MS),
                         (":navi:model_inference_time", MODEL_INFERENCE_TIME_BUCKETS_MS),
                         (":navi:converter_time", CONVERTER_TIME_BUCKETS_US)):
        buckets = {s.labels["le"] for s in families[name].samples
                   if s.name == name + "_bucket" and s.labels.get("model_name") == "home"}
        assert buckets == _le(bounds), name
    assert RESPONSE_TIME_BUCKETS_MS[-1] == 1000 and CONVERTER_TIME_BUCKETS_US[-1] == 20000
    # batch_size grows by each batch's request count, as the original's IntGauge::add
    batch_size = sum(s.value for s in families[":navi:batch_size"].samples)
    batches = sum(s.value for s in families[":navi:num_batch_prediction"].samples)
    assert batch_size >= batches >= 1
    # navi's own additions carry Prometheus' unit suffixes
    assert "# TYPE :navi:queue_wait_seconds histogram" in lines
    assert "# TYPE :navi:predicted_rows_total counter" in lines
    assert ':navi:predicted_rows_total{model_name="home"} 6.0' in lines
    # scrapers that prefer OpenMetrics still get the text format (its counters would need _total)
    request = urllib.request.Request(
        f"http://127.0.0.1:{navi.prometheus_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert ":navi:num_requests 3.0" in response.read().decode().splitlines()


# ----------------------------------------------------------------------------- custom ops


def _version_states(address: str, model: str) -> dict[int, tuple[str, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=TIMEOUT_S)
    states = get_model_status_pb2.ModelVersionStatus.State
    return {s.version: (states.Name(s.state), s.status.error_message) for s in response.model_version_status}


@pytest.fixture(scope="module")
def contrib_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contrib-repo")
    contrib_model(root / "strings" / "1" / "model.onnx")
    calibrated_model(root / "plain" / "1" / "model.onnx")
    return root


def test_customops_lib_serves_a_model_using_its_ops(start_navi, contrib_repo):
    navi = start_navi("--model-dir", contrib_repo / "strings", "--input", "", "--output", "",
                      "-c", get_library_path())
    text = np.array([b"navi", b"Hello, World"], dtype=object)
    outputs = predict(navi.address, "strings", text=text)
    assert outputs["upper"].tolist() == [b"NAVI", b"HELLO, WORLD"]
    assert outputs["length"].tolist() == [4, 12]
    version = customop_version(Path(get_library_path()))
    assert f":navi:customop_version {float(version)}" in scrape(navi).splitlines()


def test_model_needing_custom_ops_fails_alone_without_the_flag(start_navi, contrib_repo):
    navi = start_navi("--model-dir", contrib_repo / "strings", "--model-dir", contrib_repo / "plain",
                      "--input", "", "--output", "")
    x = np.zeros((1, 2), np.float32)
    np.testing.assert_allclose(predict(navi.address, "plain", x=x)["caligrated_probabilities"], 0.5)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        states = _version_states(navi.address, "strings")
        if states.get(1, ("",))[0] == "END" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    state, message = states[1]
    assert state == "END" and "ai.onnx.contrib" in message and "StringUpper" in message
    with pytest.raises(grpc.RpcError) as info:
        predict(navi.address, "strings", text=np.array([b"x"], dtype=object))
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.FAILED_PRECONDITION)
    assert re.search(r"ai\.onnx\.contrib:StringUpper", navi.log_text())


def test_bad_customops_lib_stops_start_up(start_navi, contrib_repo, tmp_path):
    navi = start_navi("--model-dir", contrib_repo / "plain", "--input", "", "--output", "",
                      "--customops-lib", str(tmp_path / "missing.so"), wait=False)
    assert navi.wait_exit() == 2
    log = navi.log_text()
    assert "customops_libs" in log and "missing.so" in log
