"""The serving suite behind benchmarks/RESULTS.md: navi vs the bare transport server vs the in-process ceiling.

Run by ``benchmarks/bench_serve.py``; project acceptance code, not part of
the installed package.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from navi.bench import report
from navi.bench.loadgen import ClientPool
from navi.bench.machine import machine_info
from navi.bench.requests import fetch_inputs
from navi.bench.serve import ServeBenchConfig, Target, run_serve_bench
from navi.bench.servers import free_port, launch_server, stop_server
from navi.bench.workloads import Workload, dense_workload, home_workload


def latest_version_dir(model_dir: Path) -> Path:
    """The newest version directory of a model (numeric names compared as numbers)."""
    versions = [p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ValueError(f"{model_dir}: no version directories")
    return max(versions, key=lambda p: int(p.name))


def run_serve_suite(
    models_dir: Path,
    work_dir: Path,
    phases: Sequence[str] = ("heavy", "small", "tiny"),
    concurrencies: Sequence[int] = (1, 4, 16),
    tiny_concurrencies: Sequence[int] = (1, 8, 32),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    repeats: int = 1,
    client_processes: int | None = None,
    candidates: int = 100,
    ceiling_min_time_s: float = 1.0,
    ceiling_repeats: int = 3,
    heavy_rounds: int = 3,
    server_args: Sequence[str] = (),
    log: Callable[[str], None] = lambda text: None,
    on_event: Callable[[str, dict], None] | None = None,
) -> dict[str, object]:
    """navi against the bare transport server, next to the in-process ceiling, in one run.

    ``models_dir`` holds the demo models (``home``, ``dense``); the heavy home
    model is built into ``work_dir/models`` once (``navi.demo``). Phases:
    "heavy" and "small" send 100-candidate BPR requests to the heavy / small
    home model, "tiny" sends one-row dense requests to the dense model. The
    ceiling (converter + ONNX Runtime with the server's threads: intra-op 1,
    two batches in flight) is measured before the servers start. The heavy
    phase runs in ``heavy_rounds`` rounds with the ceiling measured again
    (at its best batch size) between them, so each round's serving figure is
    compared with the ceiling of the same minutes: the machine's speed drifts
    more over a suite than the ratio being judged. Server logs go to
    ``work_dir``. Returns the suite document with ``criteria`` filled in.
    """
    import sys

    from navi import demo
    from navi.bench import runtime
    from navi.settings import default_grpc_threads

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    heavy_dir = demo.ensure_heavy_model(work_dir / "models")
    small_dir = Path(models_dir) / "home"
    dense_dir = Path(models_dir) / "dense"
    navi_port, bare_port = free_port(), free_port()
    # both servers get navi's default handler thread count: the bare server,
    # too, answers more with fewer threads, and the ceiling must be its best
    threads = str(default_grpc_threads())
    navi_cmd = [sys.executable, "-m", "navi.cli.main", "serve", "--port", str(navi_port), "--host", "127.0.0.1",
                "--prometheus-port", "0", "--rest-api-port", "0", "--grpc-threads", threads,
                "--model-dir", str(heavy_dir), "--model-dir", str(small_dir), "--model-dir", str(dense_dir),
                "--input", "examples", "--input", "examples", "--input", "", "--output", "", *server_args]
    bare_cmd = [sys.executable, "-m", "navi.cli.main", "bench", "bare-server", "--port", str(bare_port),
                "--rows", "1", "--threads", threads]
    document: dict = {"schema": "navi.bench.serve-suite/1", "machine": machine_info(),
                      "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "commands": {"navi": navi_cmd, "bare": bare_cmd}, "phases": {}, "ceilings": {}}

    def run_ceiling(model_dir: Path, bprs_per_batch: Sequence[int]) -> tuple[dict, dict]:
        """(best convert+run result, whole runtime-bench document) of the in-process loop."""
        result = runtime.run_runtime_bench(runtimes=[], home=True, home_model_dir=model_dir,
                                           home_bprs_per_batch=tuple(bprs_per_batch), candidates=candidates,
                                           threads=1, callers=2, repeats=ceiling_repeats,
                                           min_time_s=ceiling_min_time_s)
        best = max((r for r in result["results"] if r["case"] == "home convert+run"),
                   key=lambda r: r["rows_per_s"]["median"])
        return best, result

    def measure_ceilings(when: str) -> None:
        for phase, model_dir in (("heavy", heavy_dir), ("small", small_dir)):
            if phase not in phases:
                continue
            if when == "after" and phase == "heavy" and "heavy_rounds" in document:
                continue  # measured after every heavy round already, at its best batch size
            log(f"in-process ceiling {when}, {phase} model (converter + ONNX Runtime, intra-op 1, 2 batches in flight)")
            best, result = run_ceiling(model_dir, (1, 4, 16))
            if when == "before":
                document["ceilings"][phase] = {"rows_per_s": best["rows_per_s"]["median"],
                                               "batch_rows": best["batch_rows"], "results": result["results"]}
            else:
                # The machine's speed drifts over the minutes the servers run: the
                # ceiling is measured on both sides of them and the higher one counts.
                ceiling = document["ceilings"][phase]
                ceiling["rows_per_s_before"] = ceiling["rows_per_s"]
                ceiling["rows_per_s_after"] = best["rows_per_s"]["median"]
                ceiling["rows_per_s"] = max(ceiling["rows_per_s_before"], ceiling["rows_per_s_after"])

    def paired_heavy_rounds(config: ServeBenchConfig, workload: Workload, pool: ClientPool) -> tuple[dict, list]:
        """The heavy phase in rounds, the ceiling (its best batch size) measured between them."""
        bprs = max(1, round(document["ceilings"]["heavy"]["batch_rows"] / candidates))
        ceilings = [document["ceilings"]["heavy"]["rows_per_s"]]
        merged: dict | None = None
        rounds = []
        for round_index in range(heavy_rounds):
            result = run_serve_bench(config, workload, on_event=on_event, pool=pool)
            for run in result["runs"]:
                run["repeat"] = round_index
            if merged is None:
                merged = result
            else:
                merged["runs"].extend(result["runs"])
                merged["finished_at"] = result["finished_at"]
            log(f"in-process ceiling after heavy round {round_index + 1}/{heavy_rounds} ({bprs} BPR per batch)")
            ceilings.append(run_ceiling(heavy_dir, (bprs,))[0]["rows_per_s"]["median"])
            navi_runs = [r for r in result["runs"] if r["target"] == "navi"]
            best = max(navi_runs, key=lambda r: r["rows_per_s"] or 0)
            rounds.append({"ceiling_before": ceilings[-2], "ceiling_after": ceilings[-1],
                           "navi_rows_per_s": best["rows_per_s"], "concurrency": best.get("concurrency")})
        return merged, rounds

    measure_ceilings("before")

    log("starting navi and the bare server")
    navi_proc = launch_server(navi_cmd, f"127.0.0.1:{navi_port}", health_service="",
                              log_path=work_dir / "navi-serve.log")
    try:
        bare_proc = launch_server(bare_cmd, f"127.0.0.1:{bare_port}", health_service=None,
                                  log_path=work_dir / "bare-server.log")
    except BaseException:
        stop_server(navi_proc)
        raise
    # bare first: ratios then read "navi / bare" (req/s < 1 and p50 > 1 mean navi is slower)
    targets = [Target("bare", f"127.0.0.1:{bare_port}", bare_proc.pid),
               Target("navi", f"127.0.0.1:{navi_port}", navi_proc.pid)]
    try:
        with ClientPool(client_processes) as pool:
            for phase in phases:
                if phase == "tiny":
                    inputs = fetch_inputs(f"127.0.0.1:{navi_port}", "dense", "tfserving")
                    workload = dense_workload("tfserving", "dense", inputs, batch_rows=1)
                    levels = list(tiny_concurrencies)
                else:
                    model_dir = heavy_dir if phase == "heavy" else small_dir
                    workload = home_workload("tfserving", model_dir.name, candidates=candidates,
                                             spec_dir=latest_version_dir(model_dir))
                    levels = list(concurrencies)
                log(f"phase {phase}: {workload.description}, {workload.mean_request_bytes / 1024:,.0f} KiB per request")
                if phase == "heavy" and heavy_rounds > 1:
                    document["phases"][phase], document["heavy_rounds"] = paired_heavy_rounds(
                        ServeBenchConfig(targets=targets, concurrencies=levels, duration_s=duration_s,
                                         warmup_s=warmup_s, repeats=1, client_processes=pool.processes),
                        workload, pool)
                    continue
                config = ServeBenchConfig(targets=targets, concurrencies=levels, duration_s=duration_s,
                                          warmup_s=warmup_s, repeats=repeats, client_processes=pool.processes)
                document["phases"][phase] = run_serve_bench(config, workload, on_event=on_event, pool=pool)
    finally:
        stop_server(navi_proc)
        stop_server(bare_proc)
    measure_ceilings("after")
    document["criteria"] = suite_criteria(document)
    return document


def suite_criteria(document: dict) -> dict:
    """The issue's "done when" ratios from a suite document (with their wording)."""
    def rows(phase: str, target: str) -> list[dict]:
        result = document["phases"].get(phase) or {}
        return [r for r in report.summarize_runs(result.get("runs", [])) if r["target"] == target]

    out: dict = {"lines": []}
    heavy = rows("heavy", "navi")
    paired = document.get("heavy_rounds")
    if paired:
        # each round against the mean of the ceilings measured just before and after it
        arounds = [(r["ceiling_before"] + r["ceiling_after"]) / 2 for r in paired]
        ratios = [r["navi_rows_per_s"] / around for r, around in zip(paired, arounds)]
        out["heavy_vs_ceiling"] = float(np.median(ratios))
        out["heavy_vs_ceiling_min"] = min(ratios)
        each = "; ".join(f"{r['navi_rows_per_s']:,.0f} rows/s at c={r['concurrency']} vs {around:,.0f} = {ratio:.2f}x"
                         for r, around, ratio in zip(paired, arounds, ratios))
        out["lines"].append(f"(a) heavy BPR serving vs the in-process ceiling measured on both sides of each round: "
                            f"median {out['heavy_vs_ceiling']:.2f}x, min {out['heavy_vs_ceiling_min']:.2f}x "
                            f"over {len(paired)} rounds ({each}) (target >= 0.8x)")
    elif heavy and "heavy" in document.get("ceilings", {}):
        best = max(heavy, key=lambda r: r["rows_per_s"] or 0)
        measured = document["ceilings"]["heavy"]
        ceiling = measured["rows_per_s"]
        out["heavy_vs_ceiling"] = best["rows_per_s"] / ceiling
        sides = ""
        if "rows_per_s_after" in measured:
            sides = (f" (the higher of {measured['rows_per_s_before']:,.0f} before and "
                     f"{measured['rows_per_s_after']:,.0f} after the server runs)")
        out["lines"].append(f"(a) heavy BPR serving {best['rows_per_s']:,.0f} rows/s at c={best['concurrency']} "
                            f"= {out['heavy_vs_ceiling']:.2f}x the in-process ceiling {ceiling:,.0f} rows/s"
                            f"{sides} (target >= 0.8x)")
    small, small_bare = rows("small", "navi"), rows("small", "bare")
    if small and small_bare:
        best = max(small, key=lambda r: r["requests_per_s"] or 0)
        best_bare = max(small_bare, key=lambda r: r["requests_per_s"] or 0)
        out["small_vs_bare"] = best["requests_per_s"] / best_bare["requests_per_s"]
        out["lines"].append(f"(b) small BPR serving {best['requests_per_s']:,.0f} req/s (c={best['concurrency']}) "
                            f"vs bare {best_bare['requests_per_s']:,.0f} req/s (c={best_bare['concurrency']}) "
                            f"= {out['small_vs_bare']:.2f}x (target >= 0.8x)")
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


