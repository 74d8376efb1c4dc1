"""The REST port of a real daemon: TF Serving's REST API and KServe V2 HTTP.

Real clients only: ``requests`` with bodies shaped as TF Serving's REST
documentation's examples, and Triton's ``tritonclient.http`` (JSON and binary
tensors). Every answer is compared with the gRPC answer to the same inputs;
one test shows a REST and a gRPC request in one batch through the batch
metrics.
"""
from __future__ import annotations

import base64
import gzip
import json
import struct
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from navi import codec
from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow_serving.apis import predict_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
DENSE = REPO_ROOT / "models" / "dense"
HOME = REPO_ROOT / "models" / "home"
VERSION = 1700000000000
TIMEOUT_S = 30
MAX_BODY_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", DENSE, "--model-dir", HOME, "--input", "", "--input", "examples",
                      # a request waits for company even at an idle queue: REST and gRPC can meet
                      "--batch-eager-when-idle", "false", "--batch-time-out-millis", "50", "--batch-drop-millis", "0",
                      "--max-batch-size", "8", "--grpc-threads", "4",
                      "--max-message-bytes", str(MAX_BODY_BYTES))


@pytest.fixture(scope="module")
def base(navi):
    return f"http://127.0.0.1:{navi.rest_port}"


@pytest.fixture(scope="module")
def triton_client(navi):
    client = triton.InferenceServerClient(f"127.0.0.1:{navi.rest_port}")
    yield client
    client.close()


def dense_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def grpc_predict(stub, model: str, inputs: dict) -> dict:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(codec.ndarray_to_tensor_proto(array))
    response = stub.Predict(request, timeout=TIMEOUT_S)
    return {name: codec.tensor_proto_to_ndarray(t, name) for name, t in response.outputs.items()}


def bprs(count: int, seed: int) -> list[bytes]:
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    return make_bprs(load_layout_from_dir(HOME / str(VERSION)), count, candidates=3, seed=seed)


# --------------------------------------------------------------------------- TF Serving REST


