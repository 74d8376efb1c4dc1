#!/usr/bin/env python
"""In-process CPU per Predict request: navi's request path without the network (RESULTS.md, "Per-request cost").

Loads the demo models as ``navi serve --model-dir models/home --model-dir models/dense
--input examples --input ""`` would, then calls the Predict handler gRPC would call (the
raw-bytes handler with the servicer behind it) with a serialized request and a stand-in
gRPC context, on one thread, and reports the CPU per call (best of the repeats). Run it
with another revision's checkout first on PYTHONPATH to compare revisions (a5847a5's
servicer, before the data plane, is taken too).

``--threads N`` calls it from N threads at once, each in a closed loop, and reports the
process's CPU per call: what N handler threads sharing one GIL cost without any transport
(their requests also batch together, as in the server).

Usage: python benchmarks/bench_request_path.py [--workload dense|home] [--rows 2] [--calls 10000]
       [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class _Context:
    """What the Predict path asks of a gRPC servicer context."""

    def time_remaining(self) -> float:
        return 30.0

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")

    def set_compression(self, compression) -> None:
        pass


def _settings():
    import navi.cli.serve as serve

    captured = {}
    run = serve.run
    serve.run = lambda settings, fleet=None: captured.setdefault("settings", settings) and 0
    flags = ["--model-dir", str(REPO / "models/home"), "--model-dir", str(REPO / "models/dense"),
             "--input", "examples", "--input", "", "--port", "0"]
    if any("--rest-api-port" in option.opts for option in serve.serve.params):
        flags += ["--rest-api-port", "0"]
    try:
        serve.serve.main(flags, standalone_mode=False)
    except SystemExit:
        pass
    finally:
        serve.run = run
    return captured["settings"]


def _handler(registry, metrics, settings):
    from navi.server.tfserving import PredictionServicer

    try:
        from navi.server.dataplane import DataPlane
        from navi.server.rawrpc import raw_handler
    except ImportError:  # before the data plane (a5847a5): the servicer took the bytes itself
        return PredictionServicer(registry, metrics).Predict
    return raw_handler(PredictionServicer(DataPlane(registry, metrics, settings.request_limits)).Predict,
                       None, "Predict")


def _request(registry, workload: str, rows: int) -> bytes:
    from navi._proto.tensorflow_serving.apis import predict_pb2
    from navi.codec import ndarray_to_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = workload
    if workload == "home":  # one BPR of 100 candidates, as `navi bench serve --workload home` sends
        from navi import segdense, workload as bprs

        layout = segdense.load_layout(*segdense.find_spec_files(REPO / "models/home/1700000000000"))
        request.inputs["examples"].dtype = 7  # DT_STRING
        request.inputs["examples"].tensor_shape.dim.add(size=1)
        request.inputs["examples"].string_val.extend(bprs.make_bprs(layout, 1, 100, 0))
        return request.SerializeToString()
    rng = np.random.default_rng(0)
    for spec in registry.get("dense").signature.inputs:
        shape = [rows if size < 0 else size for size in spec.shape]
        ndarray_to_tensor_proto(rng.random(shape).astype(spec.dtype), request.inputs[spec.name])
    return request.SerializeToString()


def _timed(loop, count: int) -> float:
    """CPU us per call of ``loop(count)`` on the calling thread's own clock."""
    started = time.thread_time()
    loop(count)
    return (time.thread_time() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("dense", "home"), default="dense")
    parser.add_argument("--rows", type=int, default=2, help="rows of a dense request")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="handler threads calling at once (CPU per call is then the process's)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    os.chdir(REPO)

    from navi.metrics import Metrics
    from navi.plugins import resolve_runtime
    from navi.repository import ModelRegistry

    settings = _settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics, runtimes=resolve_runtime)
    registry.start()
    try:
        while not registry.is_ready():
            time.sleep(0.05)
        handler = _handler(registry, metrics, settings)
        raw = _request(registry, args.workload, args.rows)
        context = _Context()

        def loop(count: int) -> None:
            for _ in range(count):
                handler(raw, context)

        def calls(pool: ThreadPoolExecutor, count: int) -> float:
            """CPU us per call: one handler thread's own clock, or the process's for several
            (then the GIL hand-offs between them count too)."""
            if args.threads == 1:
                return pool.submit(_timed, loop, count).result()
            share = max(1, count // args.threads)
            started = time.process_time()
            for done in [pool.submit(loop, share) for _ in range(args.threads)]:
                done.result()
            return (time.process_time() - started) / (share * args.threads) * 1e6

        # handlers run on pool threads, not the main one
        with ThreadPoolExecutor(args.threads) as pool:
            calls(pool, max(100, args.calls // 5))
            gc.collect()
            gc.freeze()
            per_call = [calls(pool, args.calls) for _ in range(args.repeats)]
    finally:
        registry.stop(0)
    threads = f", {args.threads} threads" if args.threads > 1 else ""
    print(f"{args.workload}, {len(raw)} request bytes{threads}: CPU per call best {min(per_call):.1f} us, "
          f"median {sorted(per_call)[len(per_call) // 2]:.1f} us ({args.repeats} x {args.calls})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
