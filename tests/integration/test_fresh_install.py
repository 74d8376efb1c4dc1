"""navi's wheel, installed WITHOUT extras into an empty environment, serves the demo models.

The proof that setup.py's base install is complete: the wheel is built from
this checkout (``pip wheel --no-deps``), installed into a new virtual
environment made without the system's site-packages (pip resolves every
dependency from the wheel's metadata; its wheel cache keeps this cheap), and
that environment's own ``navi`` console script serves ``models/home`` (BPR)
and ``models/dense``. The test process is only the client.
"""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from navi import codec, optional
from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tests.integration.conftest import REPO_ROOT, NaviDaemon

MODELS = REPO_ROOT / "models"
# nothing from the developer's environment may leak into the fresh one
CLEAN_ENV = {key: value for key, value in os.environ.items()
             if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
CLEAN_ENV["PYTHONNOUSERSITE"] = "1"


def _run(args: list[str], cwd: Path, timeout_s: float) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> Path:
    """A virtual environment holding navi's wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("fresh-install")
    # --no-build-isolation: the build uses this environment's grpcio-tools and Cython
    # (requirements/build.txt), as `make install` does
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", root / "dist", REPO_ROOT], cwd=root, timeout_s=600)
    (wheel,) = (root / "dist").glob("navi-*.whl")
    venv = root / "venv"
    # this environment's pip installs into the new one (--python), so it needs no pip of its
    # own; --no-compile leaves byte-compiling to the first import
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, timeout_s=120)
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
          "--no-compile", wheel], cwd=root, timeout_s=600)
    return venv


def test_base_environment_has_navi_and_no_extras(base_env):
    code = ("import importlib.util, navi, sys; print(navi.__file__); "
            f"print(','.join(m for m in {sorted(m for e in optional.EXTRAS.values() for m in e) + ['pytest']!r} "
            "if importlib.util.find_spec(m)))")
    navi_file, extras_found = _run([base_env / "bin" / "python", "-c", code], cwd=base_env, timeout_s=120).splitlines()
    assert Path(navi_file).is_relative_to(base_env), navi_file
    assert extras_found == "", f"the base install holds {extras_found}"
    _run([sys.executable, "-m", "pip", "--python", base_env / "bin" / "python", "check"], cwd=base_env,
         timeout_s=120)


@pytest.fixture(scope="module")
def daemon(base_env, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("fresh-install-log") / "navi.log"
    started = NaviDaemon(["--model-dir", MODELS / "home", "--model-dir", MODELS / "dense"], log_path,
                         cwd=base_env, navi_command=(str(base_env / "bin" / "navi"),), env=CLEAN_ENV)
    try:
        yield started.wait_ready()
    finally:
        started.terminate(timeout_s=15)


def test_fresh_install_serves_the_demo_models(daemon):
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    with daemon.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "home", "dense"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        (home_version,) = (MODELS / "home").iterdir()
        payloads = make_bprs(load_layout_from_dir(home_version), 2, candidates=3, seed=7)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "home"
        codec.ndarray_to_tensor_proto(np.array(payloads, dtype=object), request.inputs["examples"])
        scores = codec.tensor_proto_to_ndarray(stub.Predict(request, timeout=30).outputs["output_0"])
        assert scores.shape == (6, 1) and np.all((scores >= 0) & (scores <= 1))

        (dense_version,) = (MODELS / "dense").iterdir()
        session = ort.InferenceSession(str(dense_version / "model.onnx"), providers=["CPUExecutionProvider"])
        (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
        x = np.random.default_rng(3).standard_normal((4, model_input.shape[1])).astype(np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "dense"
        codec.ndarray_to_tensor_proto(x, request.inputs[model_input.name])
        got = codec.tensor_proto_to_ndarray(stub.Predict(request, timeout=30).outputs[model_output.name])
        (expected,) = session.run(None, {model_input.name: x})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics", timeout=10).read()
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    requests = {sample.labels.get("model_name"): sample.value
                for sample in families[":navi:num_requests_by_model"].samples
                if not sample.name.endswith("_created")}
    assert requests.get("home", 0) >= 1 and requests.get("dense", 0) >= 1, requests
