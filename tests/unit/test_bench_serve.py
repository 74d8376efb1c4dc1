"""Request building, BPR files, targets and the bare transport server of navi.bench.serve."""
import struct

import numpy as np
import pytest

from navi._proto.tensorflow.core.framework.types_pb2 import DT_STRING
from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow_serving.apis import predict_pb2
from navi.bench import requests, serve, servers, workloads


def test_target_parse():
    assert serve.Target.parse("localhost:8500") == serve.Target("localhost:8500", "localhost:8500")
    assert serve.Target.parse("navi=127.0.0.1:8500") == serve.Target("navi", "127.0.0.1:8500")
    with pytest.raises(ValueError):
        serve.Target.parse("navi=nowhere")


def test_tf_predict_request_round_trips():
    dense = np.arange(6, dtype=np.float32).reshape(3, 2)
    raw = requests.encode_tf_predict("home", {"x": dense, "examples": [b"a", b"bc"]}, "serving_default", 7)
    request = predict_pb2.PredictRequest.FromString(raw)
    assert request.model_spec.name == "home"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 7
    x = request.inputs["x"]
    assert x.dtype == 1 and [d.size for d in x.tensor_shape.dim] == [3, 2]
    assert np.array_equal(np.frombuffer(x.tensor_content, np.float32).reshape(3, 2), dense)
    examples = request.inputs["examples"]
    assert examples.dtype == DT_STRING
    assert list(examples.string_val) == [b"a", b"bc"]
    assert [d.size for d in examples.tensor_shape.dim] == [2]


def test_kserve_request_uses_raw_contents():
    dense = np.arange(4, dtype=np.int64).reshape(2, 2)
    raw = requests.encode_kserve_infer("dense", {"x": dense, "examples": [b"ab", b"c"]}, "3")
    request = kserve_pb2.ModelInferRequest.FromString(raw)
    assert request.model_name == "dense" and request.model_version == "3"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("x", "INT64", [2, 2]), ("examples", "BYTES", [2])]
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], np.int64).reshape(2, 2), dense)
    assert request.raw_input_contents[1] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


def test_read_bpr_file_both_formats(tmp_path):
    import base64

    records = [b"\x0b\x00\x01" * 5, b"\x0f" * 40, b"z"]
    text = tmp_path / "bprs.b64"
    text.write_text("\n".join(base64.b64encode(r).decode() for r in records) + "\n")
    raw = tmp_path / "bprs.bin"
    raw.write_bytes(b"".join(struct.pack("<I", len(r)) + r for r in records))
    assert workloads.read_bpr_file(text) == records
    assert workloads.read_bpr_file(raw) == records
    broken = tmp_path / "broken.bin"
    broken.write_bytes(struct.pack("<I", 100) + b"short")
    with pytest.raises(ValueError, match="record 1"):
        workloads.read_bpr_file(broken)


def test_bpr_workload_groups_records_into_requests():
    records = [b"r%d" % i for i in range(5)]
    workload = workloads.bpr_workload(records, "tfserving", "home", "examples", bprs_per_request=2,
                                  rows_per_record=[1, 2, 3, 4, 5], distinct_requests=10)
    assert len(workload.payloads) == 3
    assert workload.rows == [3, 7, 5 + 1]  # the last request wraps around to the first record
    first = predict_pb2.PredictRequest.FromString(workload.payloads[0])
    assert list(first.inputs["examples"].string_val) == [b"r0", b"r1"]
    assert workload.method == requests.TF_PREDICT


def test_random_inputs_follow_metadata():
    infos = [requests.InputInfo("f", np.dtype(np.float32), (-1, 3)), requests.InputInfo("i", np.dtype(np.int64), (-1,)),
             requests.InputInfo("s", np.dtype(object), (-1,)), requests.InputInfo("b", np.dtype(np.bool_), (-1, 2))]
    inputs = workloads.random_inputs(infos, 4, np.random.default_rng(0))
    assert inputs["f"].shape == (4, 3) and inputs["f"].dtype == np.float32
    assert inputs["i"].shape == (4,) and inputs["i"].dtype == np.int64
    assert len(inputs["s"]) == 4
    assert inputs["b"].dtype == np.bool_
    workload = workloads.dense_workload("tfserving", "dense", infos, batch_rows=4, distinct_requests=3)
    assert workload.rows == [4, 4, 4] and len(set(workload.payloads)) == 3


