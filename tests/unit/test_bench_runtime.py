"""navi.bench.runtime: the dense model exports agree with numpy and the runtime bench runs (no timing checks)."""
import numpy as np
import onnxruntime as ort
import pytest

from navi.bench import runtime


def test_onnx_export_matches_numpy(tmp_path):
    weights = runtime.dense_weights(3)
    runtime.export_onnx(tmp_path / "1", weights)
    session = ort.InferenceSession(str(tmp_path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, runtime.DENSE_FEATURES)).astype(np.float32)
    (got,) = session.run([runtime.DENSE_OUTPUT], {runtime.DENSE_INPUT: x})
    np.testing.assert_allclose(got, runtime.reference_output(x, weights), atol=1e-5)


@pytest.mark.torch
def test_torch_export_through_the_plugin(tmp_path):
    outcome = runtime.export_all(tmp_path, ["torch", "nope"])
    assert outcome["torch"] == ""
    assert "no exporter" in outcome["nope"]
    assert (tmp_path / "torch" / "dense" / "1" / "model.pt").exists()
    assert (tmp_path / "torch" / "dense" / "1" / "model.json").exists()


def test_runtime_bench_document(tmp_path):
    document = runtime.run_runtime_bench(runtimes=["onnx", "nope"], batch_rows=[1, 4], repeats=2, min_time_s=0.01,
                                         home=True, home_bprs_per_batch=[1], candidates=3, callers=2)
    results = document["results"]
    dense = [r for r in results if r["case"] == "dense" and r["runtime"] == "onnx"]
    assert [r["batch_rows"] for r in dense] == [1, 4]
    for row in dense:
        assert row["rows_per_s"]["repeats"] == 2
        assert row["rows_per_s"]["min"] <= row["rows_per_s"]["median"]
        assert row["callers"] == 2
    skipped = [r for r in results if r["runtime"] == "nope"]
    assert skipped and skipped[0]["rows_per_s"] is None and "no exporter" in skipped[0]["note"]
    cases = {r["case"] for r in results}
    assert {"home convert+run", "home run only", "home convert only"} <= cases
    home = next(r for r in results if r["case"] == "home convert+run")
    assert home["batch_rows"] == 3
    assert document["machine"]["cores"] >= 1

    from navi.bench import report

    path = tmp_path / "runtime.json"
    report.write_json(document, path)
    assert path.stat().st_size > 0


def test_measure_counts_calls_from_several_callers():
    calls = []
    n, seconds = runtime.measure(lambda: calls.append(1), 0.01, callers=3)
    assert n == len(calls) >= 3
    assert seconds > 0
