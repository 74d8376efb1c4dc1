#!/usr/bin/env python
"""The runtime benchmark behind benchmarks/RESULTS.md (issue 5, section 5).

A thin wrapper over ``navi.bench.runtime``: the same small dense MLP exported
to ONNX, a TensorFlow SavedModel and TorchScript, measured

* in-process through navi's runtime plugins at batch rows 1, 16 and 128, with
  the converter + ONNX Runtime home case (`navi bench runtime`), in a child
  process so the frameworks' thread pools stay out of the load driver; and
* through the daemon: one `navi serve --runtime <rt>` per runtime, all serving
  the model as "dense", loaded together (interleaved) at the same batch rows.

Writes OUT/runtime.json and OUT/runtime.md (the RESULTS.md section) and prints
the tables. A framework that is missing is skipped with a note.

Usage: python benchmarks/bench_runtime.py [--out out/bench] [--runtimes onnx,tf,torch]
       [--batch-rows 1,16,128] [--concurrency 8] [--duration 10] [--no-daemon]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

    from navi.bench import report, runtime

    console = report.make_console()
    args.out.mkdir(parents=True, exist_ok=True)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    batch_rows = [int(r) for r in args.batch_rows.split(",") if r.strip()]

    console.print("[bold]in-process[/] (navi runtime plugins, one caller)")
    document = runtime.run_runtime_bench_isolated(runtimes=runtimes, batch_rows=batch_rows, threads=args.threads,
                                                  repeats=args.repeats, min_time_s=args.min_time_s,
                                                  home=not args.no_home)
    console.print(report.runtime_table(document))
    if not args.no_daemon:
        document["daemon"] = runtime.run_daemon_bench(
            runtimes, batch_rows, threads=args.threads, concurrency=args.concurrency, duration_s=args.duration,
            warmup_s=args.warmup_s, repeats=args.daemon_repeats, log_dir=args.out,
            log=lambda text: console.print(text, style="bold"),
            on_event=lambda kind, data: console.print(report.run_line(data)) if kind == "done" else None)
        for rows in batch_rows:
            runs = [r for r in document["daemon"]["runs"] if r["batch_rows"] == rows]
            if runs:
                console.print(f"through the daemon, {rows} rows per request")
                console.print(*report.serve_tables(
                    {"runs": runs, "workload": {"description": f"dense model, {rows} rows per request"}}))
    command = shlex.join(["python", "benchmarks/bench_runtime.py", *(sys.argv[1:] if argv is None else argv)])
    document["command"] = command
    report.write_json(document, args.out / "runtime.json")
    (args.out / "runtime.md").write_text(report.runtime_suite_markdown(document, command))
    console.print(f"wrote {args.out / 'runtime.json'} and {args.out / 'runtime.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
