"""TorchRuntime on real TorchScript modules scripted here (with and without model.json), including
a home-layout model served in BPR converter mode through ServedModel."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import torch

from navi.errors import ConfigError, InvalidInput, RuntimeFailure  # noqa: E402
from navi.plugins import resolve_runtime  # noqa: E402
from navi.plugins.base import synthetic_inputs  # noqa: E402
from navi.plugins.torch import TorchRuntime  # noqa: E402
from navi.settings import BatchingSettings, ModelSettings  # noqa: E402
from tests.torch_models import TYPED_SPEC  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # torch 2.13 deprecates TorchScript (torch.jit.*) in favour of torch.export; serving it is the point
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]


class Typed(torch.nn.Module):
    """float32, float64, int32, int64 and bool inputs; a dict of outputs, one per dtype."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, weight: torch.Tensor, small: torch.Tensor,
                ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "score": self.linear(x),
            "weighted": weight * 3.0,
            "small_out": small + 1,
            "id_sum": ids.sum(dim=1),
            "mask_out": torch.logical_not(mask),
        }


class Pair(torch.nn.Module):
    """Two inputs, a tuple of two outputs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, (a * b).sum(dim=1, keepdim=True)


class Home(torch.nn.Module):
    """The original's five home-layout inputs -> one probability per row."""

    def __init__(self, widths: dict[str, int]):
        super().__init__()
        torch.manual_seed(0)
        total = sum(widths[name] for name in ("continuous", "binary", "user_embedding",
                                              "user_eng_embedding", "author_embedding"))
        self.linear = torch.nn.Linear(total, 1)

    def forward(self, continuous: torch.Tensor, binary: torch.Tensor, user_embedding: torch.Tensor,
                user_eng_embedding: torch.Tensor, author_embedding: torch.Tensor) -> torch.Tensor:
        features = torch.cat([torch.nan_to_num(continuous), binary.float(), user_embedding,
                              user_eng_embedding, author_embedding], dim=1)
        return torch.sigmoid(self.linear(features))




def save(module: torch.nn.Module, version_dir: Path, spec: dict | None = None) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module.eval())
    torch.jit.save(scripted, str(version_dir / "model.pt"))
    if spec is not None:
        (version_dir / "model.json").write_text(json.dumps(spec))
    return version_dir


@pytest.fixture(scope="module")
def typed_dir(tmp_path_factory):
    torch.manual_seed(1)
    return save(Typed(), tmp_path_factory.mktemp("torch") / "typed" / "1", TYPED_SPEC)


def settings(version_dir: Path, **overrides) -> ModelSettings:
    return ModelSettings(name=version_dir.parent.name, model_dir=version_dir.parent, runtime="torch", **overrides)


def typed_batch(rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "x": rng.normal(size=(rows, 4)).astype(np.float32),
        "weight": rng.normal(size=rows),
        "small": rng.integers(-50, 50, size=rows, dtype=np.int32),
        "ids": rng.integers(-(2**40), 2**40, size=(rows, 3), dtype=np.int64),
        "mask": rng.integers(0, 2, size=rows).astype(bool),
    }


def test_registry_resolves_torch():
    assert isinstance(resolve_runtime("torch"), TorchRuntime)


def test_model_json_signature_and_run_equal_torch(typed_dir):
    model = TorchRuntime().load(typed_dir, settings(typed_dir))
    assert [(s.name, s.dtype, s.shape) for s in model.signature.inputs] == [
        (e["name"], np.dtype(e["dtype"]), tuple(e["shape"])) for e in TYPED_SPEC["inputs"]
    ]
    assert [s.name for s in model.signature.outputs] == [e["name"] for e in TYPED_SPEC["outputs"]]
    batch = typed_batch(4)
    got = model.run(batch)
    scripted = torch.jit.load(str(typed_dir / "model.pt"))
    with torch.no_grad():
        direct = scripted(*(torch.from_numpy(batch[e["name"]]) for e in TYPED_SPEC["inputs"]))
    assert set(got) == set(direct)
    for name, tensor in direct.items():
        expected = tensor.numpy()
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    np.testing.assert_array_equal(got["id_sum"], batch["ids"].sum(axis=1))
    np.testing.assert_array_equal(got["mask_out"], ~batch["mask"])


