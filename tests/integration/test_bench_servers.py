"""The benchmarks' reference servers answer what navi answers (their figures compare like with like)."""
from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from navi import codec
from navi._proto.tensorflow_serving.apis import predict_pb2
from navi.bench.servers import wait_until_serving
from tests.integration.conftest import REPO_ROOT, free_port

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def navi(start_navi):
    return start_navi("--model-dir", MODELS / "dense")


@pytest.fixture(scope="module")
def minimal():
    port = free_port()
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "benchmarks" / "minimal_predict_server.py"),
                                "--model-dir", str(MODELS / "dense"), "--port", str(port)],
                               cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_serving(f"127.0.0.1:{port}", timeout_s=60, health_service=None, process=process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


def _outputs(address: str, method: str, payload: bytes) -> dict[str, np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        answer = channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=30)
    response = predict_pb2.PredictResponse.FromString(answer)
    return {name: codec.tensor_proto_to_ndarray(tensor, name) for name, tensor in response.outputs.items()}


def test_the_minimal_predict_server_answers_as_navi_does(navi, minimal):
    from navi.bench.requests import fetch_inputs
    from navi.bench.workloads import dense_workload

    # the requests `navi bench serve --workload dense --batch-rows 2` sends
    workload = dense_workload("tfserving", "dense", fetch_inputs(navi.address, "dense", "tfserving"),
                              batch_rows=2, seed=3, distinct_requests=1)
    expected = _outputs(navi.address, workload.method, workload.payloads[0])
    got = _outputs(minimal, workload.method, workload.payloads[0])
    assert expected and got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
