"""``navi serve`` as a user starts it: no arguments, bad values, Ctrl-C."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from navi import codec


def test_no_arguments_serves_the_demo_model_and_sigint_exits_0(start_navi, tmp_path):
    from navi.demo import demo_repository
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    # from a directory without models/: the embedded demo repository is served
    daemon = start_navi(cwd=tmp_path)
    with daemon.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "home"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        version_dir = next((demo_repository() / "home").iterdir())
        payloads = make_bprs(load_layout_from_dir(version_dir), 2, candidates=3, seed=5)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "home"
        codec.ndarray_to_tensor_proto(np.array(payloads, dtype=object), request.inputs["examples"])
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    scores = codec.tensor_proto_to_ndarray(response.outputs["output_0"])
    assert scores.shape == (6, 1) and np.all((scores >= 0) & (scores <= 1))
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.wait_exit(30) == 0


def test_bad_config_file_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "navi.toml"
    config.write_text('[[models]]\nmodel_dir = "m/home"\nbatching = { max_batch_size = -3 }\n')
    result = subprocess.run(
        [sys.executable, "-m", "navi.cli.main", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert f"{config}: models[0].batching.max_batch_size: " in result.stderr


def test_unknown_runtime_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "navi.cli.main", "serve", "--model-dir", str(tmp_path / "x"),
         "--runtime", "caffe"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "caffe" in result.stderr and "onnx" in result.stderr


def test_port_in_use_exits_2(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        model_dir = tmp_path / "m"
        model_dir.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "navi.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--prometheus-port", "0", "--rest-api-port", "0", "--model-dir", str(model_dir)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "--port: cannot bind" in result.stderr