def test_conversions_output_filter_and_read_only_arrays(typed_dir):
    model = TorchRuntime().load(typed_dir, settings(typed_dir, outputs=("score", "id_sum")))
    assert [s.name for s in model.signature.outputs] == ["score", "id_sum"]
    batch = typed_batch(2)
    expected = model.run(batch)
    assert set(expected) == {"score", "id_sum"}
    loose = dict(batch, x=batch["x"].astype(np.float64), ids=batch["ids"].astype(np.int32) // 7)
    for array in loose.values():
        array.flags.writeable = False  # as arrays decoded straight from a protobuf are
    got = model.run(loose, ("score",))
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    assert list(got) == ["score"]


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("mask"), r"missing input\(s\) mask"),
    (lambda b: b.update(x=np.zeros((2, 5), np.float32)), "dimension 1 must be 4"),
    (lambda b: b.update(ids=np.zeros((2, 3), np.float32)), "input ids: expected int64"),
    (lambda b: b.update(mask=np.zeros(2, np.int64)), "input mask: expected bool"),
    (lambda b: b.update(weight=np.zeros(5)), "disagree on the batch size"),
])
def test_bad_requests_are_invalid_input(typed_dir, change, message):
    model = TorchRuntime().load(typed_dir, settings(typed_dir))
    batch = typed_batch(2)
    change(batch)
    with pytest.raises(InvalidInput, match=message):
        model.run(batch)


def test_tuple_outputs_without_model_json(tmp_path):
    path = save(Pair(), tmp_path / "pair" / "1")
    runtime = TorchRuntime()
    model = runtime.load(path, settings(path))
    # names from forward's arguments; float32 [batch, features] assumed
    assert [(s.name, s.dtype, s.shape) for s in model.signature.inputs] == [
        ("a", np.dtype(np.float32), (-1, -1)), ("b", np.dtype(np.float32), (-1, -1))]
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.ones((3, 2), np.float32)
    got = model.run({"a": a, "b": b})
    np.testing.assert_array_equal(got["output_0"], a + b)
    assert model.run({"a": a, "b": b}, ("output_1",))["output_1"].shape == (3, 1)
    named = runtime.load(path, settings(path, inputs=("b", "a"), outputs=("total", "dot")))
    assert [s.name for s in named.signature.outputs] == ["total", "dot"]
    np.testing.assert_array_equal(named.run({"a": a, "b": b})["dot"], (a * b).sum(1, keepdims=True))
    one = runtime.load(path, settings(path, outputs=("only",)))
    with pytest.raises(RuntimeFailure, match="returned 2 tensors but declares 1"):
        one.run({"a": a, "b": b})
    with pytest.raises(ConfigError, match="must name every input"):
        runtime.load(path, settings(path, inputs=("a",)))


def test_model_json_errors(tmp_path):
    path = save(Pair(), tmp_path / "pair" / "1", {"inputs": [{"name": "a", "dtype": "float32"}]})
    with pytest.raises(ConfigError, match="declares 1 inputs but forward takes 2"):
        TorchRuntime().load(path, settings(path))
    (path / "model.json").write_text(json.dumps({"inputs": [{"name": "a", "dtype": "string"}] * 2}))
    with pytest.raises(ConfigError, match=r"inputs\[0\].dtype"):
        TorchRuntime().load(path, settings(path))
    (path / "model.pt").write_bytes(b"not a zip")
    (path / "model.json").unlink()
    with pytest.raises(RuntimeFailure, match="not a loadable TorchScript file"):
        TorchRuntime().load(path, settings(path))


