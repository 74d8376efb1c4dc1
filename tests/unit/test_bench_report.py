"""Tables, JSON and plots of navi.bench.report on synthetic measurements (no network)."""
import io
import json

import jsonschema
import numpy as np
import pytest
from rich.console import Console

from navi.bench import loadgen, report, serve


def _measurement(seed: int, errors=None) -> loadgen.RunMeasurement:
    rng = np.random.default_rng(seed)
    latencies = rng.exponential(0.004, size=500)
    return loadgen.RunMeasurement(requests=500 + sum((errors or {}).values()), rows=500 * 100,
                                  latencies_s=latencies, errors=errors or {}, elapsed_s=2.0,
                                  total_requests=600, scheduled=0, client_cpu_s=0.3, client_processes=2)


def _document(targets=("navi", "bare"), repeats=2) -> dict:
    runs = []
    specs = [loadgen.LoadSpec("closed", c, duration_s=2.0) for c in (1, 8, 32)]
    specs.append(loadgen.LoadSpec("open", 500.0, duration_s=2.0))
    seed = 0
    for repeat in range(repeats):
        for spec in specs:
            for name in targets:
                seed += 1
                errors = {"RESOURCE_EXHAUSTED": 3} if name == "navi" and spec.level == 32 else None
                runs.append(serve.run_record(serve.Target(name, "127.0.0.1:1"), spec, repeat,
                                             _measurement(seed, errors), server_cpu_s=1.5 if name == "bare" else None))
    return {
        "schema": "navi.bench.serve/1",
        "machine": serve.machine_info(),
        "workload": {"description": "synthetic"},
        "settings": {"protocol": "tfserving"},
        "targets": [{"name": t, "address": "127.0.0.1:1"} for t in targets],
        "runs": runs,
    }


