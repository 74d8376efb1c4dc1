#!/usr/bin/env python
"""The runtime benchmark behind benchmarks/RESULTS.md (issue 5, section 5).

The same small dense MLP, exported to ONNX, a TensorFlow SavedModel and
TorchScript (``navi.bench.runtime``), measured

* in-process through navi's runtime plugins at batch rows 1, 16 and 128
  (`navi bench runtime`), with the converter + ONNX Runtime home case; and
* through the daemon: one `navi serve --runtime <rt>` subprocess per runtime,
  each serving the model as "dense", loaded together (interleaved) by the
  multi-process client at the same batch rows.

Writes OUT/runtime.json and prints the tables. A framework that is missing is
skipped with a note.

Usage: python benchmarks/bench_runtime.py [--out out/bench] [--runtimes onnx,tf,torch]
       [--batch-rows 1,16,128] [--concurrency 8] [--duration 10] [--no-daemon]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--runtimes", default="onnx,tf,torch")
    parser.add_argument("--batch-rows", default="1,16,128")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, in-process and in the daemon")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time-s", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop callers against each daemon")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--daemon-repeats", type=int, default=1)
    parser.add_argument("--no-daemon", action="store_true", help="in-process figures only")
    parser.add_argument("--no-home", action="store_true", help="skip the converter + runtime home case")
    args = parser.parse_args(argv)

    # no ML framework is imported in this process (see the in-process step)
    from navi.bench import report, runtime, serve
    from navi.bench.loadgen import ClientPool

    console = report.make_console()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    batch_rows = [int(r) for r in args.batch_rows.split(",") if r.strip()]

    console.print("[bold]in-process[/] (navi runtime plugins, one caller)")
    # In a child process: TensorFlow's own protos and navi's generated ones
    # cannot live in one process (same .proto file names), and the parent
    # needs navi's to talk to the daemons. It also keeps TF's thread pools out.
    inprocess_json = out / "runtime-inprocess.json"
    command = [sys.executable, "-m", "navi.cli.main", "bench", "runtime", "--runtimes", ",".join(runtimes),
               "--batch-rows", ",".join(map(str, batch_rows)), "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--min-time-s", str(args.min_time_s),
               "--home" if not args.no_home else "--no-home", "--json", str(inprocess_json)]
    subprocess.run(command, check=True)
    in_process = json.loads(inprocess_json.read_text())
    document: dict = {"schema": "navi.bench.runtime-suite/1", "machine": serve.machine_info(),
                      "commands": {"bench": sys.argv, "in_process": command}, "in_process": in_process,
                      "daemon": {}}

    if not args.no_daemon:
        document["daemon"] = through_daemon(args, runtimes, batch_rows, console, serve, report, runtime, ClientPool)
    report.write_json(document, out / "runtime.json")
    (out / "runtime.md").write_text(markdown(document))
    console.print(f"wrote {out / 'runtime.json'} and {out / 'runtime.md'}")
    return 0


def markdown(document: dict) -> str:
    """The RESULTS.md section of one run: commands, machine, date, both tables."""
    import shlex
    from datetime import datetime, timezone

    from navi.bench import report

    parts = [
        "## Runtimes (benchmarks/bench_runtime.py)\n",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}",
        f"- machine: {report.machine_line(document)}",
        f"- command: `{shlex.join(['python', *document['commands']['bench']])}`\n",
        "### In-process (navi runtime plugins)\n",
        report.runtime_markdown(document["in_process"]),
    ]
    daemon = document.get("daemon") or {}
    for rows in sorted({r["batch_rows"] for r in daemon.get("runs", [])}):
        parts.append(f"### Through the daemon, {rows} rows per request\n")
        parts.append(report.serve_markdown({"runs": [r for r in daemon["runs"] if r["batch_rows"] == rows]}))
    for skip in daemon.get("skipped", []):
        parts.append(f"- {skip['runtime']}: {skip['note']}")
    return "\n".join(parts) + "\n"


def through_daemon(args, runtimes, batch_rows, console, serve, report, runtime, ClientPool) -> dict:
    """Serve the dense model with each runtime (one daemon each) and load them together."""
    import tempfile

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    processes, targets, skipped = [], [], []
    result: dict = {"runs": [], "skipped": skipped}
    with tempfile.TemporaryDirectory(prefix="navi-bench-daemons-") as tmp:
        # exported in a child: importing TensorFlow here would break navi's protos in this process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            exported = child.submit(runtime.export_all, Path(tmp), runtimes).result()
        try:
            for name in runtimes:
                model_dir = Path(tmp) / name / "dense"
                if exported.get(name):
                    skipped.append({"runtime": name, "note": f"export failed: {exported[name]}"})
                    console.print(f"runtime {name}: skipped ({exported[name]})")
                    continue
                port = _free_port()
                command = [sys.executable, "-m", "navi.cli.main", "serve", "--port", str(port), "--host",
                           "127.0.0.1", "--prometheus-port", "0", "--runtime", name, "--model-dir", str(model_dir),
                           "--input", "", "--output", "", "--intra-op-parallelism", str(args.threads)]
                try:
                    process = serve.launch_server(command, f"127.0.0.1:{port}",
                                                  log_path=args.out / f"navi-serve-{name}.log")
                except (RuntimeError, TimeoutError) as error:
                    skipped.append({"runtime": name, "note": f"daemon did not start: {error}"})
                    console.print(f"runtime {name}: daemon did not start ({error})")
                    continue
                processes.append(process)
                targets.append(serve.Target(name, f"127.0.0.1:{port}", process.pid))
            if not targets:
                return result
            inputs = serve.fetch_inputs(targets[0].address, "dense", "tfserving")
            with ClientPool() as pool:
                for rows in batch_rows:
                    workload = serve.dense_workload("tfserving", "dense", inputs, batch_rows=rows)
                    config = serve.ServeBenchConfig(targets=targets, concurrencies=[args.concurrency],
                                                    duration_s=args.duration, warmup_s=args.warmup_s,
                                                    repeats=args.daemon_repeats, client_processes=pool.processes)
                    console.print(f"[bold]through the daemon[/]: {rows} rows per request, c={args.concurrency}")
                    run = serve.run_serve_bench(
                        config, workload, pool=pool,
                        on_event=lambda kind, data: console.print(report.run_line(data)) if kind == "done" else None)
                    for record in run["runs"]:
                        record["batch_rows"] = rows
                    result["runs"] += run["runs"]
                    for table in report.serve_tables(run):
                        console.print(table)
        finally:
            for process in processes:
                serve.stop_server(process)
    return result


if __name__ == "__main__":
    sys.exit(main())
