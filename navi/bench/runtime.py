"""`navi bench runtime`: runtimes in-process, without a server in the way.

Two cases:

* ``dense``: the same small dense MLP (built here from one set of seeded
  weights) exported to ONNX, a TensorFlow SavedModel and TorchScript, loaded
  through navi's own runtime plugins (``navi.plugins.resolve_runtime``) and
  run at several batch sizes. A framework that is not installed is skipped
  with a note.
* ``home``: BPR converter plus ONNX Runtime on a home-layout model, the loop a
  server runs for every batch (validate and count rows, allocate, convert,
  run). This is the ceiling serving cannot beat. The runtime alone on the same
  converted inputs is measured next to it, so the converter's share shows.

Every measurement is repeated; repeats are interleaved over the cases (repeat
outermost) so drift on a shared machine spreads over all of them, and the
median and min over repeats are reported.
"""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from navi.bench.stats import repeat_summary
from navi.plugins.base import synthetic_inputs

#: the small dense model: features in, hidden widths, one output
DENSE_FEATURES = 64
DENSE_HIDDEN = (128, 64)
DENSE_INPUT = "x"
DENSE_OUTPUT = "output_0"


def dense_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (weight, bias) pairs of the dense MLP, shared by every export."""
    rng = np.random.default_rng(seed)
    widths = (DENSE_FEATURES, *DENSE_HIDDEN, 1)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.01).astype(np.float32),
        )
        for a, b in zip(widths[:-1], widths[1:])
    ]


def reference_output(x: np.ndarray, weights) -> np.ndarray:
    """The dense MLP in numpy (ReLU hidden layers, sigmoid output)."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return 1.0 / (1.0 + np.exp(-h))


def export_onnx(version_dir: Path, weights) -> None:
    """Write the dense MLP as ``model.onnx`` (built with the onnx helper)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    current = DENSE_INPUT
    for i, (w, b) in enumerate(weights):
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        last = i == len(weights) - 1
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]))
        out = DENSE_OUTPUT if last else f"h{i}"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"z{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "navi_bench_dense",
        [helper.make_tensor_value_info(DENSE_INPUT, TensorProto.FLOAT, ["batch", DENSE_FEATURES])],
        [helper.make_tensor_value_info(DENSE_OUTPUT, TensorProto.FLOAT, ["batch", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(version_dir / "model.onnx"))


def export_tf(version_dir: Path, weights) -> None:
    """Write the dense MLP as a TensorFlow SavedModel (a tf.Module, ``serving_default``)."""
    import tensorflow as tf

    class DenseMlp(tf.Module):
        def __init__(self):
            super().__init__()
            self.layers = [(tf.constant(w), tf.constant(b)) for w, b in weights]

        @tf.function(input_signature=[tf.TensorSpec([None, DENSE_FEATURES], tf.float32, name=DENSE_INPUT)])
        def serve(self, x):
            h = x
            for i, (w, b) in enumerate(self.layers):
                h = tf.matmul(h, w) + b
                h = tf.nn.relu(h) if i < len(self.layers) - 1 else tf.sigmoid(h)
            return {DENSE_OUTPUT: h}

    module = DenseMlp()
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve.get_concrete_function()})


def export_torch(version_dir: Path, weights) -> None:
    """Write the dense MLP as TorchScript ``model.pt`` plus ``model.json`` naming its tensors."""
    import json

    import torch

    class DenseMlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for w, b in weights:
                layer = torch.nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    layer.weight.copy_(torch.from_numpy(w.T.copy()))
                    layer.bias.copy_(torch.from_numpy(b))
                self.layers.append(layer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = len(self.layers)
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < n - 1:
                    x = torch.relu(x)
            return torch.sigmoid(x)

    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(DenseMlp().eval()), str(version_dir / "model.pt"))
    (version_dir / "model.json").write_text(json.dumps({
        "inputs": [{"name": DENSE_INPUT, "dtype": "float32", "shape": [-1, DENSE_FEATURES]}],
        "outputs": [{"name": DENSE_OUTPUT, "dtype": "float32", "shape": [-1, 1]}],
    }, indent=2))


EXPORTERS: dict[str, Callable[[Path, list], None]] = {"onnx": export_onnx, "tf": export_tf, "torch": export_torch}


def export_all(dst_dir: Path, runtimes: Sequence[str], seed: int = 0) -> dict[str, str]:
    """Export the dense model for each runtime to ``dst_dir/<runtime>/dense/1``.

    Returns runtime -> "" when exported, or the reason it was skipped.
    """
    weights = dense_weights(seed)
    outcome: dict[str, str] = {}
    for name in runtimes:
        exporter = EXPORTERS.get(name)
        if exporter is None:
            outcome[name] = "no exporter for this runtime in the benchmark"
            continue
        try:
            exporter(Path(dst_dir) / name / "dense" / "1", weights)
            outcome[name] = ""
        except Exception as error:  # a missing framework is a skip with its reason
            outcome[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return outcome


def _settings(name: str, runtime: str, model_dir: Path, threads: int):
    from navi.settings import ModelSettings

    # inputs/outputs empty: take the model's own names; no BPR converter in the runtime
    return ModelSettings(name=name, model_dir=model_dir, runtime=runtime, inputs=(), outputs=(),
                         intra_op_parallelism=threads, inter_op_parallelism=1, converter="none")


@dataclass
class Case:
    """One measurable loop: ``step()`` processes one batch of ``rows`` rows."""

    case: str
    runtime: str
    batch_rows: int
    threads: int
    step: Callable[[], object]
    note: str = ""


def measure(step: Callable[[], object], min_time_s: float, callers: int = 1) -> tuple[int, float]:
    """Run ``step`` from ``callers`` threads until ``min_time_s`` passed; return (calls, seconds)."""
    deadline = time.monotonic() + min_time_s
    counts = [0] * callers

    def loop(slot: int) -> None:
        n = 0
        while True:
            step()
            n += 1
            if time.monotonic() >= deadline:
                break
        counts[slot] = n

    start = time.monotonic()
    if callers == 1:
        loop(0)
    else:
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(counts), time.monotonic() - start


def _tf_threads(threads: int) -> None:
    """Size TensorFlow's pools before the export initializes them (they cannot change later)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialized by an earlier use in this process
        pass


