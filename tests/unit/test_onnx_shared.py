"""Large ONNX weights shared from one mapped file (navi.plugins.onnx_shared), real models and sessions."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from navi.bench.embedding_model import IDS_INPUT, ids_batch, write_embedding_model
from navi.demo import build_dense_model, save_model
from navi.plugins import onnx_shared
from navi.plugins.onnx import OnnxRuntime
from navi.settings import ModelSettings

#: 20 MiB table + a 1 MiB hidden layer: above MIN_TOTAL_BYTES, two tensors shared
TABLE_ROWS = 80_000


@pytest.fixture(scope="module")
def big_version(tmp_path_factory) -> Path:
    version_dir = tmp_path_factory.mktemp("big") / "ranker" / "1"
    write_embedding_model(version_dir / "model.onnx", rows=TABLE_ROWS)
    return version_dir


def settings(version_dir: Path, cache: Path | None) -> ModelSettings:
    return ModelSettings(name="ranker", model_dir=version_dir.parent, inputs=(), outputs=(),
                         shared_weights_dir=cache)


def mapped_files() -> set[str]:
    return {line.split(maxsplit=5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


def test_shared_weights_give_the_same_answers_and_are_mapped_from_the_cache(big_version, tmp_path):
    feed = {IDS_INPUT: ids_batch(64, TABLE_ROWS)}
    plain = OnnxRuntime().load(big_version, settings(big_version, None))
    shared = OnnxRuntime().load(big_version, settings(big_version, tmp_path / "cache"))
    try:
        assert plain.shared is None
        assert sorted(shared.shared.arrays) == ["hidden", "table"]
        np.testing.assert_array_equal(shared.run(feed)["score"], plain.run(feed)["score"])
        direct = ort.InferenceSession(str(big_version / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(shared.run(feed)["score"], direct.run(None, feed)[0])
        weights = shared.shared.model_path.parent / onnx_shared.WEIGHTS_FILE
        assert str(weights) in mapped_files()
        # the stripped model holds no weights of its own
        assert shared.shared.model_path.stat().st_size < 1 << 20
        assert shared.signature == plain.signature
    finally:
        plain.close()
        shared.close()


def test_loaders_share_one_entry_and_the_last_to_close_removes_it(big_version, tmp_path, caplog):
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="navi.plugins.onnx_shared")
    first = OnnxRuntime().load(big_version, settings(big_version, cache))
    second = OnnxRuntime().load(big_version, settings(big_version, cache))
    entry = first.shared.model_path.parent
    assert second.shared.model_path.parent == entry
    assert sum("extracted large initializers" in r.getMessage() for r in caplog.records) == 1
    # one process maps the entry once; both sessions compute from the same pages
    assert first.shared.arrays["table"].ctypes.data == second.shared.arrays["table"].ctypes.data
    first.close()
    assert entry.is_dir()
    feed = {IDS_INPUT: ids_batch(4, TABLE_ROWS)}
    assert second.run(feed)["score"].shape == (4, 1)
    second.close()
    assert not entry.exists()


def test_a_rewritten_model_gets_a_new_entry(tmp_path):
    version_dir = tmp_path / "m" / "1"
    write_embedding_model(version_dir / "model.onnx", rows=TABLE_ROWS, seed=1)
    before = onnx_shared.entry_key(version_dir)
    write_embedding_model(version_dir / "model.onnx", rows=TABLE_ROWS, seed=2)
    assert onnx_shared.entry_key(version_dir) != before


def test_a_small_model_is_loaded_as_usual_and_says_why_once(tmp_path, caplog):
    version_dir = tmp_path / "dense" / "1"
    save_model(build_dense_model(), version_dir / "model.onnx")
    caplog.set_level(logging.INFO, logger="navi.plugins.onnx_shared")
    for _ in range(2):
        model = OnnxRuntime().load(version_dir, settings(version_dir, tmp_path / "cache"))
        assert model.shared is None
        model.close()
    reasons = [r.getMessage() for r in caplog.records if "not shared" in r.getMessage()]
    assert len(reasons) == 1 and "worth sharing" in reasons[0]


def test_an_unusable_cache_falls_back_to_an_ordinary_load(big_version, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    caplog.set_level(logging.INFO, logger="navi.plugins.onnx_shared")
    model = OnnxRuntime().load(big_version, settings(big_version, blocker / "cache"))
    try:
        assert model.shared is None
        assert model.run({IDS_INPUT: ids_batch(2, TABLE_ROWS)})["score"].shape == (2, 1)
        assert any("not shared" in r.getMessage() and "cache" in r.getMessage() for r in caplog.records)
    finally:
        model.close()


def test_a_gpu_provider_keeps_its_own_copy(big_version, tmp_path):
    model_settings = settings(big_version, tmp_path / "cache").model_copy(
        update={"runtime_options": {"onnx_gpu_ep": "cuda"}})
    model = OnnxRuntime().load(big_version, model_settings)
    try:
        assert model.shared is None
        assert not (tmp_path / "cache").exists()
    finally:
        model.close()


def test_types_numpy_cannot_hold_are_left_in_the_model():
    from onnx import TensorProto

    assert onnx_shared._numpy_dtype(TensorProto.FLOAT) == np.float32
    assert onnx_shared._numpy_dtype(TensorProto.STRING) is None
    assert onnx_shared._numpy_dtype(TensorProto.BFLOAT16) is None


def test_another_process_holding_the_entry_keeps_it_and_does_not_block_a_new_loader(big_version, tmp_path):
    """Workers are processes: one holding the entry in use must not stop another from loading it."""
    import subprocess
    import sys
    import textwrap

    cache = tmp_path / "cache"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from navi.plugins.onnx import OnnxRuntime
        from navi.settings import ModelSettings
        version = Path({str(big_version)!r})
        model = OnnxRuntime().load(version, ModelSettings(name="r", model_dir=version.parent, inputs=(),
                                   outputs=(), shared_weights_dir=Path({str(cache)!r})))
        assert model.shared is not None
        print("loaded", flush=True)
        sys.stdin.readline()
        model.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "loaded"
        model = OnnxRuntime().load(big_version, settings(big_version, cache))
        entry = model.shared.model_path.parent
        model.close()
        assert entry.is_dir()  # the other process still holds it
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
        assert not entry.exists()  # ...and, the last, removed it
    finally:
        holder.kill()
