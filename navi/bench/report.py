"""Turning benchmark result documents into tables, JSON files and plots.

Everything here reads the plain result dictionaries that ``navi.bench.serve``
and ``navi.bench.runtime`` return (the same thing ``--json`` writes), so a
saved JSON file can be re-rendered later.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from navi.bench.stats import ratio

LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
#: client CPU utilization above which a run's figures may describe the client, not the server
CLIENT_BUSY = 0.8


def make_console():
    """A rich console; wide when writing to a file or pipe so tables are not squeezed."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    return console


def load_label(run: dict) -> str:
    """A run's load level as text: ``c=8`` (closed loop) or ``r=500/s`` (open loop)."""
    if "concurrency" in run:
        return f"c={run['concurrency']}"
    return f"r={_num(run['rate'])}/s"


def _load_key(run: dict) -> tuple[str, float]:
    return ("closed", float(run["concurrency"])) if "concurrency" in run else ("open", float(run["rate"]))


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.{digits}f}"
    return f"{value:.{max(digits, 2) if abs(value) < 10 else max(digits, 1)}f}"


def summarize_runs(runs: Iterable[dict]) -> list[dict]:
    """One row per (target, load level): medians over repeats.

    Throughput figures take the median over repeats; latency percentiles the
    median of each percentile; errors are summed. Order: load level (as run),
    then target (as given).
    """
    groups: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    for run in runs:
        groups.setdefault((_load_key(run), run["target"]), []).append(run)
    rows = []
    for (_, target), members in groups.items():
        first = members[0]
        row = {key: first[key] for key in ("target", "mode") if key in first}
        if "concurrency" in first:
            row["concurrency"] = first["concurrency"]
        else:
            row["rate"] = first["rate"]
        for key in ("requests_per_s", "rows_per_s", "client_cpu_s_per_request", "server_cpu_s_per_request"):
            values = [m.get(key) for m in members if m.get(key) is not None]
            row[key] = float(np.median(values)) if values else None
        row["latency_ms"] = {
            key: float(np.median([m["latency_ms"][key] for m in members])) for key in LATENCY_KEYS
        }
        errors: dict[str, int] = {}
        for member in members:
            for code, count in member.get("errors", {}).items():
                errors[code] = errors.get(code, 0) + count
        row["errors"] = errors
        row["repeats"] = len(members)
        rows.append(row)
    return rows


def comparisons(runs: Iterable[dict]) -> list[dict]:
    """Ratios of every other target to the first one, per load level.

    ``requests_per_s`` and ``rows_per_s`` ratios above 1 mean the other
    target is faster; latency ratios above 1 mean it is slower.
    """
    summary = summarize_runs(runs)
    targets = list(OrderedDict.fromkeys(row["target"] for row in summary))
    if len(targets) < 2:
        return []
    by_key = {(_load_key(row), row["target"]): row for row in summary}
    loads = list(OrderedDict.fromkeys(_load_key(row) for row in summary))
    base = targets[0]
    result = []
    for load in loads:
        reference = by_key.get((load, base))
        if reference is None:
            continue
        for other in targets[1:]:
            row = by_key.get((load, other))
            if row is None:
                continue
            result.append(
                {
                    "load": load_label(row),
                    "target": other,
                    "baseline": base,
                    "requests_per_s": ratio(row["requests_per_s"], reference["requests_per_s"]),
                    "rows_per_s": ratio(row["rows_per_s"], reference["rows_per_s"]),
                    "p50": ratio(row["latency_ms"]["p50"], reference["latency_ms"]["p50"]),
                    "p99": ratio(row["latency_ms"]["p99"], reference["latency_ms"]["p99"]),
                }
            )
    return result


