"""navi's KServe V2 HTTP vs its V2 gRPC vs Seldon MLServer's V2 HTTP vs the raw ONNX Runtime loop.

One run, same ONNX models, same 100-row dense request (the home layout's five
dense tensors: 2.5 MB with binary tensor data; MLServer, which has no binary
extension over HTTP, gets the same tensors as JSON): the light model (the committed
demo home MLP) and the heavy one (``navi demo --heavy``), each served by navi in
dense mode (``--onnx-use-converter none``) and by MLServer through a small
custom runtime (``mlserver_onnx.py`` beside this file: MLServer has no ONNX
runtime of its own) that runs the same ONNX file with onnxruntime, one intra-op
thread as navi's default. The raw loop: two threads calling
``InferenceSession.run`` on the same request (two batches in flight, as navi
runs them). Rounds interleave every target; medians over the rounds.

Needs MLServer in its own venv (its pins clash with the dev venv's):
    python -m venv /tmp/venv-mls && /tmp/venv-mls/bin/pip install mlserver onnxruntime numpy

Usage: python benchmarks/bench_rest.py [--mlserver /tmp/venv-mls/bin/mlserver] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
ROWS = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} never answered 200")


def bench(address: str, protocol: str, model: str, duration_s: float, concurrency: int) -> float:
    """rows/s of one `navi bench serve` run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "navi.cli.main", "bench", "serve", "--target", address,
                        "--protocol", protocol, "--model", model, "--workload", "dense",
                        "--batch-rows", str(ROWS), "--distinct-requests", "4", "--concurrency", str(concurrency),
                        "--duration", str(duration_s), "--warmup-s", "1", "--json", out.name],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        run = json.loads(Path(out.name).read_text())["runs"][0]
    if run["errors"]:
        raise SystemExit(f"{protocol} {address} {model}: errors {run['errors']}")
    return run["rows_per_s"]


def onnx_inputs(model_path: Path) -> list[dict]:
    """V2 tensor metadata of an ONNX model's inputs (name, datatype, shape with -1)."""
    import onnxruntime as ort

    datatypes = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64", "tensor(int32)": "INT32"}
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return [{"name": i.name, "datatype": datatypes[i.type],
             "shape": [d if isinstance(d, int) else -1 for d in i.shape]} for i in session.get_inputs()]


def raw_loop(model_path: Path, duration_s: float, threads: int = 2) -> float:
    """rows/s of ``threads`` threads running the 100-row request through onnxruntime directly."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    feeds = {i.name: rng.standard_normal((ROWS, i.shape[1])).astype(types[i.type]) for i in session.get_inputs()}
    counts = [0] * threads
    stop = time.monotonic() + duration_s

    def work(index: int) -> None:
        while time.monotonic() < stop:
            session.run(None, feeds)
            counts[index] += 1

    started = time.monotonic()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) * ROWS / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlserver", default="/tmp/venv-mls/bin/mlserver")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    from navi.demo import DEMO_VERSION, ensure_heavy_model

    work = Path(tempfile.mkdtemp(prefix="navi-bench-rest-"))
    models = {"light": REPO / "models" / "home", "heavy": ensure_heavy_model()}
    navi_repo, mls_repo = work / "navi", work / "mlserver"
    for name, source in models.items():
        shutil.copytree(source / str(DEMO_VERSION), navi_repo / name / "1")
        (mls_repo / name).mkdir(parents=True)
        onnx_path = navi_repo / name / "1" / "model.onnx"
        (mls_repo / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_onnx.OnnxModel",
            # MLServer's metadata tells only what its settings declare (the bench reads it)
            "inputs": onnx_inputs(onnx_path),
            "parameters": {"uri": str(onnx_path)}}))
    shutil.copy(HERE / "mlserver_onnx.py", mls_repo / "mlserver_onnx.py")
    grpc_port, rest_port, mls_http, mls_grpc = (free_port() for _ in range(4))
    (mls_repo / "settings.json").write_text(json.dumps({
        "http_port": mls_http, "grpc_port": mls_grpc, "metrics_port": free_port(), "host": "127.0.0.1",
        # its inference worker processes die at start with this uvloop ("no current event
        # loop"): inference runs in the server process, as with MLServer's parallel_workers=0
        "parallel_workers": 0}))

    navi_cmd = [sys.executable, "-m", "navi.cli.main", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
                "--rest-api-port", str(rest_port), "--prometheus-port", "0", "--onnx-use-converter", "none",
                # no shedding (the default sheds requests queued past 90 ms): throughput, as MLServer
                "--batch-drop-millis", "0",
                "--input", "", "--output", "", "-m", str(navi_repo / "light"), "-m", str(navi_repo / "heavy")]
    mls_env = dict(os.environ, PYTHONPATH=str(mls_repo))
    servers = [subprocess.Popen(navi_cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
               subprocess.Popen([args.mlserver, "start", str(mls_repo)], cwd=mls_repo, env=mls_env,
                                stdout=open(work / "mlserver.log", "wb"), stderr=subprocess.STDOUT)]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{rest_port}/v2/health/ready")
        for name in models:
            wait_http(f"http://127.0.0.1:{mls_http}/v2/models/{name}/ready")
        for round_index in range(args.rounds):
            for name in models:
                targets = [("navi V2 HTTP", f"127.0.0.1:{rest_port}", "v2http"),
                           ("navi V2 gRPC", f"127.0.0.1:{grpc_port}", "kserve"),
                           # MLServer 1.7 has no binary tensor data extension over HTTP (a
                           # binary body is answered 422 "JSON decode error"): JSON tensors
                           ("MLServer V2 HTTP", f"127.0.0.1:{mls_http}", "v2json")]
                for label, address, protocol in targets:
                    results.setdefault((name, label), []).append(
                        bench(address, protocol, name, args.duration, args.concurrency))
                results.setdefault((name, "raw ORT loop"), []).append(
                    raw_loop(navi_repo / name / "1" / "model.onnx", args.duration))
                print(f"round {round_index + 1}: {name}: " + ", ".join(
                    f"{label} {values[-1]:,.0f}" for (model, label), values in results.items() if model == name),
                    flush=True)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"\n{date.today()}, {os.cpu_count()} CPUs, {args.rounds} rounds x {args.duration:.0f} s, "
          f"c={args.concurrency}, {ROWS}-row dense request, binary tensor data; median (min) rows/s\n")
    print("| model | navi V2 HTTP | navi V2 gRPC | MLServer V2 HTTP | raw ORT loop | HTTP/gRPC | HTTP/MLServer | HTTP/raw |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        med = {label: statistics.median(v) for (model, label), v in results.items() if model == name}
        low = {label: min(v) for (model, label), v in results.items() if model == name}
        cells = [f"{med[k]:,.0f} ({low[k]:,.0f})" for k in ("navi V2 HTTP", "navi V2 gRPC", "MLServer V2 HTTP",
                                                             "raw ORT loop")]
        http = med["navi V2 HTTP"]
        print(f"| {name} | " + " | ".join(cells) + f" | {http / med['navi V2 gRPC']:.2f}x | "
              f"{http / med['MLServer V2 HTTP']:.1f}x | {http / med['raw ORT loop']:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
