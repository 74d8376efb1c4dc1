"""Demo model builders: deterministic bytes, layouts that match their spec files, the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from navi.cli.demo import demo
from navi.demo import (
    DEMO_VERSION,
    HEAVY_HIDDEN,
    SPEC_FILES,
    build_dense_model,
    build_home_model,
    ensure_heavy_model,
    parameter_count,
    write_demo_models,
)
from navi.plugins.base import synthetic_inputs
from navi.plugins.onnx import OnnxRuntime
from navi.segdense import load_layout_from_dir
from navi.settings import ModelSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_builders_give_the_same_bytes_twice():
    assert build_home_model().SerializeToString() == build_home_model().SerializeToString()
    assert build_dense_model().SerializeToString() == build_dense_model().SerializeToString()
    # and the seed matters
    assert build_dense_model(seed=1).SerializeToString() != build_dense_model().SerializeToString()


def test_written_repositories_are_identical(tmp_path):
    first = write_demo_models(tmp_path / "a")
    second = write_demo_models(tmp_path / "b")
    for name in ("home", "dense"):
        assert first[name].name == str(DEMO_VERSION)
        files = sorted(p.name for p in first[name].iterdir())
        assert files == sorted(p.name for p in second[name].iterdir())
        for file_name in files:
            assert (first[name] / file_name).read_bytes() == (second[name] / file_name).read_bytes()
    assert sorted(p.name for p in first["home"].iterdir()) == sorted(["model.onnx", *SPEC_FILES])


def test_home_model_matches_its_spec_files(tmp_path):
    version_dir = write_demo_models(tmp_path)["home"]
    layout = load_layout_from_dir(version_dir)
    model = OnnxRuntime().load(version_dir, ModelSettings(name="home", model_dir=version_dir.parent))
    assert tuple(spec.name for spec in model.signature.inputs) == layout.feed_order
    for spec in model.signature.inputs:
        tensor = layout.tensor(spec.name)
        assert spec.dtype == np.dtype(tensor.dtype)
        assert spec.shape == (-1, tensor.width)
    widths = layout.widths
    assert (widths["continuous"], widths["binary"], widths["user_embedding"]) == (5293, 149, 200)
    model.run(synthetic_inputs(model.signature.inputs))
    # every feature missing: each tensor holds its spec default
    batch = {t.name: np.full((3, t.width), t.default, dtype=t.dtype) for t in layout.tensors}
    assert layout.tensor("continuous").default == 0.0  # the demo spec fills 0, so no NaN reaches the graph
    out = model.run({name: batch[name] for name in layout.feed_order})["output_0"]
    assert out.shape == (3, 1) and np.all(np.isfinite(out))


def test_home_model_zeroes_nan_when_asked(tmp_path):
    model = build_home_model(hidden=(4,), zero_missing=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros((2, i.shape[1]), dtype=np.int64 if i.name == "binary" else np.float32)
             for i in session.get_inputs()}
    base = session.run(None, feeds)[0]
    feeds["continuous"][:] = np.nan
    np.testing.assert_allclose(session.run(None, feeds)[0], base)


def test_dense_model_shape(tmp_path):
    version_dir = write_demo_models(tmp_path)["dense"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (x,), (y,) = session.get_inputs(), session.get_outputs()
    assert (x.name, x.type, x.shape[1]) == ("x", "tensor(float)", 16)
    assert (y.name, y.type, y.shape[1]) == ("y", "tensor(float)", 4)


def test_heavy_model_size_and_determinism():
    heavy = build_home_model(hidden=HEAVY_HIDDEN)
    assert 6_000_000 < parameter_count(heavy) < 8_000_000
    assert heavy.SerializeToString() == build_home_model(hidden=HEAVY_HIDDEN).SerializeToString()


def test_ensure_heavy_model_builds_once(tmp_path):
    model_dir = ensure_heavy_model(tmp_path)
    model_file = model_dir / str(DEMO_VERSION) / "model.onnx"
    assert model_dir.name == "home_heavy" and model_file.stat().st_size > 20_000_000
    stamp = model_file.stat().st_mtime_ns
    assert ensure_heavy_model(tmp_path) == model_dir
    assert model_file.stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_cli_writes_and_checks(tmp_path):
    runner = CliRunner()
    result = runner.invoke(demo, ["--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / str(DEMO_VERSION) / "model.onnx").is_file()
    assert runner.invoke(demo, ["--out", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "dense" / str(DEMO_VERSION) / "model.onnx").write_bytes(b"stale")
    stale = runner.invoke(demo, ["--out", str(tmp_path), "--check"])
    assert stale.exit_code != 0 and "dense" in stale.output


def test_committed_demo_models_match_a_rebuild():
    # the repository's models/ must be exactly what `navi demo` writes
    result = CliRunner().invoke(demo, ["--out", str(REPO_ROOT / "models"), "--check"])
    assert result.exit_code == 0, result.output


def test_demo_repository_prefers_the_checkout_and_falls_back_to_the_cache(tmp_path, monkeypatch):
    from navi import demo as builders

    assert builders.demo_repository() == REPO_ROOT / "models"
    # as an installed wheel would see it: no models/ beside the package
    fake_package = tmp_path / "site" / "navi" / "demo.py"
    monkeypatch.setattr(builders, "__file__", str(fake_package))
    monkeypatch.setenv("NAVI_CACHE_DIR", str(tmp_path / "cache"))
    built = builders.demo_repository()
    assert built == tmp_path / "cache" / "models"
    committed = REPO_ROOT / "models" / "home" / str(DEMO_VERSION) / "model.onnx"
    assert (built / "home" / str(DEMO_VERSION) / "model.onnx").read_bytes() == committed.read_bytes()


def test_cli_heavy_defaults_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAVI_CACHE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(demo, ["--heavy"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "home_heavy" / str(DEMO_VERSION) / "model.onnx").is_file()
    assert not (tmp_path / "models" / "home").exists()


def test_home_demo_answers_converted_bprs_with_informative_probabilities():
    # the committed model, fed the way the daemon feeds it: BPRs through the converter
    from navi.converter import BprConverter
    from navi.workload import make_bprs

    version_dir = REPO_ROOT / "models" / "home" / str(DEMO_VERSION)
    layout = load_layout_from_dir(version_dir)
    batch = BprConverter(layout).convert(make_bprs(layout, 2, candidates=20, seed=1))
    model = OnnxRuntime().load(version_dir, ModelSettings(name="home", model_dir=version_dir.parent))
    out = model.run({name: batch[name] for name in layout.feed_order})["output_0"].ravel()
    assert out.shape == (40,)
    # neither saturated nor constant: a wrong row order or a dropped feature would show
    assert 0.01 < out.min() and out.max() < 0.99
    assert out.std() > 0.02