def serve_tables(document: dict):
    """Rich tables for a serve result: the runs, and the ratios when comparing targets."""
    from rich.table import Table

    summary = summarize_runs(document.get("runs", []))
    workload = document.get("workload", {}).get("description", "")
    table = Table(title=f"navi bench serve: {workload} (latency in ms, CPU in ms per request)",
                  title_justify="left")
    for column in ("target", "load", "req/s", "rows/s", "p50", "p90", "p99", "p99.9",
                   "max", "errors", "client CPU", "server CPU"):
        table.add_column(column, justify="left" if column in ("target", "load", "errors") else "right")
    for row in summary:
        latency = row["latency_ms"]
        errors = ", ".join(f"{code}:{count}" for code, count in sorted(row["errors"].items())) or "0"
        table.add_row(
            row["target"],
            load_label(row),
            _num(row["requests_per_s"]),
            _num(row["rows_per_s"]),
            *(_num(latency[key], 2) for key in LATENCY_KEYS),
            errors,
            _num(None if row["client_cpu_s_per_request"] is None else row["client_cpu_s_per_request"] * 1e3, 3),
            _num(None if row["server_cpu_s_per_request"] is None else row["server_cpu_s_per_request"] * 1e3, 3),
        )
    busy = [r for r in document.get("runs", []) if (r.get("client_cpu_utilization") or 0) > CLIENT_BUSY]
    if busy:
        worst = max(r["client_cpu_utilization"] for r in busy)
        table.caption = (f"warning: client processes were on CPU up to {worst:.0%} of the time in {len(busy)} "
                         f"run(s); add --client-processes or CPUs before trusting those figures")
    tables = [table]
    ratios = comparisons(document.get("runs", []))
    if ratios:
        compare = Table(title=f"ratios to {ratios[0]['baseline']} (throughput >1 = faster, latency >1 = slower)",
                        title_justify="left")
        for column in ("load", "target", "req/s x", "rows/s x", "p50 x", "p99 x"):
            compare.add_column(column, justify="left" if column in ("load", "target") else "right")
        for row in ratios:
            compare.add_row(row["load"], row["target"], *(_ratio_text(row[k]) for k in
                                                          ("requests_per_s", "rows_per_s", "p50", "p99")))
        tables.append(compare)
    return tables