def test_concurrent_runs_and_warmup(typed_dir):
    model = TorchRuntime().load(typed_dir, settings(typed_dir))
    model.run(synthetic_inputs(model.signature.inputs))
    batches = [typed_batch(rows) for rows in (1, 2, 3, 4)]
    expected = [model.run(batch)["score"] for batch in batches]
    failures: list[int] = []

    def worker(index: int) -> None:
        for _ in range(5):
            if not np.array_equal(model.run(batches[index])["score"], expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    model.close()


def test_home_layout_model_in_bpr_converter_mode(tmp_path):
    from navi.converter import BprConverter
    from navi.pipeline import ServedModel
    from navi.segdense import load_layout_from_dir
    from navi.workload import home_layout_files, make_bprs

    version_dir = tmp_path / "home" / "1"
    home_layout_files(version_dir)
    layout = load_layout_from_dir(version_dir)
    save(Home(layout.widths), version_dir)  # no model.json: names and dtypes from the layout rule
    model_settings = ModelSettings(
        name="home", model_dir=version_dir.parent, runtime="torch",
        batching=BatchingSettings(batch_timeout_ms=1.0, batch_drop_ms=0),
    )
    loaded = TorchRuntime().load(version_dir, model_settings)
    assert {s.name: s.dtype for s in loaded.signature.inputs}["binary"] == np.int64
    # widths unknown without model.json: zeros of the guessed shape are refused as the client's error
    with pytest.raises(InvalidInput, match="cannot be multiplied"):
        loaded.run(synthetic_inputs(loaded.signature.inputs))
    served = ServedModel("home", 1, model_settings, loaded, version_dir=version_dir)
    try:
        assert served.mode == "bpr"
        bprs = make_bprs(layout, 2, candidates=3, seed=5, continuous_per_candidate=40)
        got = served.infer({"examples": np.array(bprs, dtype=object)})
        dense = BprConverter(layout).convert(bprs)
        scripted = torch.jit.load(str(version_dir / "model.pt"))
        with torch.no_grad():
            direct = scripted(*(torch.from_numpy(dense[name]) for name in layout.feed_order)).numpy()
        assert got["output_0"].shape == (6, 1)
        np.testing.assert_allclose(got["output_0"], direct, rtol=1e-6)
    finally:
        served.close()


class EchoUserEmbedding(torch.nn.Module):
    """Returns a view of one of its inputs: the answer aliases the converter's buffer."""

    def forward(self, continuous: torch.Tensor, binary: torch.Tensor, user_embedding: torch.Tensor,
                user_eng_embedding: torch.Tensor, author_embedding: torch.Tensor) -> torch.Tensor:
        return user_embedding[:, :3]


def test_an_answer_aliasing_the_batch_buffer_survives_the_next_batch(tmp_path):
    from navi.converter import BprConverter
    from navi.pipeline import ServedModel
    from navi.segdense import load_layout_from_dir
    from navi.workload import home_layout_files, make_bprs

    version_dir = tmp_path / "echo" / "1"
    home_layout_files(version_dir)
    layout = load_layout_from_dir(version_dir)
    save(EchoUserEmbedding(), version_dir)
    model_settings = ModelSettings(name="echo", model_dir=version_dir.parent, runtime="torch",
                                   batching=BatchingSettings(batch_timeout_ms=0, batch_drop_ms=0))
    served = ServedModel("echo", 1, model_settings, TorchRuntime().load(version_dir, model_settings),
                         version_dir=version_dir)
    try:
        first_bprs, second_bprs = (make_bprs(layout, 1, candidates=4, seed=seed) for seed in (1, 2))
        first = served.infer({"examples": np.array(first_bprs, dtype=object)})
        kept = first["output_0"].copy()
        served.infer({"examples": np.array(second_bprs, dtype=object)})
        expected = BprConverter(layout).convert(first_bprs)["user_embedding"][:, :3]
        np.testing.assert_array_equal(first["output_0"], kept)
        np.testing.assert_array_equal(first["output_0"], expected)
    finally:
        served.close()
