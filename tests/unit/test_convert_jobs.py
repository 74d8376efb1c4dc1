"""`navi convert --jobs N`: worker processes write the same bytes as one process, and an
output is either complete or absent (written as *.partial, renamed at the end)."""
from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from navi.bprfile import write_raw
from navi.cli.main import main
from navi.npy_export import output_paths
from navi.segdense import load_layout
from navi.workload import encode_bpr, home_layout_files, make_bprs

N_BPRS = 2003  # blocks of 64: 31 full ones and an uneven last one of 19


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """A raw file of ~2,000 BPRs of 0 to 3 candidates, with one record that does not decode."""
    tmp = tmp_path_factory.mktemp("jobs")
    spec, all_config = home_layout_files(tmp / "v1")
    layout = load_layout(spec, all_config)
    payloads = make_bprs(layout, N_BPRS - 5, 1, seed=5, continuous_per_candidate=40,
                         binary_per_candidate=5, discrete_per_candidate=5)
    payloads[100:100] = make_bprs(layout, 3, 3, seed=6, continuous_per_candidate=40)
    payloads[700:700] = [encode_bpr([])]
    payloads[1500:1500] = [payloads[1][:40]]  # truncated: skipped with --skip-invalid
    assert len(payloads) == N_BPRS
    with open(tmp / "in.raw", "wb") as f:
        write_raw(f, payloads)
    return tmp, layout


def convert(tmp, out, *extra):
    return CliRunner().invoke(main, ["convert", str(tmp / "in.raw"), "-o", str(out), "--model-dir",
                                     str(tmp / "v1"), "--chunk-bprs", "64", *extra])


def test_jobs_write_the_bytes_of_one_process(workload):
    tmp, layout = workload
    outputs = {}
    for jobs in ("1", "2", "3"):
        out = tmp / f"out{jobs}"
        result = convert(tmp, out, "--skip-invalid", "--jobs", jobs)
        assert result.exit_code == 0, result.output
        assert f"converted {N_BPRS - 1} BPRs" in result.output and "skipped 1 invalid" in result.output
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in output_paths(layout, out).values())
        outputs[jobs] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outputs["2"] == outputs["1"]
    assert outputs["3"] == outputs["1"]
    ends = np.load(tmp / "out1" / "batch_ends.npy")
    assert len(ends) == N_BPRS - 1 and ends[-1] == (N_BPRS - 5) + 9
    assert np.load(tmp / "out1" / "continuous.npy").shape == (ends[-1], layout.tensor("continuous").width)


def test_a_bad_record_leaves_no_output(workload):
    tmp, _ = workload
    out = tmp / "failed"
    result = convert(tmp, out, "--jobs", "2")
    assert result.exit_code == 1 and "record 1501" in result.output
    assert list(out.iterdir()) == []


def test_jobs_auto_and_bad_values(workload, monkeypatch):
    tmp, _ = workload
    import navi.settings

    monkeypatch.setattr(navi.settings, "usable_cores", lambda: 2)
    result = convert(tmp, tmp / "auto", "--skip-invalid", "--jobs", "auto")
    assert result.exit_code == 0, result.output
    assert (tmp / "auto" / "batch_ends.npy").read_bytes() == (tmp / "out1" / "batch_ends.npy").read_bytes()
    for bad in ("0", "-2", "many"):
        result = convert(tmp, tmp / "bad", "--jobs", bad)
        assert result.exit_code == 2 and "--jobs" in result.output


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_disk_is_a_clear_error_and_leaves_nothing(workload, jobs):
    """A file size limit (RLIMIT_FSIZE, inherited by the workers) stands in for a full disk."""
    tmp, _ = workload
    out = tmp / f"full{jobs}"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    limit = 4 << 20

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "navi.cli.main", "convert", str(tmp / "in.raw"), "-o", str(out),
                             "--model-dir", str(tmp / "v1"), "--skip-invalid", "--chunk-bprs", "64", "--jobs", jobs],
                            capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