def _ratio_text(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def run_line(record: dict) -> str:
    """One-line summary of a finished run, printed as runs complete."""
    latency = record["latency_ms"]
    errors = sum(record.get("errors", {}).values())
    return (
        f"{record['target']:>12} {load_label(record):>10}  {_num(record['requests_per_s']):>9} req/s  "
        f"{_num(record['rows_per_s']):>10} rows/s  p50 {_num(latency['p50'], 2)} ms  "
        f"p99 {_num(latency['p99'], 2)} ms  errors {errors}"
    )


def _jsonable(value):
    """NaN/inf become null so the file is strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _jsonable(float(value))
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(document: dict, path: Path) -> None:
    """Write a result document (with its summary and ratios) as strict JSON."""
    body = dict(document)
    if "runs" in body and body["runs"] and "latency_ms" in body["runs"][0]:
        body["summary"] = summarize_runs(body["runs"])
        body["comparisons"] = comparisons(body["runs"])
    Path(path).write_text(json.dumps(_jsonable(body), indent=2, allow_nan=False) + "\n")


def write_serve_plot(document: dict, path: Path) -> None:
    """Plot latency percentiles (p50 solid, p99 dashed) against load, one line per target and mode.

    Closed-loop runs go on the left axis against concurrency, open-loop runs on
    the right against offered rate; latency is on a log scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_runs(document.get("runs", []))
    modes = [m for m in ("closed", "open") if any(r["mode"] == m for r in summary)]
    figure, axes = plt.subplots(1, max(1, len(modes)), figsize=(6.5 * max(1, len(modes)), 4.5), squeeze=False)
    targets = list(OrderedDict.fromkeys(r["target"] for r in summary))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, mode in zip(axes[0], modes or ["closed"]):
        for t_index, target in enumerate(targets):
            rows = [r for r in summary if r["target"] == target and r["mode"] == mode]
            if not rows:
                continue
            x = [r["concurrency"] if mode == "closed" else r["rate"] for r in rows]
            color = colors[t_index % len(colors)]
            for key, style in (("p50", "-"), ("p90", ":"), ("p99", "--"), ("p999", "-.")):
                axis.plot(x, [r["latency_ms"][key] for r in rows], style, marker="o", color=color,
                          label=f"{target} {key}")
        axis.set_xlabel("concurrency (closed loop)" if mode == "closed" else "offered rate, req/s (open loop)")
        axis.set_ylabel("latency, ms")
        axis.set_yscale("log")
        if mode == "closed":
            axis.set_xscale("log", base=2)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    workload = document.get("workload", {}).get("description", "")
    figure.suptitle(f"navi bench serve: latency percentiles vs load\n{workload}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def runtime_table(document: dict):
    """Rich table for a runtime result: rows/s median and min over repeats, ratio to the best."""
    from rich.table import Table

    table = Table(title="navi bench runtime (in-process)", title_justify="left")
    for column in ("case", "runtime", "batch rows", "threads", "rows/s median", "rows/s min", "ms/batch median",
                   "vs best", "note"):
        table.add_column(column, justify="left" if column in ("case", "runtime", "note") else "right")
    results = document.get("results", [])
    best: dict[tuple, float] = {}
    for row in results:
        key = (row["case"], row["batch_rows"])
        if row.get("rows_per_s") and not math.isnan(row["rows_per_s"]["median"]):
            best[key] = max(best.get(key, 0.0), row["rows_per_s"]["median"])
    for row in results:
        rps = row.get("rows_per_s") or {}
        median = rps.get("median", math.nan)
        table.add_row(
            row["case"],
            row["runtime"],
            str(row["batch_rows"]),
            str(row.get("threads", "")),
            _num(median),
            _num(rps.get("min", math.nan)),
            _num(row.get("batch_ms", {}).get("median", math.nan), 3),
            _ratio_text(ratio(median, best.get((row["case"], row["batch_rows"]), math.nan))),
            row.get("note", ""),
        )
    return table


#: JSON Schema of the ``--json`` file of `navi bench serve` (the part machines rely on).
SERVE_JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["runs", "machine", "workload", "settings"],
    "properties": {
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["target", "mode", "requests_per_s", "rows_per_s", "latency_ms", "errors"],
                "properties": {
                    "target": {"type": "string"},
                    "mode": {"enum": ["closed", "open"]},
                    "concurrency": {"type": "integer", "minimum": 1},
                    "rate": {"type": "number", "exclusiveMinimum": 0},
                    "requests_per_s": {"type": ["number", "null"]},
                    "rows_per_s": {"type": ["number", "null"]},
                    "latency_ms": {
                        "type": "object",
                        "required": ["p50", "p90", "p99", "p999", "max"],
                        "additionalProperties": {"type": ["number", "null"]},
                    },
                    "errors": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "client_cpu_s_per_request": {"type": ["number", "null"]},
                    "server_cpu_s_per_request": {"type": ["number", "null"]},
                },
                "oneOf": [{"required": ["concurrency"]}, {"required": ["rate"]}],
            },
        },
        "summary": {"type": "array"},
        "comparisons": {"type": "array"},
        "machine": {"type": "object", "required": ["cores", "cpu_model"]},
        "workload": {"type": "object"},
        "settings": {"type": "object"},
    },
}


def machine_line(document: dict) -> str:
    """"2 cores, <CPU model>, <date>" for the header of a RESULTS.md section."""
    machine = document.get("machine", {})
    date = (document.get("started_at") or document.get("finished_at") or "")[:10]
    return f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', 'unknown CPU')}, {machine.get('platform', '')}" + (
        f", {date}" if date else "")