def dense_cases(runtimes: Sequence[str], batch_rows: Sequence[int], threads: int, workdir: Path, seed: int,
                log: Callable[[str], None]) -> tuple[list[Case], list[dict], list]:
    """Export the dense model per runtime, load it through navi's plugin, and build the cases.

    Returns the cases, notes for skipped runtimes, and the loaded models (to
    close afterwards). Each loaded model's answer is checked against numpy.
    """
    from navi.plugins import resolve_runtime

    weights = dense_weights(seed)
    rng = np.random.default_rng(seed)
    inputs = {rows: rng.standard_normal((rows, DENSE_FEATURES)).astype(np.float32) for rows in batch_rows}
    cases: list[Case] = []
    skipped: list[dict] = []
    loaded = []
    for name in runtimes:
        if name not in EXPORTERS:
            skipped.append({"runtime": name, "note": "no exporter for this runtime in the benchmark"})
            continue
        try:
            runtime = resolve_runtime(name)
            model_dir = workdir / f"dense_{name}"
            version_dir = model_dir / "1"
            if name == "tf":
                _tf_threads(threads)
            EXPORTERS[name](version_dir, weights)
            model = runtime.load(version_dir, _settings(f"dense_{name}", name, model_dir, threads))
        except Exception as error:  # a framework that is missing or broken is skipped, said so
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            skipped.append({"runtime": name, "note": f"skipped: {message}"})
            log(f"runtime {name}: skipped ({message})")
            continue
        loaded.append(model)
        model.run(synthetic_inputs(model.signature.inputs))
        probe = inputs[batch_rows[0]]
        got = np.asarray(model.run({DENSE_INPUT: probe})[DENSE_OUTPUT])
        if not np.allclose(got.reshape(-1), reference_output(probe, weights).reshape(-1), atol=1e-4):
            raise RuntimeError(f"runtime {name}: dense model answers differ from the numpy reference")
        for rows in batch_rows:
            feed = {DENSE_INPUT: inputs[rows]}
            cases.append(Case("dense", name, rows, threads, lambda m=model, f=feed: m.run(f)))
    return cases, skipped, loaded


