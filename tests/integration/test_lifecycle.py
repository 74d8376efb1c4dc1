"""Model lifecycle against the real daemon: new versions, META.json, K versions,
corrupt versions, RFC 3339 names, the modelsync hook, warmup, and swaps under load.

Each test starts ``navi serve`` in a subprocess on free loopback ports and talks
real gRPC to it. Models are tiny ONNX graphs written here whose output is
``x + version`` (or a chosen value), so every answer says which version made it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from navi._proto.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from navi.repository.layout import parse_version
from navi.repository.tfrecord import write_records
from navi.codec import ndarray_to_tensor_proto, tensor_proto_to_ndarray

STARTUP_S = 60.0  # hang guards, not timing assertions
CHANGE_S = 30.0


def write_version(model_dir: Path, name, value=None) -> Path:
    """``model_dir/name/model.onnx`` computing output_0 = x + value (default: the version)."""
    value = float(parse_version(str(name)) % 1_000_000 if value is None else value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "v"], ["output_0"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("v", TensorProto.FLOAT, [], [value])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = Path(model_dir) / str(name)
    tmp = Path(model_dir) / f".tmp-{name}"
    tmp.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(tmp / "model.onnx"))
    # appear whole: a rename, as a deploy tool would do it
    tmp.rename(path)
    return path


class Daemon:
    """A ``navi serve`` subprocess and clients to it."""

    def __init__(self, model_dir: Path, *args: str):
        command = [
            sys.executable, "-m", "navi.cli.main", "serve", "--model-dir", str(model_dir),
            "--port", "0", "--prometheus-port", "0", "--rest-api-port", "0", "--host", "127.0.0.1",
            "--batch-drop-millis", "0", *args,
        ]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd=model_dir.parent)
        self.log: list[str] = []
        self._ports = threading.Event()
        self.port = self.metrics_port = None
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ports.wait(STARTUP_S):
            self.close()
            pytest.fail("navi serve did not start:\n" + "\n".join(self.log[-40:]))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            found = re.search(r"listening on \S+:(\d+) .*metrics on :(\d+)", line)
            if found:
                self.port, self.metrics_port = int(found[1]), int(found[2])
                self._ports.set()

    def predict(self, x=0.0, version=None, label=None, timeout_s=10.0):
        """(serving version, output value) of one request."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        ndarray_to_tensor_proto(np.full((1, 1), x, np.float32), request.inputs["x"])
        response = self.predict_stub.Predict(request, timeout=timeout_s)
        value = float(tensor_proto_to_ndarray(response.outputs["output_0"])[0, 0])
        return response.model_spec.version.value, value

    def status(self):
        """{version: (state name, error message)} from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "m"
        response = self.model_stub.GetModelStatus(request, timeout=10)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: (states.Name(s.state), s.status.error_message)
                for s in response.model_version_status}

    def metric(self, name: str, labels: str = "") -> float | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        for line in text.decode().splitlines():
            if line.startswith(name + labels + " ") or line.startswith(name + "{" + labels + "} "):
                return float(line.split()[-1])
        return None

    def wait_for(self, check, what: str, timeout_s: float = CHANGE_S):
        """Retry ``check()`` until it returns a truthy value (errors count as not yet)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what} (last error {last}):\n" + "\n".join(self.log[-30:]))

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start(tmp_path):
    daemons = []

    def _start(*args):
        daemon = Daemon(tmp_path / "m", *args)
        daemons.append(daemon)
        return daemon

    yield _start
    for daemon in daemons:
        daemon.close()


def _predict_log_record(value: float) -> bytes:
    entry = prediction_log_pb2.PredictionLog()
    ndarray_to_tensor_proto(np.full((3, 1), value, np.float32),
                            entry.predict_log.request.inputs["x"])
    entry.predict_log.request.model_spec.name = "m"
    return entry.SerializeToString()


def test_new_version_rfc3339_names_modelsync_hook_and_warmup(tmp_path, start):
    models = tmp_path / "m"
    first = write_version(models, "2022-12-20T10:18:53.000Z", value=7)
    (first / "assets.extra").mkdir()
    write_records(first / "assets.extra" / "tf_serving_warmup_requests",
                  [_predict_log_record(i) for i in range(5)])
    argv_file = tmp_path / "modelsync-argv.txt"
    hook = tmp_path / "modelsync.py"
    hook.write_text(
        "import sys\n"
        f"with open({str(argv_file)!r}, 'a') as f:\n"
        "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
    )
    daemon = start("--model-check-interval-secs", "1",
                   "--modelsync-cli", f"{sys.executable} {hook}")
    daemon.wait_for(lambda: daemon.status().get(1671531533000, ("",))[0] == "AVAILABLE",
                    "first version")
    # warmup: the 5 records ran the model before any client request
    assert daemon.metric(":navi:model_inference_time_count", 'model_name="m"') == 5
    assert daemon.predict(1.0) == (1671531533000, 8.0)

    write_version(models, "1700000000000")
    daemon.wait_for(lambda: daemon.predict()[0] == 1700000000000, "the new version")
    assert daemon.predict(1.0) == (1700000000000, 1700000000000 % 1_000_000 + 1.0)

    calls = daemon.wait_for(
        lambda: [line for line in argv_file.read_text().splitlines()
                 if "--cur-version 1700000000000" in line],
        "a modelsync call naming the new version",
    )
    assert calls[0] == "--model-spec m --cur-version 1700000000000"
    first_calls = argv_file.read_text().splitlines()
    assert first_calls[0] == "--model-spec m --cur-version "
    assert "--model-spec m --cur-version 2022-12-20T10:18:53.000Z" in first_calls