def test_json_output_follows_the_schema(tmp_path):
    path = tmp_path / "bench.json"
    report.write_json(_document(), path)
    data = json.loads(path.read_text())
    jsonschema.validate(data, report.SERVE_JSON_SCHEMA)
    run = data["runs"][0]
    assert run["target"] == "navi" and run["concurrency"] == 1
    assert set(run["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert run["requests_per_s"] == pytest.approx(250.0)
    assert run["rows_per_s"] == pytest.approx(25_000.0)
    assert any(r.get("rate") == 500.0 for r in data["runs"])
    assert any(r["errors"] == {"RESOURCE_EXHAUSTED": 3} for r in data["runs"])
    # summary: one row per (target, load), errors summed over the repeats
    assert len(data["summary"]) == 8
    navi_32 = next(r for r in data["summary"] if r["target"] == "navi" and r.get("concurrency") == 32)
    assert navi_32["errors"] == {"RESOURCE_EXHAUSTED": 6} and navi_32["repeats"] == 2
    # comparisons: the second target relative to the first, per load
    assert [c["load"] for c in data["comparisons"]] == ["c=1", "c=8", "c=32", "r=500/s"]
    assert all(c["target"] == "bare" and c["baseline"] == "navi" for c in data["comparisons"])


def test_json_is_strict_even_with_nan(tmp_path):
    document = _document(targets=("only",), repeats=1)
    document["runs"][0]["latency_ms"]["p50"] = float("nan")
    path = tmp_path / "nan.json"
    report.write_json(document, path)
    assert json.loads(path.read_text())["runs"][0]["latency_ms"]["p50"] is None


def test_summary_takes_medians_over_repeats():
    document = _document(targets=("x",), repeats=3)
    for i, run in enumerate(r for r in document["runs"] if r.get("concurrency") == 1):
        run["requests_per_s"] = [10.0, 30.0, 20.0][i]
    row = next(r for r in report.summarize_runs(document["runs"]) if r.get("concurrency") == 1)
    assert row["requests_per_s"] == 20.0


def test_tables_render():
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    for table in report.serve_tables(_document()):
        console.print(table)
    text = buffer.getvalue()
    assert "navi" in text and "bare" in text and "c=32" in text and "r=500/s" in text
    assert "ratios to navi" in text
    assert "RESOURCE_EXHAUSTED:6" in text
    single = io.StringIO()
    tables = report.serve_tables(_document(targets=("solo",), repeats=1))
    assert len(tables) == 1
    Console(file=single, width=80).print(*tables)
    assert report.run_line(_document()["runs"][0]).strip().startswith("navi")


def test_runtime_table_renders():
    document = {"results": [
        {"case": "dense", "runtime": "onnx", "batch_rows": 16, "threads": 1,
         "rows_per_s": {"median": 1000.0, "min": 900.0, "max": 1100.0, "repeats": 3}, "batch_ms": {"median": 0.1}},
        {"case": "dense", "runtime": "torch", "batch_rows": 16, "threads": 1,
         "rows_per_s": {"median": 500.0, "min": 400.0, "max": 600.0, "repeats": 3}, "batch_ms": {"median": 0.2}},
        {"case": "dense", "runtime": "tf", "batch_rows": 0, "threads": 1, "rows_per_s": None, "batch_ms": {},
         "note": "skipped: not installed"},
    ]}
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(report.runtime_table(document))
    text = buffer.getvalue()
    assert "0.50x" in text and "skipped" in text


def test_plot_file_written(tmp_path):
    path = tmp_path / "latency.png"
    report.write_serve_plot(_document(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    closed_only = _document(targets=("solo",), repeats=1)
    closed_only["runs"] = [r for r in closed_only["runs"] if r["mode"] == "closed"]
    report.write_serve_plot(closed_only, tmp_path / "closed.png")
    assert (tmp_path / "closed.png").stat().st_size > 0


def test_markdown_keeps_ratios_next_to_absolute_numbers():
    text = report.serve_markdown(_document())
    lines = [line for line in text.splitlines() if line.startswith("| bare")]
    assert lines and all("x)" in line for line in lines)  # ratios beside the figures
    assert "that target / navi" in text
    runtime_text = report.runtime_markdown({"results": [
        {"case": "dense", "runtime": "onnx", "batch_rows": 1, "rows_per_s": {"median": 10.0, "min": 9.0},
         "batch_ms": {"median": 0.1}, "note": ""}]})
    assert "| dense | onnx | 1 |" in runtime_text
    assert "cores" in report.machine_line(_document())


def test_busy_client_is_flagged():
    document = _document(targets=("solo",), repeats=1)
    document["runs"][0]["client_cpu_utilization"] = 0.95
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(*report.serve_tables(document))
    assert "warning: client processes were on CPU up to 95%" in buffer.getvalue()


def test_suite_criteria_and_markdown():
    """The issue-3 criteria read off a synthetic suite document, and its RESULTS.md section."""
    def phase(targets, rps, p50):
        runs = []
        for name in targets:
            for c in (1, 8):
                spec = loadgen.LoadSpec("closed", c, duration_s=2.0)
                record = serve.run_record(serve.Target(name, "x:1"), spec, 0, _measurement(c), None)
                record["requests_per_s"] = rps[name] * c
                record["rows_per_s"] = rps[name] * c * 100
                record["latency_ms"]["p50"] = p50[name]
                runs.append(record)
        return {"runs": runs, "workload": {"description": "w", "mean_request_bytes": 2048}}

    document = {
        "machine": serve.machine_info(),
        "commands": {"navi": ["python", "-m", "navi.cli.main", "serve", "--port", "1"],
                     "bare": ["python", "-m", "navi.cli.main", "bench", "bare-server"]},
        "ceilings": {"heavy": {"rows_per_s": 10_000.0, "batch_rows": 400, "results": []}},
        "phases": {
            "heavy": phase(("bare", "navi"), {"bare": 100.0, "navi": 10.0}, {"bare": 1.0, "navi": 9.0}),
            "small": phase(("bare", "navi"), {"bare": 100.0, "navi": 90.0}, {"bare": 1.0, "navi": 1.2}),
            "tiny": phase(("bare", "navi"), {"bare": 100.0, "navi": 90.0}, {"bare": 2.0, "navi": 2.5}),
        },
    }
    criteria = serve.suite_criteria(document)
    assert criteria["heavy_vs_ceiling"] == pytest.approx(8_000.0 / 10_000.0)  # navi's best: c=8
    assert criteria["small_vs_bare"] == pytest.approx(0.9)
    assert criteria["tiny_p50_vs_bare"] == {1: pytest.approx(1.25), 8: pytest.approx(1.25)}
    document["criteria"] = criteria
    text = report.serve_suite_markdown(document, "python benchmarks/bench_serve.py")
    assert "`navi serve --port 1`" in text and "`navi bench bare-server`" in text
    assert "### Criteria" in text and "(a) heavy BPR serving" in text
    assert "cores" in text
    # measured on both sides of the server runs: the higher ceiling counts, both are shown
    document["ceilings"]["heavy"].update(rows_per_s=16_000.0, rows_per_s_before=10_000.0,
                                         rows_per_s_after=16_000.0)
    criteria = serve.suite_criteria(document)
    assert criteria["heavy_vs_ceiling"] == pytest.approx(8_000.0 / 16_000.0)
    assert "10,000 before and 16,000 after" in criteria["lines"][0]
    document["criteria"] = criteria
    assert "16,000 rows/s after" in report.serve_suite_markdown(document, "python benchmarks/bench_serve.py")


def test_suite_criteria_pair_each_heavy_round_with_its_ceiling():
    """With heavy rounds, (a) is the median of per-round ratios to the mean of the ceilings around each round."""
    document = {
        "ceilings": {},
        "phases": {},
        "heavy_rounds": [
            {"ceiling_before": 10_000.0, "ceiling_after": 8_000.0, "navi_rows_per_s": 7_200.0,
             "concurrency": 4},
            {"ceiling_before": 8_000.0, "ceiling_after": 8_000.0, "navi_rows_per_s": 6_000.0,
             "concurrency": 16},
            {"ceiling_before": 8_000.0, "ceiling_after": 6_000.0, "navi_rows_per_s": 6_300.0,
             "concurrency": 4},
        ],
    }
    criteria = serve.suite_criteria(document)
    assert criteria["heavy_vs_ceiling"] == pytest.approx(0.8)
    assert criteria["heavy_vs_ceiling_min"] == pytest.approx(0.75)
    assert "median 0.80x, min 0.75x over 3 rounds" in criteria["lines"][0]
    assert "6,000 rows/s at c=16 vs 8,000 = 0.75x" in criteria["lines"][0]