def home_cases(model_dir: Path | None, bprs_per_batch: Sequence[int], candidates: int, threads: int,
               workdir: Path, seed: int) -> tuple[list[Case], list]:
    """Converter + ONNX Runtime on a home model, and the runtime alone on converted inputs."""
    from navi import segdense, workload
    from navi.converter import BprConverter
    from navi.plugins import resolve_runtime

    if model_dir is None:
        from navi import demo

        version_dir = demo.write_home_version(workdir / "home", seed=seed)
    else:
        model_dir = Path(model_dir)
        # a model dir (holding versions) or a version dir itself
        versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and (p / "model.onnx").exists()),
                          key=lambda p: p.name)
        version_dir = versions[-1] if versions and not (model_dir / "model.onnx").exists() else model_dir
    found = segdense.find_spec_files(version_dir)
    if found is None:
        raise ValueError(f"{version_dir}: no segdense spec files next to the model")
    layout = segdense.load_layout(*found)
    converter = BprConverter(layout)
    model = resolve_runtime("onnx").load(version_dir, _settings("home", "onnx", version_dir.parent, threads))
    model.run(synthetic_inputs(model.signature.inputs))
    model_inputs = [spec.name for spec in model.signature.inputs]
    records = workload.make_bprs(layout, max(bprs_per_batch), candidates, seed)
    cases: list[Case] = []
    for n_bprs in bprs_per_batch:
        payloads = records[:n_bprs]
        rows = n_bprs * candidates

        def convert_and_run(p=payloads) -> object:
            # what the server does per batch: validate + count, allocate, convert, run
            counts = converter.count_rows(p)
            out = layout.allocate(int(counts.sum()))
            converter.convert_into(p, out)
            return model.run({name: out[name] for name in model_inputs})

        converted = converter.convert(payloads)
        feed = {name: converted[name] for name in model_inputs}
        cases.append(Case("home convert+run", "onnx", rows, threads, convert_and_run,
                          note=f"{n_bprs} BPR x {candidates} candidates"))
        cases.append(Case("home run only", "onnx", rows, threads, lambda f=feed: model.run(f),
                          note="pre-converted inputs"))
        cases.append(Case("home convert only", "-", rows, threads, lambda p=payloads: converter.convert(p),
                          note="count + allocate + convert"))
    return cases, [model]


def run_runtime_bench(
    runtimes: Sequence[str] = ("onnx", "tf", "torch"),
    batch_rows: Sequence[int] = (1, 16, 128),
    threads: int = 1,
    repeats: int = 5,
    min_time_s: float = 0.5,
    home: bool = True,
    home_model_dir: Path | None = None,
    home_bprs_per_batch: Sequence[int] = (1, 4, 16),
    candidates: int = 100,
    callers: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = lambda text: None,
) -> dict[str, object]:
    """Measure every case ``repeats`` times (interleaved) and return the result document.

    ``callers`` threads call each case's step at once (the server runs
    several batches in flight); ``threads`` is each runtime's intra-op pool.
    """
    from navi.bench.machine import machine_info

    started = datetime.now(timezone.utc)
    loaded: list = []
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="navi-bench-runtime-") as tmp:
        workdir = Path(tmp)
        try:
            cases: list[Case] = []
            if runtimes:
                dense, skipped, models = dense_cases(runtimes, batch_rows, threads, workdir, seed, log)
                cases += dense
                loaded += models
            if home:
                home_list, models = home_cases(home_model_dir, home_bprs_per_batch, candidates, threads, workdir,
                                               seed)
                cases += home_list
                loaded += models
            for case in cases:  # one untimed pass: first-call allocations and JIT out of the way
                case.step()
            rates: dict[int, list[float]] = {i: [] for i in range(len(cases))}
            batch_s: dict[int, list[float]] = {i: [] for i in range(len(cases))}
            for repeat in range(repeats):
                log(f"repeat {repeat + 1}/{repeats}")
                for index, case in enumerate(cases):
                    calls, seconds = measure(case.step, min_time_s, callers)
                    rates[index].append(calls * case.batch_rows / seconds)
                    batch_s[index].append(seconds * callers / calls * 1e3)
        finally:
            for model in loaded:
                try:
                    model.close()
                except Exception:  # closing is best effort; the numbers are already taken
                    pass
    results = []
    for index, case in enumerate(cases):
        results.append({
            "case": case.case,
            "runtime": case.runtime,
            "batch_rows": case.batch_rows,
            "threads": case.threads,
            "callers": callers,
            "rows_per_s": repeat_summary(rates[index]),
            "batch_ms": repeat_summary(batch_s[index]),
            "note": case.note,
        })
    for skip in skipped:
        results.append({"case": "dense", "runtime": skip["runtime"], "batch_rows": 0, "threads": threads,
                         "callers": callers, "rows_per_s": None, "batch_ms": {}, "note": skip["note"]})
    return {
        "schema": "navi.bench.runtime/1",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"batch_rows": list(batch_rows), "threads": threads, "callers": callers, "repeats": repeats,
                     "min_time_s": min_time_s, "candidates": candidates,
                     "home_bprs_per_batch": list(home_bprs_per_batch) if home else []},
        "results": results,
    }