def serve_markdown(document: dict) -> str:
    """A Markdown table of a serve result: absolute figures with the ratio to the first target beside them."""
    summary = summarize_runs(document.get("runs", []))
    if not summary:
        return "_no runs_\n"
    targets = list(OrderedDict.fromkeys(r["target"] for r in summary))
    base = targets[0]
    by_key = {(_load_key(r), r["target"]): r for r in summary}
    lines = [
        "| target | load | req/s | rows/s | p50 ms | p99 ms | p99.9 ms | errors | client CPU ms/req | server CPU ms/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in summary:
        reference = by_key.get((_load_key(row), base)) if row["target"] != base else None

        def with_ratio(value: float | None, ref_value: float | None, digits: int = 0) -> str:
            text = _num(value, digits)
            if reference is not None and value is not None and ref_value:
                text += f" ({ratio(value, ref_value):.2f}x)"
            return text

        latency = row["latency_ms"]
        errors = ", ".join(f"{c} {n}" for c, n in sorted(row["errors"].items())) or "0"
        client = row["client_cpu_s_per_request"]
        server = row["server_cpu_s_per_request"]
        lines.append(
            "| " + " | ".join([
                row["target"], load_label(row),
                with_ratio(row["requests_per_s"], reference and reference["requests_per_s"]),
                with_ratio(row["rows_per_s"], reference and reference["rows_per_s"]),
                with_ratio(latency["p50"], reference and reference["latency_ms"]["p50"], 2),
                with_ratio(latency["p99"], reference and reference["latency_ms"]["p99"], 2),
                _num(latency["p999"], 2), errors,
                _num(None if client is None else client * 1e3, 3),
                _num(None if server is None else server * 1e3, 3),
            ]) + " |")
    note = f"\nRatios in brackets: that target / {base} at the same load.\n" if len(targets) > 1 else "\n"
    return "\n".join(lines) + "\n" + note


def runtime_markdown(document: dict) -> str:
    """A Markdown table of a runtime result (rows/s median and min over repeats, ratio to the best)."""
    results = document.get("results", [])
    best: dict[tuple, float] = {}
    for row in results:
        if row.get("rows_per_s"):
            key = (row["case"], row["batch_rows"])
            best[key] = max(best.get(key, 0.0), row["rows_per_s"]["median"])
    lines = ["| case | runtime | batch rows | rows/s median | rows/s min | ms/batch | vs best | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in results:
        rps = row.get("rows_per_s") or {}
        median = rps.get("median", math.nan)
        lines.append("| " + " | ".join([
            row["case"], row["runtime"], str(row["batch_rows"]), _num(median), _num(rps.get("min", math.nan)),
            _num((row.get("batch_ms") or {}).get("median", math.nan), 3),
            _ratio_text(ratio(median, best.get((row["case"], row["batch_rows"]), math.nan))),
            row.get("note", "") or "",
        ]) + " |")
    return "\n".join(lines) + "\n"


def runtime_suite_markdown(document: dict, bench_command: str) -> str:
    """The RESULTS.md section of a runtime run: in-process and (when run) through the daemon."""
    parts = [
        "## Runtimes (benchmarks/bench_runtime.py)\n",
        f"- machine: {machine_line(document)}",
        f"- command: `{bench_command}`\n",
        "### In-process (navi runtime plugins)\n",
        runtime_markdown(document),
    ]
    daemon = document.get("daemon") or {}
    for rows in sorted({r["batch_rows"] for r in daemon.get("runs", [])}):
        parts.append(f"### Through the daemon, {rows} rows per request, c={daemon.get('concurrency', '?')}\n")
        parts.append(serve_markdown({"runs": [r for r in daemon["runs"] if r["batch_rows"] == rows]}))
    for skip in daemon.get("skipped", []):
        parts.append(f"- {skip['runtime']} (daemon): {skip['note']}")
    return "\n".join(parts) + "\n"
