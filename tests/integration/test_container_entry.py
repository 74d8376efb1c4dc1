"""The container's entry command, run the way deploy/Dockerfile builds it, without Docker.

Docker has no engine here and no registry is reachable, so the image itself is
built on the user's side. This test does what the Dockerfile does: `pip wheel
--no-deps --no-build-isolation` of the checkout, that wheel installed with no
extras into a fresh virtual environment (dependencies from the package index,
as the builder stage's `pip wheel` resolves them), then the Dockerfile's own
ENTRYPOINT + CMD (read from it, ports swapped for free ones) started from an
empty directory with the image's NAVI_CACHE_DIR, so it serves the demo model the
installed wheel rebuilds. Its HEALTHCHECK command must report SERVING, a
Predict on the demo BPR model must answer, and SIGTERM must exit 0.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from navi import codec
from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from navi.segdense import load_layout_from_dir
from navi.workload import make_bprs
from tests.integration.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def runtime_stage() -> str:
    """The Dockerfile's last stage, where ENTRYPOINT, CMD, ENV and HEALTHCHECK live."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return re.split(r"^FROM .*$", text, flags=re.M)[-1]


def instruction(stage: str, name: str) -> str:
    (value,) = re.findall(rf"^{name} (.*)$", stage, flags=re.M)
    return value.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (the flag must be there)."""
    index = args.index(flag)
    return args[:index + 1] + [value] + args[index + 2:]


def clean_env() -> dict[str, str]:
    """This environment without the checkout on PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def fresh_navi(tmp_path_factory) -> Path:
    """bin/ of a new venv holding navi's wheel, installed without extras."""
    tmp = tmp_path_factory.mktemp("image")
    # the checkout on PYTHONPATH would make pip take navi as installed already
    env = clean_env()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "wheels"), str(REPO_ROOT)], check=True, timeout=600)
    (wheel,) = (tmp / "wheels").glob("navi-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120, env=env)
    subprocess.run([str(tmp / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600,
                   env=env)
    return tmp / "venv" / "bin"


def test_entry_command_serves_health_and_predict_then_drains(fresh_navi, tmp_path):
    stage = runtime_stage()
    command = json.loads(instruction(stage, "ENTRYPOINT")) + json.loads(instruction(stage, "CMD"))
    health = json.loads(re.search(r"CMD (\[.*\])", instruction(stage, "HEALTHCHECK")).group(1))
    assert command[0] == "navi" and health[0] == "navi"
    port, metrics_port = free_port(), free_port()
    command = with_flag(with_flag(with_flag(command, "--host", "127.0.0.1"), "--port", str(port)),
                        "--prometheus-port", str(metrics_port))
    health = with_flag(health, "--target", f"127.0.0.1:{port}")
    env = clean_env()
    env.update(HOME=str(tmp_path / "home"), NAVI_CACHE_DIR=str(tmp_path / "cache"))
    assert instruction(stage, "ENV").startswith("NAVI_CACHE_DIR=")
    workdir = tmp_path / "work"
    workdir.mkdir()

    where = subprocess.run([str(fresh_navi / "python"), "-c", "import navi; print(navi.__file__)"], cwd=workdir,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(fresh_navi.parent)), where  # the installed wheel, not the checkout

    log = open(tmp_path / "navi.log", "wb")
    server = subprocess.Popen([str(fresh_navi / command[0]), *command[1:]], cwd=workdir, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            check = subprocess.run([str(fresh_navi / health[0]), *health[1:]], cwd=workdir, env=env,
                                   capture_output=True, text=True, timeout=60)
            if check.returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "navi.log").read_text()
            assert time.monotonic() < deadline, (check.stderr, (tmp_path / "navi.log").read_text())
            time.sleep(0.5)
        assert "SERVING" in check.stdout

        layout = load_layout_from_dir(tmp_path / "cache" / "models" / "home" / "1700000000000")
        bprs = make_bprs(layout, 2, 5, seed=1, continuous_per_candidate=50)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "home"
        codec.ndarray_to_tensor_proto(np.array(bprs, dtype=object), request.inputs["examples"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        (output,) = response.outputs.values()
        scores = codec.tensor_proto_to_ndarray(output, "output")
        assert scores.shape[0] == 10 and np.isfinite(scores).all()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert ":navi:" in metrics

        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()