def _isolated_runtime_bench(kwargs: dict) -> dict:
    """Child-process entry of ``run_runtime_bench_isolated`` (logs to stderr)."""
    import sys

    return run_runtime_bench(**kwargs, log=lambda text: print(text, file=sys.stderr, flush=True))


def run_runtime_bench_isolated(**kwargs) -> dict:
    """``run_runtime_bench`` in a spawned child process.

    TensorFlow's and torch's process-wide thread pools (fixed at first use)
    and their memory then stay out of the process that drives the daemons'
    load, and every framework starts from the same settings.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_isolated_runtime_bench, kwargs).result()


def run_daemon_bench(
    runtimes: Sequence[str] = ("onnx", "tf", "torch"),
    batch_rows: Sequence[int] = (1, 16, 128),
    threads: int = 1,
    concurrency: int = 8,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    repeats: int = 1,
    client_processes: int | None = None,
    log_dir: Path | None = None,
    log: Callable[[str], None] = lambda text: None,
    on_event: Callable[[str, dict], None] | None = None,
) -> dict[str, object]:
    """The dense model through the daemon: one `navi serve --runtime <rt>` per runtime, loaded together.

    Each daemon serves the model as "dense"; for each batch size the daemons
    are the targets of one interleaved `bench serve` run at ``concurrency``.
    Returns ``{"runs": [...], "skipped": [...], "commands": {...}}``; every run
    record carries its ``batch_rows``. A runtime whose export or daemon fails
    is skipped with the reason.
    """
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    from navi.bench import requests, serve, servers, workloads
    from navi.bench.loadgen import ClientPool

    processes, targets, skipped = [], [], []
    commands: dict[str, list[str]] = {}
    result: dict = {"runs": [], "skipped": skipped, "commands": commands, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="navi-bench-daemons-") as tmp:
        # exported in a child: the frameworks' thread pools and memory stay out of the load driver
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            exported = child.submit(export_all, Path(tmp), list(runtimes)).result()
        try:
            for name in runtimes:
                if exported.get(name):
                    skipped.append({"runtime": name, "note": f"export failed: {exported[name]}"})
                    log(f"runtime {name}: skipped ({exported[name]})")
                    continue
                port = servers.free_port()
                command = [sys.executable, "-m", "navi.cli.main", "serve", "--port", str(port), "--host",
                           "127.0.0.1", "--prometheus-port", "0", "--rest-api-port", "0", "--runtime", name,
                           "--model-dir", str(Path(tmp) / name / "dense"),
                           "--input", "", "--output", "", "--intra-op-parallelism", str(threads)]
                commands[name] = command
                try:
                    process = servers.launch_server(command, f"127.0.0.1:{port}",
                                                  log_path=(Path(log_dir) / f"navi-serve-{name}.log") if log_dir else None)
                except (RuntimeError, TimeoutError) as error:
                    skipped.append({"runtime": name, "note": f"daemon did not start: {error}"})
                    log(f"runtime {name}: daemon did not start ({error})")
                    continue
                processes.append(process)
                targets.append(serve.Target(name, f"127.0.0.1:{port}", process.pid))
            if not targets:
                return result
            inputs = requests.fetch_inputs(targets[0].address, "dense", "tfserving")
            with ClientPool(client_processes) as pool:
                for rows in batch_rows:
                    workload = workloads.dense_workload("tfserving", "dense", inputs, batch_rows=rows)
                    config = serve.ServeBenchConfig(targets=targets, concurrencies=[concurrency],
                                                    duration_s=duration_s, warmup_s=warmup_s, repeats=repeats,
                                                    client_processes=pool.processes)
                    log(f"through the daemon: {rows} rows per request, c={concurrency}")
                    run = serve.run_serve_bench(config, workload, pool=pool, on_event=on_event)
                    for record in run["runs"]:
                        record["batch_rows"] = rows
                    result["runs"] += run["runs"]
        finally:
            for process in processes:
                servers.stop_server(process)
    return result