def test_bare_server_answers_constant_and_probe_reads_rows():
    response = servers.constant_predict_response(rows=5)
    server, port = servers.start_bare_server(0, response, threads=2)
    try:
        payload = requests.encode_tf_predict("any", {"x": np.zeros((5, 2), np.float32)})
        assert requests.probe_rows(f"127.0.0.1:{port}", requests.TF_PREDICT, payload, "tfserving") == 5
    finally:
        server.stop(0)


def test_probe_reports_refusing_target():
    with pytest.raises(RuntimeError, match="UNAVAILABLE"):
        requests.probe_rows("127.0.0.1:1", requests.TF_PREDICT, b"", "tfserving", timeout_s=2.0)


def test_run_serve_bench_against_bare_servers(tmp_path):
    """The whole serve benchmark, two interleaved targets, request-bounded (counts only)."""
    from navi.bench import report

    bare = [servers.start_bare_server(0, servers.constant_predict_response(rows=2), threads=2) for _ in range(2)]
    try:
        targets = [serve.Target("a", f"127.0.0.1:{bare[0][1]}"), serve.Target("b", f"127.0.0.1:{bare[1][1]}")]
        infos = [requests.InputInfo("x", np.dtype(np.float32), (-1, 4))]
        workload = workloads.dense_workload("tfserving", "dense", infos, batch_rows=2, distinct_requests=2)
        config = serve.ServeBenchConfig(targets=targets, concurrencies=[2], rates=[50.0], duration_s=None,
                                        requests=20, warmup_s=0.1, client_processes=2)
        events = []
        document = serve.run_serve_bench(config, workload, on_event=lambda kind, data: events.append(kind))
    finally:
        for server, _ in bare:
            server.stop(0)
    runs = document["runs"]
    assert [(r["target"], r.get("concurrency"), r.get("rate")) for r in runs] == [
        ("a", 2, None), ("b", 2, None), ("a", None, 50.0), ("b", None, 50.0)]
    for run in runs:
        assert run["requests"] == 20 and run["errors"] == {}
        assert run["rows_per_s"] == pytest.approx(2 * run["requests_per_s"])
    assert events.count("start") == events.count("done") == 4
    path = tmp_path / "serve.json"
    report.write_json(document, path)
    assert path.stat().st_size > 0


def test_cli_serve_writes_json_and_plot(tmp_path):
    """`navi bench serve` end to end against two bare servers, BPRs from a file, rows probed."""
    import base64
    import json

    from click.testing import CliRunner

    from navi.cli.bench import bench

    bprs = tmp_path / "bprs.txt"
    bprs.write_text("\n".join(base64.b64encode(b"bpr-%d" % i).decode() for i in range(4)) + "\n")
    bare = [servers.start_bare_server(0, servers.constant_predict_response(rows=3), threads=2) for _ in range(2)]
    try:
        result = CliRunner().invoke(bench, [
            "serve", "--target", f"one=127.0.0.1:{bare[0][1]}", "--target", f"two=127.0.0.1:{bare[1][1]}",
            "--bpr-file", str(bprs), "--bprs-per-request", "2", "--concurrency", "1,2", "--requests", "10",
            "--warmup-s", "0.1", "--client-processes", "2",
            "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png")])
    finally:
        for server, _ in bare:
            server.stop(0)
    assert result.exit_code == 0, result.output
    assert "ratios to one" in result.output
    data = json.loads((tmp_path / "out.json").read_text())
    assert [(r["target"], r["concurrency"]) for r in data["runs"]] == [("one", 1), ("two", 1), ("one", 2), ("two", 2)]
    assert all(r["requests"] == 10 and r["errors"] == {} for r in data["runs"])
    assert data["workload"]["rows_per_request"] == 3
    assert (tmp_path / "out.png").stat().st_size > 0


def test_cli_serve_rejects_bad_options():
    from click.testing import CliRunner

    from navi.cli.bench import bench

    result = CliRunner().invoke(bench, ["serve", "--target", "nowhere"])
    assert result.exit_code != 0 and "host:port" in result.output
    result = CliRunner().invoke(bench, ["serve", "--target", "a=127.0.0.1:1", "--duration", "1", "--requests", "5"])
    assert result.exit_code != 0 and "not both" in result.output


def test_unreachable_target_is_refused_before_running():
    workload = workloads.Workload("w", [b"x"], [1], requests.TF_PREDICT)
    config = serve.ServeBenchConfig(targets=[serve.Target("dead", "127.0.0.1:1")], concurrencies=[1],
                                    duration_s=1.0, timeout_s=1.0)
    with pytest.raises(RuntimeError, match="dead"):
        serve.run_serve_bench(config, workload)