def test_model_status_and_metadata(base):
    status = requests.get(f"{base}/v1/models/dense", timeout=TIMEOUT_S)
    assert status.status_code == 200
    assert status.json() == {"model_version_status": [
        {"version": str(VERSION), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{base}/v1/models/dense/versions/{VERSION}", timeout=TIMEOUT_S).json() == status.json()
    missing = requests.get(f"{base}/v1/models/dense/versions/7", timeout=TIMEOUT_S)
    assert missing.status_code == 404 and "7" in missing.json()["error"]

    metadata = requests.get(f"{base}/v1/models/dense/metadata", timeout=TIMEOUT_S).json()
    assert metadata["model_spec"] == {"name": "dense", "signature_name": "", "version": str(VERSION)}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "16"]
    home = requests.get(f"{base}/v1/models/home/metadata", timeout=TIMEOUT_S).json()
    home_inputs = home["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert home_inputs["examples"]["dtype"] == "DT_STRING"


def test_predict_rows_and_columns_equal_grpc(base, stub):
    x = dense_rows(3, seed=1)
    expected = grpc_predict(stub, "dense", {"x": x})["y"]
    rows = requests.post(f"{base}/v1/models/dense:predict", json={"instances": x.tolist()}, timeout=TIMEOUT_S)
    assert rows.status_code == 200, rows.text
    np.testing.assert_array_equal(np.array(rows.json()["predictions"], dtype=np.float32), expected)
    # the documentation's named row format and the columnar format, with a signature name
    named = requests.post(f"{base}/v1/models/dense/versions/{VERSION}:predict",
                          json={"signature_name": "serving_default", "instances": [{"x": r} for r in x.tolist()]},
                          timeout=TIMEOUT_S)
    np.testing.assert_array_equal(np.array(named.json()["predictions"], dtype=np.float32), expected)
    columns = requests.post(f"{base}/v1/models/dense:predict", json={"inputs": {"x": x.tolist()}}, timeout=TIMEOUT_S)
    np.testing.assert_array_equal(np.array(columns.json()["outputs"], dtype=np.float32), expected)
    # float32 answers are written as their shortest decimal
    text = rows.text
    first = float(np.float32(expected[0, 0]))
    assert str(np.float32(first)) in text


def test_predict_b64_bprs_equal_grpc(base, stub):
    payloads = bprs(3, seed=4)
    expected = grpc_predict(stub, "home", {"examples": np.array(payloads, dtype=object)})
    body = {"instances": [{"b64": base64.b64encode(p).decode()} for p in payloads]}
    answer = requests.post(f"{base}/v1/models/home:predict", json=body, timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    (name,) = expected
    np.testing.assert_array_equal(np.array(answer.json()["predictions"], dtype=expected[name].dtype), expected[name])


def test_nan_and_infinity_are_read_and_written_as_tf_serving_does(base, stub):
    x = dense_rows(1, seed=2)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    body = json.dumps({"instances": x.tolist()})  # Python writes NaN / Infinity / -Infinity bare
    assert "NaN" in body and "-Infinity" in body
    answer = requests.post(f"{base}/v1/models/dense:predict", data=body, timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    expected = grpc_predict(stub, "dense", {"x": x})["y"]
    got = np.array(json.loads(answer.text)["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)  # NaN == NaN here


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/models/nope:predict", {"instances": [[0.0] * 16]}, 404, "nope"),
    ("/v1/models/dense:predict", {"instances": [[0.0] * 3]}, 400, "shape"),
    ("/v1/models/dense:predict", {"instances": [[1]], "inputs": [[1]]}, 400, "exactly one"),
    ("/v1/models/dense:predict", {}, 400, "instances"),
    ("/v1/models/dense:predict", {"instances": [[0.0] * 16, [0.0] * 3]}, 400, "rectangular"),
    ("/v1/models/dense:predict", {"instances": [{"b64": "***"}]}, 400, "base64"),
    ("/v1/models/dense:predict", {"signature_name": "other", "instances": [[0.0] * 16]}, 400, "signature"),
    ("/v1/models/dense:explode", {"instances": [[0.0] * 16]}, 404, "verb"),
    ("/v1/models/dense:classify", {"examples": [{"x": 1.0}]}, 501, "Classify"),
    # found by the REST wire fuzzer (a 500 before): an int feature past int64, a float past a double
    ("/v1/models/dense:regress", {"examples": [{"x": [1, 2**64]}]}, 400, "feature 'x'"),
    ("/v1/models/dense:classify", {"examples": [{"x": [1.5, 10**400]}]}, 400, "feature 'x'"),
    ("/v1/models/dense/versions/abc:predict", {"instances": [[0.0] * 16]}, 404, "REST"),
])
def test_errors_as_tf_serving_answers_them(base, path, body, status, words):
    answer = requests.post(base + path, json=body, timeout=TIMEOUT_S)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and words in answer.json()["error"]


def test_malformed_json_and_oversized_body(base, stub):
    bad = requests.post(f"{base}/v1/models/dense:predict", data=b"{not json", timeout=TIMEOUT_S)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    huge = requests.post(f"{base}/v1/models/dense:predict", data=b" " * (MAX_BODY_BYTES + 1), timeout=TIMEOUT_S)
    assert huge.status_code == 413 and "--max-message-bytes" in huge.json()["error"]
    # and the daemon keeps serving
    ok = requests.post(f"{base}/v1/models/dense:predict", json={"instances": dense_rows(1, 3).tolist()},
                       timeout=TIMEOUT_S)
    assert ok.status_code == 200


def test_gzip_both_ways_and_keep_alive(base, stub):
    x = dense_rows(200, seed=5)
    expected = grpc_predict(stub, "dense", {"x": x})["y"]
    with requests.Session() as session:
        answers = []
        for _ in range(2):
            answers.append(session.post(
                f"{base}/v1/models/dense:predict", data=gzip.compress(json.dumps({"instances": x.tolist()}).encode()),
                headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip", "Content-Type": "application/json"},
                timeout=TIMEOUT_S))
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.headers.get("Content-Encoding") == "gzip"  # requests inflated it for us
            np.testing.assert_array_equal(np.array(answer.json()["predictions"], dtype=np.float32), expected)
        assert answers[0].headers.get("Connection", "keep-alive").lower() == "keep-alive"


# --------------------------------------------------------------------------- KServe V2 HTTP


def test_v2_health_metadata_and_config(triton_client, base):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("dense") and triton_client.is_model_ready("dense", str(VERSION))
    assert not triton_client.is_model_ready("dense", "7")
    metadata = triton_client.get_model_metadata("dense")
    assert metadata["name"] == "dense" and metadata["versions"] == [str(VERSION)]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    config = triton_client.get_model_config("dense")
    assert config["name"] == "dense" and config["max_batch_size"] >= 1
    assert config["input"][0]["dims"] == [16] and config["input"][0]["data_type"] == "TYPE_FP32"
    server = requests.get(f"{base}/v2", timeout=TIMEOUT_S).json()
    assert server["name"] == "navi" and "binary_tensor_data" in server["extensions"]
    unknown = requests.get(f"{base}/v2/models/nope", timeout=TIMEOUT_S)
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_infer_equals_grpc(triton_client, kstub, binary):
    x = dense_rows(4, seed=6)
    request = kserve_pb2.ModelInferRequest(model_name="dense")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    del tensor
    response = kstub.ModelInfer(request, timeout=TIMEOUT_S)
    expected = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(response.outputs[0].shape)

    given = triton.InferInput("x", list(x.shape), "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    result = triton_client.infer("dense", [given], outputs=[triton.InferRequestedOutput("y", binary_data=binary)],
                                 request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), expected)
    answer = result.get_response()
    assert answer["model_name"] == "dense" and answer["model_version"] == str(VERSION) and answer["id"] == "r-1"


def test_v2_bytes_tensor_of_bprs_equals_tf_serving_grpc(triton_client, stub):
    payloads = bprs(4, seed=8)
    expected = grpc_predict(stub, "home", {"examples": np.array(payloads, dtype=object)})
    (name,) = expected
    given = triton.InferInput("examples", [len(payloads)], "BYTES")
    given.set_data_from_numpy(np.array(payloads, dtype=np.object_), binary_data=True)
    result = triton_client.infer("home", [given])
    np.testing.assert_array_equal(result.as_numpy(name), expected[name])


def test_v2_malformed_binary_requests_are_400(base):
    header = json.dumps({"inputs": [{"name": "examples", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": 9}}]}).encode()
    # two elements announced, the second claims more bytes than there are
    tail = struct.pack("<I", 1) + b"a" + struct.pack("<I", 99)
    answer = requests.post(f"{base}/v2/models/home/infer", data=header + tail,
                           headers={"Inference-Header-Content-Length": str(len(header))}, timeout=TIMEOUT_S)
    assert answer.status_code == 400 and "claims 99 bytes" in answer.json()["error"]
    answer = requests.post(f"{base}/v2/models/dense/infer", data=b"{}",
                           headers={"Inference-Header-Content-Length": "99"}, timeout=TIMEOUT_S)
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.json()["error"]


# --------------------------------------------------------------------------- one data plane


def metrics_of(daemon) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics", timeout=10).read()
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def sample_value(families, family_name, sample_name, **labels) -> float:
    return sum(s.value for s in families[family_name].samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_rest_and_grpc_requests_join_one_batch(navi, base, stub):
    """One REST and one gRPC request at once, five tries: a batch of two requests can only be both."""
    x_rest, x_grpc = dense_rows(1, seed=10), dense_rows(2, seed=11)
    expected_rest = grpc_predict(stub, "dense", {"x": x_rest})["y"]
    expected_grpc = grpc_predict(stub, "dense", {"x": x_grpc})["y"]
    before = metrics_of(navi)
    counted = ":navi:batch_requests", ":navi:batch_requests_count"
    singles = ":navi:batch_requests", ":navi:batch_requests_bucket"
    for attempt in range(5):
        barrier = threading.Barrier(2)

        def over_rest():
            barrier.wait()
            return requests.post(f"{base}/v1/models/dense:predict", json={"instances": x_rest.tolist()},
                                 timeout=TIMEOUT_S)

        def over_grpc():
            barrier.wait()
            return grpc_predict(stub, "dense", {"x": x_grpc})["y"]

        with ThreadPoolExecutor(2) as pool:
            rest, grpc_answer = pool.submit(over_rest), pool.submit(over_grpc)
            np.testing.assert_array_equal(np.array(rest.result().json()["predictions"], dtype=np.float32),
                                          expected_rest)
            np.testing.assert_array_equal(grpc_answer.result(), expected_grpc)
        after = metrics_of(navi)
        batches = sample_value(after, *counted) - sample_value(before, *counted)
        single = sample_value(after, *singles, le="1.0") - sample_value(before, *singles, le="1.0")
        if batches > single:
            break
    else:
        pytest.fail(f"no batch held the REST and the gRPC request together ({batches} batches, {single} singles)")
    requests_counted = sample_value(after, ":navi:num_requests", ":navi:num_requests_total") - \
        sample_value(before, ":navi:num_requests", ":navi:num_requests_total")
    assert requests_counted == 2 * (attempt + 1)  # both transports counted by the one data plane


def test_sigterm_drains_rest_requests_in_flight(start_navi):
    """A REST request waiting in its batch when SIGTERM arrives is answered; then the port closes."""
    import signal

    daemon = start_navi("--model-dir", DENSE, "--input", "", "--batch-eager-when-idle", "false",
                        "--batch-time-out-millis", "1500", "--batch-drop-millis", "0", "--shutdown-grace-secs", "20")
    base_url = f"http://127.0.0.1:{daemon.rest_port}"
    x = dense_rows(2, seed=20)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.post, f"{base_url}/v1/models/dense:predict",
                                json={"instances": x.tolist()}, timeout=TIMEOUT_S)
        time.sleep(0.5)  # queued, waiting out its batch timeout
        daemon.process.send_signal(signal.SIGTERM)
        answer = in_flight.result()
    assert answer.status_code == 200, answer.text
    assert np.array(answer.json()["predictions"]).shape == (2, 4)
    assert daemon.wait_exit(timeout_s=30) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base_url}/v2/health/live", timeout=5)
