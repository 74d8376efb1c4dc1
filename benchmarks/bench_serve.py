#!/usr/bin/env python
"""The serving benchmark behind benchmarks/RESULTS.md (issue 3, section 8).

In one run, on this machine:

* starts `navi serve` (subprocess) with three models: the heavy home model
  (MLP 1024-512-256 over the home layout, built deterministically by
  ``navi.demo`` and cached), the small demo home model, and the dense demo
  model;
* starts the bare transport server (`navi bench bare-server`, subprocess): a
  sync gRPC server answering constant bytes without parsing;
* loads both, interleaved, with the multi-process client of ``navi.bench``:
  (a) 100-candidate BPR requests (about 1.3 MB) on the heavy model,
  (b) the same requests on the small model, (c) tiny dense requests;
* measures the in-process ceiling: BPR converter plus ONNX Runtime in a loop
  on the heavy and the small model with the server's threads (intra-op 1, two
  batches in flight) at 1, 4 and 16 BPRs per batch;
* writes everything to OUT/serve.json, one plot per phase, and prints the
  table and the three "done when" ratios of the issue.

Usage: python benchmarks/bench_serve.py [--out out/bench] [--duration 10]
       [--concurrency 1,4,16] [--tiny-concurrency 1,8,32] [--repeats 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _latest_version(model_dir: Path) -> Path:
    """The newest version directory of a model (numeric names compared as numbers)."""
    versions = [p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,4,16", help="closed-loop levels for the BPR phases")
    parser.add_argument("--tiny-concurrency", default="1,8,32", help="closed-loop levels for tiny requests")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--client-processes", type=int, default=None)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--ceiling-min-time-s", type=float, default=1.0)
    parser.add_argument("--ceiling-repeats", type=int, default=3)
    parser.add_argument("--phases", default="heavy,small,tiny", help="subset of heavy,small,tiny")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `navi serve` (repeatable), e.g. --server-arg=--max-batch-size=32")
    args = parser.parse_args(argv)

    from navi import demo
    from navi.bench import report, runtime, serve
    from navi.bench.loadgen import ClientPool
    console = report.make_console()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]

    heavy_dir = demo.ensure_heavy_model(out / "models")
    small_dir = REPO / "models" / "home"
    dense_dir = REPO / "models" / "dense"
    navi_port, bare_port = _free_port(), _free_port()
    navi_cmd = [sys.executable, "-m", "navi.cli.main", "serve", "--port", str(navi_port), "--host", "127.0.0.1",
                "--prometheus-port", "0",
                "--model-dir", str(heavy_dir), "--model-dir", str(small_dir), "--model-dir", str(dense_dir),
                "--input", "examples", "--input", "examples", "--input", "",
                "--output", "", *args.server_arg]
    bare_cmd = [sys.executable, "-m", "navi.cli.main", "bench", "bare-server", "--port", str(bare_port),
                "--rows", "1"]
    document: dict = {"schema": "navi.bench.serve-suite/1", "machine": serve.machine_info(),
                      "commands": {"navi": navi_cmd, "bare": bare_cmd, "bench": sys.argv}, "phases": {}}

    console.print("[bold]in-process ceiling[/] (converter + ONNX Runtime, intra-op 1, 2 batches in flight)")
    ceilings = {}
    for phase, model_dir in (("heavy", heavy_dir), ("small", small_dir)):
        if phase not in phases:
            continue
        result = runtime.run_runtime_bench(runtimes=[], home=True, home_model_dir=model_dir,
                                           home_bprs_per_batch=(1, 4, 16), candidates=args.candidates,
                                           threads=1, callers=2, repeats=args.ceiling_repeats,
                                           min_time_s=args.ceiling_min_time_s)
        console.print(report.runtime_table(result))
        best = max((r for r in result["results"] if r["case"] == "home convert+run"),
                   key=lambda r: r["rows_per_s"]["median"])
        ceilings[phase] = {"rows_per_s": best["rows_per_s"]["median"], "batch_rows": best["batch_rows"],
                           "results": result["results"]}
    document["ceilings"] = ceilings

    console.print("starting servers ...")
    navi_proc = serve.launch_server(navi_cmd, f"127.0.0.1:{navi_port}", health_service="",
                                    log_path=out / "navi-serve.log")
    bare_proc = serve.launch_server(bare_cmd, f"127.0.0.1:{bare_port}", health_service=None,
                                    log_path=out / "bare-server.log")
    # bare first: the ratio tables then read "navi / bare" (req/s < 1 and p50 > 1 mean navi is slower)
    targets = [serve.Target("bare", f"127.0.0.1:{bare_port}", bare_proc.pid),
               serve.Target("navi", f"127.0.0.1:{navi_port}", navi_proc.pid)]
    try:
        with ClientPool(args.client_processes) as pool:
            for phase in phases:
                if phase == "tiny":
                    inputs = serve.fetch_inputs(f"127.0.0.1:{navi_port}", "dense", "tfserving")
                    workload = serve.dense_workload("tfserving", "dense", inputs, batch_rows=1)
                    levels = _ints(args.tiny_concurrency)
                else:
                    model = heavy_dir.name if phase == "heavy" else small_dir.name
                    model_dir = heavy_dir if phase == "heavy" else small_dir
                    workload = serve.home_workload("tfserving", model, candidates=args.candidates,
                                                   spec_dir=_latest_version(model_dir))
                    levels = _ints(args.concurrency)
                config = serve.ServeBenchConfig(targets=targets, concurrencies=levels, duration_s=args.duration,
                                                warmup_s=args.warmup_s, repeats=args.repeats,
                                                client_processes=pool.processes)
                console.print(f"[bold]phase {phase}[/]: {workload.description}, "
                              f"{workload.mean_request_bytes / 1024:,.0f} KiB per request")
                result = serve.run_serve_bench(
                    config, workload, pool=pool,
                    on_event=lambda kind, data: console.print(report.run_line(data)) if kind == "done" else None)
                for table in report.serve_tables(result):
                    console.print(table)
                report.write_serve_plot(result, out / f"serve-{phase}.png")
                result["summary"] = report.summarize_runs(result["runs"])
                result["comparisons"] = report.comparisons(result["runs"])
                document["phases"][phase] = result
    finally:
        serve.stop_server(navi_proc)
        serve.stop_server(bare_proc)

    document["criteria"] = criteria(document)
    for line in document["criteria"]["lines"]:
        console.print(line)
    report.write_json(document, out / "serve.json")
    (out / "serve.md").write_text(markdown(document))
    console.print(f"wrote {out / 'serve.json'}, {out / 'serve.md'} and {out}/serve-*.png")
    return 0


def markdown(document: dict) -> str:
    """The RESULTS.md section of one suite run: commands, machine, date, tables, criteria."""
    import shlex
    from datetime import datetime, timezone

    from navi.bench import report

    commands = document["commands"]
    parts = [
        "## Serving (benchmarks/bench_serve.py)\n",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='minutes')}",
        f"- machine: {report.machine_line(document)}",
        f"- command: `{shlex.join(['python', *commands['bench']])}`",
        # shown as the console script (the script runs them as `python -m navi.cli.main`)
        f"- navi: `{shlex.join(['navi', *commands['navi'][3:]])}`",
        f"- bare transport server: `{shlex.join(['navi', *commands['bare'][3:]])}`\n",
    ]
    for phase, ceiling in document.get("ceilings", {}).items():
        parts.append(f"### In-process ceiling, {phase} model (converter + ONNX Runtime, intra-op 1, 2 in flight)\n")
        parts.append(report.runtime_markdown({"results": ceiling["results"]}))
    for phase, result in document.get("phases", {}).items():
        parts.append(f"### {phase}: {result['workload']['description']}, "
                     f"{result['workload']['mean_request_bytes'] / 1024:,.1f} KiB per request\n")
        parts.append(report.serve_markdown(result))
    if document.get("criteria", {}).get("lines"):
        parts.append("### Criteria\n")
        parts += [f"- {line}" for line in document["criteria"]["lines"]]
    return "\n".join(parts) + "\n"


def criteria(document: dict) -> dict:
    """The issue's "done when" ratios from a suite document."""
    def rows(phase: str, target: str) -> list[dict]:
        result = document["phases"].get(phase)
        return [r for r in (result or {}).get("summary", []) if r["target"] == target]

    out: dict = {"lines": []}
    heavy = rows("heavy", "navi")
    if heavy and "heavy" in document.get("ceilings", {}):
        best = max(heavy, key=lambda r: r["rows_per_s"] or 0)
        ceiling = document["ceilings"]["heavy"]["rows_per_s"]
        out["heavy_vs_ceiling"] = best["rows_per_s"] / ceiling
        out["lines"].append(f"(a) heavy BPR serving {best['rows_per_s']:,.0f} rows/s at c={best['concurrency']} "
                            f"= {out['heavy_vs_ceiling']:.2f}x the in-process ceiling {ceiling:,.0f} rows/s "
                            f"(target >= 0.8x)")
    small, small_bare = rows("small", "navi"), rows("small", "bare")
    if small and small_bare:
        best = max(small, key=lambda r: r["requests_per_s"] or 0)
        best_bare = max(small_bare, key=lambda r: r["requests_per_s"] or 0)
        out["small_vs_bare"] = best["requests_per_s"] / best_bare["requests_per_s"]
        out["lines"].append(f"(b) small BPR serving {best['requests_per_s']:,.0f} req/s vs bare "
                            f"{best_bare['requests_per_s']:,.0f} req/s = {out['small_vs_bare']:.2f}x (target >= 0.8x)")
    tiny, tiny_bare = rows("tiny", "navi"), rows("tiny", "bare")
    if tiny and tiny_bare:
        ratios = {}
        for row in tiny:
            bare = next((b for b in tiny_bare if b["concurrency"] == row["concurrency"]), None)
            if bare:
                ratios[row["concurrency"]] = row["latency_ms"]["p50"] / bare["latency_ms"]["p50"]
        out["tiny_p50_vs_bare"] = ratios
        text = ", ".join(f"c={c}: {r:.2f}x" for c, r in ratios.items())
        out["lines"].append(f"(c) tiny requests p50 vs bare: {text} (target <= 1.5x)")
    return out


if __name__ == "__main__":
    sys.exit(main())