def test_meta_json_pin_and_label(tmp_path, start):
    models = tmp_path / "m"
    for version in (1, 2, 3):
        write_version(models, version)
    daemon = start("--model-check-interval-secs", "1")
    daemon.wait_for(lambda: daemon.predict()[0] == 3, "newest version")
    (tmp_path / "META.json").write_text(json.dumps({"m": {"version": 1, "labels": {"canary": 2}}}))
    daemon.wait_for(lambda: daemon.predict()[0] == 1, "the pinned version")
    # the labelled version was not loaded before META.json named it: it loads after the pin
    daemon.wait_for(lambda: daemon.predict(label="canary")[0] == 2, "the labelled version")
    assert daemon.predict(0.5) == (1, 1.5)
    assert daemon.predict(label="canary") == (2, 2.0)
    with pytest.raises(grpc.RpcError) as err:
        daemon.predict(label="stable")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # a malformed META.json is reported and the last good one stays in force
    (tmp_path / "META.json").write_text("{broken")
    daemon.wait_for(lambda: any("META.json is malformed" in l for l in daemon.log), "the report")
    assert daemon.predict()[0] == 1 and daemon.predict(label="canary")[0] == 2
    (tmp_path / "META.json").write_text("{}")
    daemon.wait_for(lambda: daemon.predict()[0] == 3, "unpinned newest")


def test_two_versions_kept_and_corrupt_version_skipped(tmp_path, start):
    models = tmp_path / "m"
    write_version(models, 1)
    write_version(models, 2)
    daemon = start("--model-check-interval-secs", "1", "--versions-per-model", "2")
    daemon.wait_for(lambda: [s[0] for s in daemon.status().values()] == ["AVAILABLE"] * 2,
                    "versions 1 and 2")
    assert daemon.predict() == (2, 2.0)
    assert daemon.predict(version=1) == (1, 1.0)
    assert daemon.predict(version=2) == (2, 2.0)

    bad = models / "3"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"this is not a model")
    daemon.wait_for(lambda: daemon.status().get(3, ("",))[0] == "END", "the failed load")
    assert daemon.status()[3][1]  # the load error is reported
    assert daemon.predict() == (2, 2.0) and daemon.predict(version=1) == (1, 1.0)
    assert daemon.metric(":navi:model_load_failures_total", 'model_name="m"') == 1

    write_version(models, 4)
    daemon.wait_for(lambda: daemon.predict()[0] == 4, "version 4")
    assert daemon.predict(version=2) == (2, 2.0)
    daemon.wait_for(lambda: 1 not in daemon.status() or daemon.status()[1][0] == "END",
                    "version 1 unloaded")
    with pytest.raises(grpc.RpcError) as err:
        daemon.predict(version=1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_swap_under_load_never_fails_a_request(tmp_path, start):
    models = tmp_path / "m"
    write_version(models, 1)
    # shedding off: this is about swaps, and on a busy machine a request may wait past 100 ms
    daemon = start("--model-check-interval-secs", "0.2", "--batch-time-out-millis", "1",
                   "--batch-drop-millis", "0", "--max-queue-wait-millis", "0")
    daemon.wait_for(lambda: daemon.predict()[0] == 1, "version 1")

    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[int, float]] = []
    failures: list[str] = []
    written: set[int] = {1}

    def client(seed):
        rng = np.random.default_rng(seed)
        channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        last = 0
        while not stop.is_set():
            x = float(rng.integers(0, 100))
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            ndarray_to_tensor_proto(np.full((1, 1), x, np.float32), request.inputs["x"])
            try:
                response = stub.Predict(request, timeout=30)
            except grpc.RpcError as exc:
                with lock:
                    failures.append(f"{exc.code()}: {exc.details()}")
                continue
            version = response.model_spec.version.value
            value = float(tensor_proto_to_ndarray(response.outputs["output_0"])[0, 0])
            with lock:
                answers.append((version, value))
                if value != x + version or version not in written:
                    failures.append(f"version {version} answered {value} for x={x}")
            if version < last and version not in rollback_targets:
                with lock:
                    failures.append(f"version went back from {last} to {version}")
            last = version
        channel.close()

    rollback_targets: set[int] = set()  # versions served again after a newer one was removed
    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    swaps = 0
    newest = 1
    try:
        for step in range(24):
            newest += 1
            written.add(newest)
            write_version(models, newest)
            daemon.wait_for(lambda: daemon.predict()[0] == newest, f"version {newest}")
            swaps += 1
            if step % 6 == 5:
                # roll back: remove the serving version; the previous one takes over
                rollback_targets.add(newest - 1)
                shutil.rmtree(models / str(newest))
                newest -= 1
                daemon.wait_for(lambda: daemon.predict()[0] == newest, f"rollback to {newest}")
                swaps += 1
                # a new version number, so per-client monotonic checks stay meaningful
                newest += 1
                written.add(newest)
                write_version(models, newest)
                daemon.wait_for(lambda: daemon.predict()[0] == newest, f"version {newest}")
                swaps += 1
            for old in sorted(int(p.name) for p in models.iterdir() if p.name.isdigit()):
                if old < newest - 1:
                    shutil.rmtree(models / str(old))
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    print(f"swap under load: {swaps} swaps, {len(answers)} answers, {len(failures)} failures")
    assert swaps >= 20
    assert not failures, failures[:10]
    assert len(answers) > 100
    served_versions = {v for v, _ in answers}
    assert len(served_versions) >= 10  # the load really spanned the swaps
