#!/usr/bin/env python
"""The serving benchmark behind benchmarks/RESULTS.md (issue 3, section 8).

A thin wrapper over ``benchmarks/serve_suite.py``'s ``run_serve_suite``. In one run:

* the in-process ceiling: BPR converter plus ONNX Runtime in a loop on the
  heavy and the small home model with the server's threads (intra-op 1, two
  batches in flight) at 1, 4 and 16 BPRs per batch;
* `navi serve` (subprocess) with the heavy home model (MLP 1024-512-256 over
  the home layout, built deterministically by ``navi.demo`` and cached), the
  small demo home model and the dense demo model, and the bare transport
  server (`navi bench bare-server`: sync gRPC, constant bytes, no parsing);
* both loaded, interleaved, by the multi-process client: (a) 100-candidate
  BPR requests (about 1.3 MB) on the heavy model, (b) the same on the small
  model, (c) one-row dense requests.

Writes OUT/serve.json, OUT/serve.md (the RESULTS.md section: command, machine,
date, ratios beside the figures), OUT/serve-<phase>.png, and prints the
tables and the issue's three criteria.

Usage: python benchmarks/bench_serve.py [--out out/bench] [--duration 10]
       [--concurrency 1,4,16] [--tiny-concurrency 1,8,32] [--repeats 1]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
    parser.add_argument("--heavy-rounds", type=int, default=3,
                        help="heavy-phase rounds, the ceiling measured between them (1 = one run, ceiling before/after)")
    parser.add_argument("--phases", default="heavy,small,tiny", help="subset of heavy,small,tiny")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `navi serve` (repeatable), e.g. --server-arg=--max-batch-size=32")
    args = parser.parse_args(argv)

    from navi.bench import report

    import serve_suite

    console = report.make_console()
    args.out.mkdir(parents=True, exist_ok=True)
    document = serve_suite.run_serve_suite(
        REPO / "models", args.out,
        phases=[p.strip() for p in args.phases.split(",") if p.strip()],
        concurrencies=_ints(args.concurrency), tiny_concurrencies=_ints(args.tiny_concurrency),
        duration_s=args.duration, warmup_s=args.warmup_s, repeats=args.repeats,
        client_processes=args.client_processes, candidates=args.candidates,
        ceiling_min_time_s=args.ceiling_min_time_s, ceiling_repeats=args.ceiling_repeats,
        heavy_rounds=args.heavy_rounds,
        server_args=args.server_arg,
        log=lambda text: console.print(text, style="bold"),
        on_event=lambda kind, data: console.print(report.run_line(data)) if kind == "done" else None,
    )
    for phase, ceiling in document["ceilings"].items():
        console.print(f"in-process ceiling, {phase} model")
        console.print(report.runtime_table({"results": ceiling["results"]}))
    for phase, result in document["phases"].items():
        console.print(*report.serve_tables(result))
        report.write_serve_plot(result, args.out / f"serve-{phase}.png")
    for line in document["criteria"]["lines"]:
        console.print(line)
    command = shlex.join(["python", "benchmarks/bench_serve.py", *(sys.argv[1:] if argv is None else argv)])
    document["commands"]["bench"] = command
    report.write_json(document, args.out / "serve.json")
    (args.out / "serve.md").write_text(serve_suite.serve_suite_markdown(document, command))
    console.print(f"wrote {args.out / 'serve.json'}, {args.out / 'serve.md'} and {args.out}/serve-*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
