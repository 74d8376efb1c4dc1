"""Chaos and limits against the real daemon (issue 17, items 5 and 6).

SIGKILL mid-load and restart on the same port: clients reconnect and the
repository is byte-identical. A --modelsync-cli that hangs is killed after
--modelsync-timeout-secs and serving goes on. A version directory copied in
slowly is not loaded until its files stand still. --max-message-bytes answers
RESOURCE_EXHAUSTED past it, for a gzip request by its inflated size, without
inflating it; /metrics binds --prometheus-host.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import predict_pb2
from tests.integration.conftest import REPO_ROOT, proc_status

DENSE = REPO_ROOT / "models" / "dense"


def _dense_request(rows: int = 2, model: str = "dense") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=16)
    tensor.tensor_content = np.full((rows, 16), 0.5, np.float32).tobytes()
    return request


def _predict(channel, request, timeout_s: float = 20.0, **kwargs):
    stub = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=predict_pb2.PredictRequest.SerializeToString,
                               response_deserializer=predict_pb2.PredictResponse.FromString)
    return stub(request, timeout=timeout_s, **kwargs)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sigkill_mid_load_then_restart_clients_reconnect(start_navi, tmp_path):
    repo = tmp_path / "dense"
    shutil.copytree(DENSE, repo)
    before = _tree_digest(repo)
    first = start_navi("--model-dir", repo)
    port = first.port
    outcomes: list[str] = []
    stop = threading.Event()

    def load():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            while not stop.is_set():
                try:
                    _predict(channel, _dense_request(), timeout_s=5, wait_for_ready=True)
                    outcomes.append("OK")
                except grpc.RpcError as error:
                    outcomes.append(error.code().name)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(1.5)
    first.process.send_signal(signal.SIGKILL)
    assert first.wait_exit(10) == -signal.SIGKILL
    killed_at = len(outcomes)
    second = start_navi("--model-dir", repo, "--port", str(port))
    assert second.port == port
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and outcomes[-8:].count("OK") < 8:
        time.sleep(0.2)
    stop.set()
    for client in clients:
        client.join(30)
    assert killed_at > 0 and outcomes[:killed_at].count("OK") > 0
    # the same channels answer again from the new process
    assert outcomes[-8:] == ["OK"] * 8, outcomes[-20:]
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, set(outcomes)
    assert _tree_digest(repo) == before


def test_hung_modelsync_is_killed_and_serving_goes_on(start_navi, tmp_path):
    repo = tmp_path / "dense"
    shutil.copytree(DENSE, repo)
    marker = tmp_path / "sync.pid"
    script = tmp_path / "sync.sh"
    script.write_text(f"#!/bin/sh\nsleep 600 &\necho $! >> {marker}\nwait\n")
    script.chmod(0o755)
    navi = start_navi("--model-dir", repo, "--modelsync-cli", str(script), "--modelsync-timeout-secs", "1",
                      "--model-check-interval-secs", "1", wait=False)
    navi.wait_ready(timeout_s=60)
    with navi.channel() as channel:
        assert _predict(channel, _dense_request()).outputs["y"].tensor_shape.dim[0].size == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and navi.log_text().count("--modelsync-timeout-secs") < 2:
        time.sleep(0.2)
    assert navi.log_text().count("--modelsync-timeout-secs") >= 2, navi.log_text()[-2000:]
    with navi.channel() as channel:
        assert _predict(channel, _dense_request()).outputs["y"].tensor_shape.dim[0].size == 2
    # every sleeping child of a killed run is gone (killed with its group)
    for pid in [int(line) for line in marker.read_text().split()[:-1]]:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"


def test_version_copied_in_slowly_is_loaded_only_when_complete(start_navi, tmp_path):
    repo = tmp_path / "dense"
    shutil.copytree(DENSE, repo)
    navi = start_navi("--model-dir", repo, "--model-check-interval-secs", "0.5", "--version-settle-secs", "1.5")
    model = (DENSE / "1700000000000" / "model.onnx").read_bytes()
    new = repo / "1800000000000"
    new.mkdir()
    with open(new / "model.onnx", "wb") as out:
        # half the file, then the rest over 3 s (longer than the settle time, in small steps)
        out.write(model[: len(model) // 2])
        out.flush()
        rest = model[len(model) // 2:]
        step = max(1, len(rest) // 10)
        for at in range(0, len(rest), step):
            time.sleep(0.3)
            out.write(rest[at: at + step])
            out.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "dense version 1800000000000 loaded" not in navi.log_text():
        time.sleep(0.2)
    log = navi.log_text()
    assert "dense version 1800000000000 loaded" in log
    assert "version 1800000000000 failed" not in log and "ERROR" not in log, log[-3000:]
    with navi.channel() as channel:
        assert _predict(channel, _dense_request()).model_spec.version.value == 1800000000000


@pytest.fixture(scope="module")
def small_navi(start_navi):
    return start_navi("--model-dir", DENSE, "--max-message-bytes", str(1 << 20),
                      "--prometheus-host", "127.0.0.1")


def test_request_past_max_message_bytes_is_resource_exhausted(small_navi):
    request = _dense_request(rows=20_000)  # 1.28 MB
    with small_navi.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _predict(channel, request)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details() and str(1 << 20) in info.value.details()
        assert _predict(channel, _dense_request(rows=100)).outputs["y"].tensor_shape.dim[0].size == 100


def test_gzip_bomb_is_refused_by_its_inflated_size_without_inflating(small_navi):
    """256 MiB of zeros compress to ~250 KB, under the 1 MiB limit: grpc core checks the
    limit against the inflated size as it inflates, and stops there."""
    request = _dense_request(rows=1)
    request.inputs["x"].tensor_content = bytes(256 << 20)
    payload = request.SerializeToString()
    assert len(gzip.compress(payload)) < 1 << 20
    before = proc_status(small_navi.process.pid, "VmRSS")
    with small_navi.channel() as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                _predict(channel, request, timeout_s=60, compression=grpc.Compression.Gzip)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        # a gzip request under the limit is served
        assert _predict(channel, _dense_request(rows=100),
                        compression=grpc.Compression.Gzip).outputs["y"].tensor_shape.dim[0].size == 100
    # never inflated: the process's peak RSS (VmHWM) stayed far below what 256 MiB would add
    assert proc_status(small_navi.process.pid, "VmHWM") < before + (64 << 20)


def test_metrics_bind_the_configured_host_only(small_navi):
    text = urllib.request.urlopen(f"http://127.0.0.1:{small_navi.prometheus_port}/metrics", timeout=10).read()
    assert b":navi:" in text
    # bound to loopback: not reachable on this host's other addresses
    others = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    others.discard("127.0.0.1")
    for address in others:
        if address.startswith("127."):
            continue
        with pytest.raises(OSError):
            socket.create_connection((address, small_navi.prometheus_port), timeout=2).close()
    listening = Path("/proc/net/tcp").read_text()
    port_hex = f":{small_navi.prometheus_port:04X} "
    lines = [line for line in listening.splitlines() if port_hex in line.split()[1] + " " and line.split()[3] == "0A"]
    assert lines and all(line.split()[1].startswith("0100007F") for line in lines), lines


def test_open_reflection_streams_leave_health_and_metadata_answering(small_navi):
    """Reflection streams hold a thread each while open; they have threads of their own: with all
    taken and their queue full, health and metadata still answer, the streams past them are
    refused RESOURCE_EXHAUSTED at once, and the waiting streams are served once the others close."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from navi._proto.tensorflow_serving.apis import get_model_metadata_pb2
    from navi.server.threads import REFLECTION_THREADS

    streams = 3 * REFLECTION_THREADS  # running, waiting, refused
    release = threading.Event()
    outcomes: list[str] = []
    channels = [small_navi.channel() for _ in range(streams)]

    def hold(channel) -> None:
        def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            release.wait(60)

        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(requests(), timeout=60)
        try:
            outcomes.append(next(answers).WhichOneof("message_response"))
        except grpc.RpcError as error:
            outcomes.append(f"{error.code().name}: {error.details()}")
        release.wait(60)  # the stream stays open while ``answers`` lives (grpcio cancels it when collected)

    threads = [threading.Thread(target=hold, args=(channel,), daemon=True) for channel in channels]
    try:
        for thread in threads:
            thread.start()

        def counts() -> tuple[int, int]:  # (answered, refused) so far
            refused_now = sum(outcome.startswith("RESOURCE_EXHAUSTED") for outcome in outcomes)
            return len(outcomes) - refused_now, refused_now

        deadline = time.monotonic() + 30
        while min(counts()) < REFLECTION_THREADS and time.monotonic() < deadline:
            time.sleep(0.05)  # the threads' streams are answered, the excess refused; the rest wait
        assert counts()[0] == REFLECTION_THREADS, outcomes  # every reflection thread holds a stream
        with small_navi.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            metadata = channel.unary_unary(
                "/tensorflow.serving.PredictionService/GetModelMetadata",
                request_serializer=get_model_metadata_pb2.GetModelMetadataRequest.SerializeToString,
                response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString,
            )(get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": "dense"}, metadata_field=["signature_def"]), timeout=5)
            assert metadata.model_spec.name == "dense"
        # past the threads and the waiting places, refused at once (more while threads start)
        refused = [outcome for outcome in outcomes if outcome.startswith("RESOURCE_EXHAUSTED")]
        assert len(refused) >= streams - 2 * REFLECTION_THREADS, outcomes
        assert all("server reflection streams: at most" in outcome for outcome in refused), refused
        release.set()
        for thread in threads:
            thread.join(30)
        # the streams that waited are served once the others close
        assert sorted(outcomes) == sorted(refused + ["list_services_response"] * (streams - len(refused)))
    finally:
        release.set()
        for channel in channels:
            channel.close()


def test_open_health_watches_are_bounded(small_navi):
    """Each open Watch holds grpc core memory; past MAX_WATCHES a new one is refused at once,
    Check still answers, and a closed one makes room again."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from navi.server.health import MAX_WATCHES

    with small_navi.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = []
        try:
            for i in range(MAX_WATCHES):
                watch = stub.Watch(health_pb2.HealthCheckRequest(service="" if i % 2 else f"name-{i}"), timeout=60)
                next(watch)
                watches.append(watch)
            with pytest.raises(grpc.RpcError) as info:
                next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{MAX_WATCHES} health Watch streams are open" in info.value.details()
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            watches.pop().cancel()
            deadline = time.monotonic() + 10
            while True:  # the server runs the cancelled stream's close callback shortly after
                try:
                    answer = next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60))
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                    time.sleep(0.05)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()
