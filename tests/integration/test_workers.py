"""``navi serve --workers 2``: one port, a supervisor, merged metrics, restarts, drain."""
from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from navi import codec
from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
#: channels the tests load from: each is one connection, which the kernel gives one worker
CHANNELS = 16


@pytest.fixture(scope="module")
def home_request():
    from navi.demo import demo_repository
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    version_dir = next((demo_repository() / "home").iterdir())
    payloads = make_bprs(load_layout_from_dir(version_dir), 2, candidates=3, seed=7)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "home"
    codec.ndarray_to_tensor_proto(np.array(payloads, dtype=object), request.inputs["examples"])
    return request


def metrics(daemon) -> dict[tuple[str, tuple], float]:
    """Every sample of the supervisor's /metrics, parsed by prometheus-client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def requests_counted(daemon) -> float:
    # prometheus-client's parser names a counter's samples with _total
    return metrics(daemon)[(":navi:num_requests_total", ())]


def private_channels(daemon, count: int) -> list[grpc.Channel]:
    """``count`` channels that each open their own connection."""
    return [daemon.channel(**{"grpc.use_local_subchannel_pool": 1}) for _ in range(count)]


def predict_from_channels(daemon, request, channels: int, per_channel: int) -> list[object]:
    """Send ``per_channel`` requests on each of ``channels`` channels at once; the answers (or errors)."""
    opened = private_channels(daemon, channels)

    def send(channel):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        results = []
        for _ in range(per_channel):
            try:
                results.append(stub.Predict(request, timeout=30))
            except grpc.RpcError as error:
                results.append(error)
        return results

    try:
        with ThreadPoolExecutor(channels) as pool:
            return [r for results in pool.map(send, opened) for r in results]
    finally:
        for channel in opened:
            channel.close()


def health_of(daemon) -> int:
    with daemon.channel(**{"grpc.use_local_subchannel_pool": 1}) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def wait_for(condition, timeout_s: float, what: str, daemon):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout_s} s:\n{daemon.log_text()}")


@pytest.fixture(scope="module")
def fleet(start_navi):
    from tests.integration.conftest import _LISTENING

    daemon = start_navi("--workers", "2", wait=False)
    # poll health from fresh connections while the workers start: the first
    # SERVING answer must come after the supervisor saw both workers ready
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            pytest.fail(f"navi exited with {daemon.process.returncode}:\n{daemon.log_text()}")
        match = _LISTENING.search(daemon.log_text())
        if match:
            daemon.address = f"127.0.0.1:{match.group(1)}"
            try:
                status = health_of(daemon)
            except grpc.RpcError:  # no worker listening yet
                status = None
            if status == SERVING:
                text = daemon.log_text()
                assert "worker 0 ready (pid" in text and "worker 1 ready (pid" in text, text
                return daemon.wait_ready()
        time.sleep(0.05)
    pytest.fail(f"never SERVING:\n{daemon.log_text()}")


def test_every_channel_is_answered_and_counted_once(fleet, home_request):
    before = requests_counted(fleet)
    results = predict_from_channels(fleet, home_request, CHANNELS, per_channel=5)
    failures = [r for r in results if isinstance(r, grpc.RpcError)]
    assert not failures, failures[:3]
    scores = codec.tensor_proto_to_ndarray(results[0].outputs["output_0"])
    assert scores.shape == (6, 1)
    samples = metrics(fleet)
    assert samples[(":navi:num_requests_total", ())] - before == CHANNELS * 5
    # the kernel spread the 16 connections over both workers (all on one: p = 2**-15)
    per_worker = [samples[(":navi:worker_requests", (("worker", str(i)),))] for i in range(2)]
    assert all(count > 0 for count in per_worker), per_worker
    assert samples[(":navi:workers", ())] == 2
    for index in range(2):
        assert samples[(":navi:worker_ready", (("worker", str(index)),))] == 1
        assert samples[(":navi:worker_resident_bytes", (("worker", str(index)),))] > 10 * 2**20
    # a histogram is merged too: one observation per request answered
    answered = samples[(":navi:response_time_count", (("model_name", "home"),))]
    assert answered == samples[(":navi:num_predictions_total", (("model_name", "home"),))]


def test_a_killed_worker_is_restarted_and_counters_do_not_go_back(fleet, home_request):
    predict_from_channels(fleet, home_request, 4, per_channel=3)
    before = metrics(fleet)  # this scrape fetched every worker's latest counts
    old_pid = int(before[(":navi:worker_pid", (("worker", "0"),))])
    counted = before[(":navi:num_requests_total", ())]
    os.kill(old_pid, signal.SIGKILL)

    def restarted():
        samples = metrics(fleet)
        pid = samples.get((":navi:worker_pid", (("worker", "0"),)))
        ready = samples.get((":navi:worker_ready", (("worker", "0"),)))
        return samples if pid not in (None, old_pid) and ready == 1 else None

    samples = wait_for(restarted, 60, "worker 0 restarted and ready", fleet)
    assert samples[(":navi:worker_restarts_total", (("worker", "0"),))] == 1
    assert samples[(":navi:num_requests_total", ())] >= counted
    assert f"worker 0 (pid {old_pid}) died (signal 9)" in fleet.log_text()
    assert wait_for(lambda: health_of(fleet) == SERVING, 30, "SERVING again", fleet)
    # counting goes on from the kept totals: the new requests add exactly
    kept = samples[(":navi:num_requests_total", ())]
    results = predict_from_channels(fleet, home_request, CHANNELS, per_channel=2)
    assert not [r for r in results if isinstance(r, grpc.RpcError)]
    assert requests_counted(fleet) - kept == CHANNELS * 2


def test_sigterm_answers_requests_in_flight_on_every_worker_and_exits_0(start_navi, home_request):
    # requests wait 4 s for company in their batch: in flight when SIGTERM comes
    daemon = start_navi("--workers", "2", "--batch-eager-when-idle", "false", "--batch-time-out-millis", "4000",
                        "--max-batch-size", "64", "--batch-drop-millis", "0", "--shutdown-grace-secs", "20")
    channels = private_channels(daemon, CHANNELS)
    try:
        calls = [prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(home_request, timeout=30)
                 for channel in channels]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # until every request is held by a worker
            held = [v for (name, _), v in metrics(daemon).items() if name == ":navi:worker_requests_in_flight"]
            if sum(held) == CHANNELS:
                break
            time.sleep(0.05)
        assert not any(call.done() for call in calls)
        daemon.process.send_signal(signal.SIGTERM)
        for call in calls:
            assert codec.tensor_proto_to_ndarray(call.result().outputs["output_0"]).shape == (6, 1)
    finally:
        for channel in channels:
            channel.close()
    assert daemon.wait_exit(timeout_s=60) == 0
    text = daemon.log_text()
    assert "draining 2 workers" in text and "worker 0 stopped" in text and "worker 1 stopped" in text


def test_a_taken_port_stops_start_up(start_navi, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "navi.cli.main", "serve", "--workers", "2", "--host", "127.0.0.1",
             "--port", str(taken.getsockname()[1]), "--prometheus-port", "0"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "--port: cannot bind" in result.stderr


def test_workers_of_a_killed_supervisor_drain_and_exit(start_navi):
    daemon = start_navi("--workers", "2")
    samples = metrics(daemon)
    pids = [int(samples[(":navi:worker_pid", (("worker", str(i)),))]) for i in range(2)]
    daemon.process.send_signal(signal.SIGKILL)
    daemon.wait_exit(timeout_s=30)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie until its parent (the fork server, exiting too) is gone
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(pid) for pid in pids), 30, "workers gone", daemon)
    assert "supervisor gone, draining" in daemon.log_text()


def test_split_worker_cpus_keep_every_thread_of_a_worker_on_its_own_slice(start_navi):
    from navi.server.workers import worker_cpu_set

    daemon = start_navi("--workers", "2", "--worker-cpus", "split")
    samples = metrics(daemon)
    allowed = os.sched_getaffinity(0)  # what the supervisor (started from here) may use
    for index in range(2):
        pid = int(samples[(":navi:worker_pid", (("worker", str(index)),))])
        expected = set(worker_cpu_set(allowed, 2, index))
        threads = list(Path(f"/proc/{pid}/task").iterdir())
        # handler, poller and gRPC core threads alike (all started after the pin)
        assert len(threads) > 4
        for thread in threads:
            assert os.sched_getaffinity(int(thread.name)) == expected, (index, thread.name)
        assert f"worker {index} runs on CPU" in daemon.log_text()
    # the fleet serves as before
    assert health_of(daemon) == SERVING


def test_workers_map_one_copy_of_a_large_models_weights(start_navi, tmp_path):
    import onnxruntime as ort

    from navi.bench.embedding_model import IDS_INPUT, SCORE_OUTPUT, ids_batch, write_embedding_model

    table_rows = 80_000  # 20 MiB of table: above what navi.plugins.onnx_shared shares
    model_file = tmp_path / "ranker" / "1" / "model.onnx"
    write_embedding_model(model_file, rows=table_rows)
    daemon = start_navi("--workers", "2", "--model-dir", str(tmp_path / "ranker"), "--input", "", "--output", "")
    samples = metrics(daemon)
    pids = [int(samples[(":navi:worker_pid", (("worker", str(i)),))]) for i in range(2)]

    def weights_files(pid: int) -> set[str]:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        return {line.split()[-1] for line in lines if line.endswith("/weights.bin")}

    mapped = [weights_files(pid) for pid in pids]
    assert len(mapped[0]) == 1 and mapped[0] == mapped[1], mapped
    cache_dir = Path(next(iter(mapped[0]))).parent.parent
    assert cache_dir.name.startswith("navi-weights-")

    ids = ids_batch(5, table_rows)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    codec.ndarray_to_tensor_proto(ids, request.inputs[IDS_INPUT])
    results = predict_from_channels(daemon, request, CHANNELS, per_channel=2)
    assert not [r for r in results if isinstance(r, grpc.RpcError)]
    expected = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).run(None, {IDS_INPUT: ids})[0]
    for result in results:
        np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(result.outputs[SCORE_OUTPUT]), expected)
    per_worker = metrics(daemon)
    assert all(per_worker[(":navi:worker_requests", (("worker", str(i)),))] > 0 for i in range(2))

    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout_s=60) == 0
    assert not cache_dir.exists()
