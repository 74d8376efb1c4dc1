"""Latency of model A while model B (a ~200 MB ONNX model) reloads, against no reload.

Starts ``navi serve`` with two models, sends model A a steady open-loop stream
of small Predict requests (fixed rate, latency measured per request), first
with nothing else happening, then while new versions of B keep appearing (each
one is loaded, warmed up and swapped in on the load thread). Quiet and reload
windows alternate for several rounds, so drift in the machine's background load
hits both alike. Prints p50 / p99 / max of both and the p99 ratio (target:
within 1.5x).

    python benchmarks/bench_reload.py [--rate 100] [--seconds 5] [--rounds 6] [--size-mb 200]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from navi.codec import ndarray_to_tensor_proto


def small_model(path: Path) -> None:
    """Model A: output_0 = x + 1 on [n, 8] floats."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["output_0"])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def large_model(path: Path, size_mb: int) -> None:
    """Model B: one MatMul whose weight is ``size_mb`` MB of float32."""
    rows = 1024
    cols = size_mb * 1024 * 1024 // (4 * rows)
    weight = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["output_0"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


class Server:
    """``navi serve`` in a subprocess; its ports are read from its log."""

    def __init__(self, model_dirs: list[Path], interval_s: float, hugepages: bool = False):
        command = [sys.executable, "-m", "navi.cli.main", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--prometheus-port", "0", "--rest-api-port", "0", "--batch-drop-millis", "0",
                   "--model-check-interval-secs", str(interval_s), "--output", ""]
        for model_dir in model_dirs:
            command += ["--model-dir", str(model_dir)]
        env = dict(os.environ)
        if hugepages:
            # glibc then asks for transparent huge pages on its large mmapped blocks:
            # freeing a 200 MB session (done under the GIL by ONNX Runtime's
            # destructor) unmaps ~400 huge pages instead of ~100k small ones
            env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.port = self.metrics_port = None
        for line in self.proc.stderr:
            found = re.search(r"listening on \S+:(\d+) .*metrics on :(\d+)", line)
            if found:
                self.port, self.metrics_port = int(found[1]), int(found[2])
                break
        if self.port is None:
            raise SystemExit("navi serve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def metric(self, name: str, labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        for line in text.decode().splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[-1])
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def stream(port: int, rate_per_s: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop Predict stream to model A; returns (latencies in ms, failures)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "a"
    ndarray_to_tensor_proto(np.ones((1, 8), np.float32), request.inputs["x"])
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    pending = []

    def done(future, sent_s):
        elapsed_ms = (time.perf_counter() - sent_s) * 1000
        with lock:
            if future.exception() is None:
                latencies.append(elapsed_ms)
            else:
                failures[0] += 1

    period_s = 1.0 / rate_per_s
    start = time.perf_counter()
    n = 0
    while True:
        due = start + n * period_s
        if due - start >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        future = stub.Predict.future(request, timeout=30)
        future.add_done_callback(lambda f, s=sent: done(f, s))
        pending.append(future)
        n += 1
    for future in pending:
        try:
            future.result()
        except grpc.RpcError:
            pass
    channel.close()
    return latencies, failures[0]


def summary(latencies: list[float]) -> dict:
    data = np.array(latencies)
    return {"n": int(len(data)), "p50_ms": round(float(np.percentile(data, 50)), 3),
            "p99_ms": round(float(np.percentile(data, 99)), 3), "max_ms": round(float(data.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s to model A")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each window (quiet, then reloading)")
    parser.add_argument("--rounds", type=int, default=6, help="quiet/reload window pairs")
    parser.add_argument("--hugepages", action="store_true",
                        help="run the server with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    parser.add_argument("--size-mb", type=int, default=200, help="size of model B")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="navi-reload-") as tmp:
        root = Path(tmp)
        small_model(root / "a" / "1" / "model.onnx")
        source = root / "b-source.onnx"
        large_model(source, args.size_mb)
        size_mb = source.stat().st_size / 2**20
        version = [1]

        def new_b_version():
            # a hard link: the server still reads and loads every byte, but the
            # benchmark does not spend its CPU copying 200 MB
            tmp_dir = root / "b" / f".incoming-{version[0]}"
            tmp_dir.mkdir(parents=True)
            os.link(source, tmp_dir / "model.onnx")
            tmp_dir.rename(root / "b" / str(version[0]))
            version[0] += 1

        new_b_version()
        server = Server([root / "a", root / "b"], interval_s=0.5, hugepages=args.hugepages)
        try:
            # the baseline starts once B's first version is loaded, so no load overlaps it
            deadline = time.monotonic() + 300
            while server.metric(":navi:new_model_snapshot", 'model_name="b"') < 1:
                if time.monotonic() > deadline:
                    raise SystemExit("model B never loaded")
                time.sleep(0.2)
            stream(server.port, args.rate, 2.0)  # warm the client and server paths
            base: list[float] = []
            during: list[float] = []
            base_failures = during_failures = 0
            loads = 0
            for _ in range(args.rounds):
                # quiet window: no load in flight
                latencies, failed = stream(server.port, args.rate, args.seconds)
                base += latencies
                base_failures += failed
                # reload window: a new version of B appears as the window opens
                loaded = server.metric(":navi:model_load_seconds_count", 'model_name="b"')
                new_b_version()
                latencies, failed = stream(server.port, args.rate, args.seconds)
                during += latencies
                during_failures += failed
                give_up = time.monotonic() + 300
                while server.metric(":navi:model_load_seconds_count", 'model_name="b"') <= loaded:
                    if time.monotonic() > give_up:
                        raise SystemExit("model B's new version never finished loading")
                    time.sleep(0.1)  # the next quiet window starts after this load
                loads += 1
            load_time = server.metric(":navi:model_load_seconds_sum", 'model_name="b"')
            load_count = server.metric(":navi:model_load_seconds_count", 'model_name="b"')
        finally:
            server.close()

    report = {
        "model_b_mb": round(size_mb, 1),
        "hugepages": args.hugepages,
        "rate_per_s": args.rate,
        "rounds": args.rounds,
        "reloads_during_stream": loads,
        "mean_load_s": round(load_time / load_count, 2) if load_count else None,
        "no_reload": summary(base) | {"failures": base_failures},
        "reloading": summary(during) | {"failures": during_failures},
    }
    report["p99_ratio"] = round(report["reloading"]["p99_ms"] / report["no_reload"]["p99_ms"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