def serve_suite_markdown(document: dict, bench_command: str) -> str:
    """The RESULTS.md section of a serving suite run: commands, machine, date, tables, criteria."""
    commands = document.get("commands", {})
    parts = [
        "## Serving (benchmarks/bench_serve.py)\n",
        f"- machine: {report.machine_line(document)}",
        f"- command: `{bench_command}`",
        f"- navi: `{_shown(commands.get('navi', []))}`",
        f"- bare transport server: `{_shown(commands.get('bare', []))}`\n",
    ]
    for phase, ceiling in document.get("ceilings", {}).items():
        parts.append(f"### In-process ceiling, {phase} model (converter + ONNX Runtime, intra-op 1, 2 in flight)\n")
        parts.append(report.runtime_markdown({"results": ceiling["results"]}))
        if "rows_per_s_after" in ceiling:
            parts.append(f"Best convert+run: {ceiling['rows_per_s_before']:,.0f} rows/s before the servers "
                         f"ran (the table), {ceiling['rows_per_s_after']:,.0f} rows/s after; the higher "
                         f"one is the ceiling.\n")
    for phase, result in document.get("phases", {}).items():
        workload = result.get("workload", {})
        parts.append(f"### {phase}: {workload.get('description', '')}, "
                     f"{workload.get('mean_request_bytes', 0) / 1024:,.1f} KiB per request\n")
        parts.append(report.serve_markdown(result))
    lines = document.get("criteria", {}).get("lines", [])
    if lines:
        parts.append("### Criteria\n")
        parts += [f"- {line}" for line in lines]
    return "\n".join(parts) + "\n"


def _shown(command: list[str]) -> str:
    """A command for the reader: ``python -m navi.cli.main`` shown as the ``navi`` console script."""
    import shlex

    if len(command) > 2 and command[1:3] == ["-m", "navi.cli.main"]:
        command = ["navi", *command[3:]]
    return shlex.join(command)
