"""`navi convert` and `navi inspect` through the real click commands."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from navi.bprfile import write_base64, write_raw
from navi.cli.main import main
from navi.converter import BprConverter
from navi.segdense import load_layout
from navi.workload import home_layout_files, make_bprs


def setup_files(tmp_path, n=5, candidates=7):
    spec, all_config = home_layout_files(tmp_path / "v1")
    layout = load_layout(spec, all_config)
    payloads = make_bprs(layout, n, candidates, seed=3, continuous_per_candidate=50)
    return layout, payloads


def test_round_trip_base64_and_raw(tmp_path):
    layout, payloads = setup_files(tmp_path)
    expected = BprConverter(layout).convert(payloads)
    with open(tmp_path / "in.b64", "wb") as f:
        write_base64(f, payloads)
    with open(tmp_path / "in.raw", "wb") as f:
        write_raw(f, payloads)
    for name in ("in.b64", "in.raw"):
        out = tmp_path / f"out_{name}"
        result = CliRunner().invoke(main, ["convert", str(tmp_path / name), "-o", str(out),
                                           "--model-dir", str(tmp_path / "v1"), "--chunk-bprs", "2"])
        assert result.exit_code == 0, result.output
        for tensor, array in expected.items():
            np.testing.assert_array_equal(np.load(out / f"{tensor}.npy"), array)
        assert np.load(out / "batch_ends.npy").tolist() == [7, 14, 21, 28, 35]


def test_rows_pass_through_a_small_reused_buffer(tmp_path):
    """Several BPRs per buffer fill, one BPR larger than the buffer, a BPR of no rows."""
    from navi.bprfile import Record
    from navi.npy_export import convert_stream
    from navi.workload import encode_bpr

    layout, payloads = setup_files(tmp_path, n=6, candidates=3)
    big = make_bprs(layout, 1, 11, seed=4, continuous_per_candidate=50)[0]
    payloads = payloads[:2] + [big, encode_bpr([])] + payloads[2:]
    expected = BprConverter(layout).convert(payloads)
    records = [Record(number=i + 1, payload=p, size=len(p)) for i, p in enumerate(payloads)]
    # 7 rows of buffer: 2 BPRs of 3 rows per fill, the 11-row BPR grows it
    summary = convert_stream(iter(records), layout, tmp_path / "out", chunk_bprs=4,
                             buffer_bytes=7 * layout.row_bytes)
    assert (summary.bprs, summary.rows) == (len(payloads), 6 * 3 + 11)
    for tensor, array in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{tensor}.npy"), array)
    assert np.load(tmp_path / "out" / "batch_ends.npy").tolist() == [3, 6, 17, 17, 20, 23, 26, 29]


def test_bad_line_stops_with_its_number_unless_skipped(tmp_path):
    layout, payloads = setup_files(tmp_path, n=3, candidates=2)
    lines = [payloads[0], payloads[1][:50], payloads[2]]
    with open(tmp_path / "in.b64", "wb") as f:
        write_base64(f, lines)
        f.write(b"!!! not base64\n")
    args = ["convert", str(tmp_path / "in.b64"), "-o", str(tmp_path / "out"),
            "--spec", str(tmp_path / "v1" / "segdense_transform_spec_home_recap_2022.json"),
            "--all-config", str(tmp_path / "v1" / "all_config.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "record 2" in result.output
    result = CliRunner().invoke(main, args + ["--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 invalid" in result.output
    assert np.load(tmp_path / "out" / "batch_ends.npy").tolist() == [2, 4]
    assert np.load(tmp_path / "out" / "continuous.npy").shape == (4, 5293)


def test_missing_spec_is_a_usage_error(tmp_path):
    (tmp_path / "in").write_bytes(b"")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                                       "--model-dir", str(tmp_path)])
    assert result.exit_code == 2 and "missing" in result.output


def test_inspect_prints_one_bpr(tmp_path):
    _, payloads = setup_files(tmp_path, n=2, candidates=3)
    with open(tmp_path / "in.raw", "wb") as f:
        write_raw(f, payloads)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "in.raw"), "--index", "2", "--max-items", "2"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["candidates"] == 3
    assert len(described["individualFeaturesList"]) == 3  # 2 shown + the "... more" marker
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "in.raw"), "--index", "9"])
    assert result.exit_code != 0 and "fewer than 9" in result.output


def test_every_command_has_help():
    for command in ("convert", "inspect", "serve", "bench", "demo", "health"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_bench_convert_writes_the_issue_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "convert", "--bprs", "2", "--candidates", "3", "--rounds", "1",
                                       "--reference-bprs", "1", "--min-round-s", "0.01", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    results = report["results"]
    assert {"cython", "thriftpy2", "reference"} <= results.keys()
    assert all(r["candidates_per_s"] > 0 and r["mb_per_s"] > 0 for r in results.values())
    # a tiny workload is repeated within each timing; throughput stays per pass
    assert results["cython"]["passes_per_timing"] > 1
    assert report["workload"]["min_round_s"] == 0.01
    ratios = report["ratios"]
    assert ratios["two_threads_vs_one_median"] > 0 and ratios["per_request_two_threads_vs_one_median"] > 0
    assert not any("machine" in name for name in ratios)  # the cores' control lives in benchmarks/


def test_bench_convert_reports_only_the_methods_it_ran(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "convert", "--bprs", "2", "--candidates", "3", "--rounds", "1",
                                       "--methods", "cython,thriftpy2", "--min-round-s", "0.01",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    ratios = json.loads(out.read_text())["ratios"]
    assert "cython_vs_thriftpy2_median" in ratios
    assert not any("two_threads" in name for name in ratios)


def test_passes_for_makes_timings_last_long_enough():
    from navi.bench.converter_speed import passes_for

    assert passes_for(0.015, 0.2) == 14  # 14 x 15 ms >= 0.2 s
    assert passes_for(0.5, 0.2) == 1
    assert passes_for(0.0, 0.2) == 1
    assert passes_for(0.01, 0.0) == 1
