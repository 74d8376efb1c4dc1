"""TensorFlowRuntime on real SavedModels built here: a tf.Module with every Predict dtype, and
an Estimator-style (TF1 builder) model exporting classify / regress signatures."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import tensorflow as tf

from navi.errors import Code, ConfigError, InvalidInput, NaviError, Unimplemented  # noqa: E402
from navi.plugins import resolve_runtime  # noqa: E402
from navi.plugins.base import synthetic_inputs  # noqa: E402
from navi.plugins.tensorflow import TensorFlowRuntime  # noqa: E402
from navi.settings import ModelSettings  # noqa: E402

pytestmark = pytest.mark.tf


from tests.tf_models import build_estimator_style, build_typed, example  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf")
    return {
        "typed": build_typed(root / "typed" / "1"),
        "estimator": build_estimator_style(root / "estimator" / "1"),
    }


def settings(version_dir: Path, **overrides) -> ModelSettings:
    return ModelSettings(name=version_dir.parent.name, model_dir=version_dir.parent, runtime="tf", **overrides)


def typed_batch(rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "f32": rng.normal(size=(rows, 2)).astype(np.float32),
        "f64": rng.normal(size=rows),
        "i32": rng.integers(-100, 100, size=rows, dtype=np.int32),
        "i64": rng.integers(-(2**40), 2**40, size=(rows, 3), dtype=np.int64),
        "flag": rng.integers(0, 2, size=rows).astype(bool),
        "text": np.array([f"row {i} é".encode() for i in range(rows)], dtype=object),
    }


def test_registry_resolves_tf():
    assert isinstance(resolve_runtime("tf"), TensorFlowRuntime)


def test_signature_is_detected_with_every_dtype(models):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    sig = model.signature
    assert sig.method_name == "tensorflow/serving/predict"
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [
        ("f32", np.dtype(np.float32), (-1, 2)),
        ("f64", np.dtype(np.float64), (-1,)),
        ("flag", np.dtype(bool), (-1,)),
        ("i32", np.dtype(np.int32), (-1,)),
        ("i64", np.dtype(np.int64), (-1, 3)),
        ("text", np.dtype(object), (-1,)),
    ]
    assert {s.name: s.dtype for s in sig.outputs} == {
        "score": np.float32, "f64_out": np.float64, "i32_out": np.int32, "i64_out": np.int64,
        "flag_out": np.dtype(bool), "text_len": np.int32, "text_out": np.dtype(object),
    }
    assert sig.extra["signature_name"] == "serving_default"
    assert set(model.signature_defs()) == {"serving_default"}


def test_run_equals_tensorflow_and_every_dtype_round_trips(models):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    batch = typed_batch(4)
    got = model.run(batch)
    direct = tf.saved_model.load(str(models["typed"])).signatures["serving_default"](
        **{name: tf.constant(value) for name, value in batch.items()}
    )
    assert set(got) == set(direct)
    for name, tensor in direct.items():
        expected = tensor.numpy()
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    # values survive the trip: strings, int64 beyond 2**32, bools
    assert list(got["text_out"]) == [t + b"!" for t in batch["text"]]
    np.testing.assert_array_equal(got["i64_out"], batch["i64"].sum(axis=1))
    np.testing.assert_array_equal(got["flag_out"], ~batch["flag"])
    np.testing.assert_array_equal(got["text_len"], [len(t) for t in batch["text"]])


def test_output_filter_and_request_conversions(models):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    batch = typed_batch(2)
    expected = model.run(batch)
    # float64 for a float32 input and int32 for int64 are converted; bytes (S) and str work
    loose = dict(batch, f32=batch["f32"].astype(np.float64), i64=batch["i64"].astype(np.int32),
                 text=np.array([t.decode() for t in batch["text"]]))
    got = model.run(loose, ("score", "text_len"))
    assert set(got) == {"score", "text_len"}
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    np.testing.assert_array_equal(got["text_len"], expected["text_len"])
    as_bytes = model.run(dict(batch, text=batch["text"].astype(bytes)), ("text_out",))
    np.testing.assert_array_equal(as_bytes["text_out"], expected["text_out"])


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("f64"), "missing input(s) f64"),
    (lambda b: b.update(extra=np.zeros(2)), "unexpected input(s) extra"),
    (lambda b: b.update(i32=np.zeros(2, np.float32)), "input i32: expected int32"),
    (lambda b: b.update(f32=np.zeros((2, 3), np.float32)), "dimension 1 must be 2"),
    (lambda b: b.update(f32=np.zeros(2, np.float32)), "expected rank 2"),
    (lambda b: b.update(f64=np.zeros(3)), "disagree on the batch size"),
    (lambda b: b.update(text=np.zeros(2)), "input text: expected strings"),
])
def test_bad_requests_are_invalid_input(models, change, message):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    batch = typed_batch(2)
    change(batch)
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.run(batch)
    with pytest.raises(InvalidInput, match="no output nope"):
        model.run(typed_batch(2), ("nope",))


def test_configured_inputs_and_outputs(models):
    path = models["typed"]
    runtime = TensorFlowRuntime()
    order = ("text", "f32", "f64", "i32", "i64", "flag")
    model = runtime.load(path, settings(path, inputs=order, outputs=("score", "text_len")))
    assert tuple(s.name for s in model.signature.inputs) == order
    assert [s.name for s in model.signature.outputs] == ["score", "text_len"]
    assert set(model.run(typed_batch(1))) == {"score", "text_len"}
    with pytest.raises(ConfigError, match="missing: f64"):
        runtime.load(path, settings(path, inputs=("text", "f32")))
    with pytest.raises(ConfigError, match="not outputs of the model"):
        runtime.load(path, settings(path, outputs=("score", "nope")))
    with pytest.raises(ConfigError, match="no signature 'other'"):
        runtime.load(path, settings(path, serving_signature="other"))


def test_concurrent_runs_get_their_own_answers(models):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    batches = [typed_batch(rows) for rows in (1, 2, 3, 4)]
    expected = [model.run(batch)["score"] for batch in batches]
    failures: list[str] = []

    def worker(index: int) -> None:
        for _ in range(5):
            got = model.run(batches[index])["score"]
            if not np.array_equal(got, expected[index]):
                failures.append(f"batch {index}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_synthetic_request_and_close(models):
    model = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    model.run(synthetic_inputs(model.signature.inputs))  # the string input gets empty strings, which this model accepts
    model.close()


def test_classify_regress_and_signature_defs(models):
    path = models["estimator"]
    model = TensorFlowRuntime().load(path, settings(path))
    assert model.signature.method_name == "tensorflow/serving/classify"
    defs = model.signature_defs()
    assert {name: sig.method_name for name, sig in defs.items()} == {
        "serving_default": "tensorflow/serving/classify",
        "regress": "tensorflow/serving/regress",
        "predict": "tensorflow/serving/predict",
    }
    assert [s.name for s in defs["regress"].inputs] == ["inputs"]
    assert isinstance(defs["regress"].extra["signature_def_proto"], bytes)

    examples = [example(1.0, 2.0), example(-1.0, 0.5), example(0.0, 0.0)]
    direct = tf.saved_model.load(str(path)).signatures
    classes, scores = model.classify(examples)
    want = direct["serving_default"](inputs=tf.constant(examples))
    np.testing.assert_array_equal(classes, want["classes"].numpy())
    np.testing.assert_array_equal(scores, want["scores"].numpy())
    assert classes.shape == scores.shape == (3, 2) and classes[0, 1] == b"pos"
    values = model.regress(examples)
    np.testing.assert_array_equal(values, [3.0, -0.5, 0.0])
    # an explicit signature name, and Predict on another signature
    np.testing.assert_array_equal(model.regress(examples, "regress"), values)
    predicted = model.run_signature("predict", {"examples": np.array(examples, dtype=object)})
    np.testing.assert_array_equal(predicted["scores"], scores)


def test_classify_errors(models):
    estimator = TensorFlowRuntime().load(models["estimator"], settings(models["estimator"]))
    with pytest.raises(InvalidInput, match="required but could not be found"):
        estimator.regress([b""])
    with pytest.raises(InvalidInput, match="method_name to be tensorflow/serving/classify"):
        estimator.classify([example(1, 2)], "regress")
    with pytest.raises(NaviError, match='signature key "nope" not found') as raised:
        estimator.classify([example(1, 2)], "nope")
    assert raised.value.code is Code.FAILED_PRECONDITION
    typed = TensorFlowRuntime().load(models["typed"], settings(models["typed"]))
    with pytest.raises(Unimplemented, match="exports no signature with method_name tensorflow/serving/regress"):
        typed.regress([example(1, 2)])


def test_is_complete(models, tmp_path):
    runtime = TensorFlowRuntime()
    assert runtime.is_complete(models["typed"])
    half = tmp_path / "half"
    (half / "variables").mkdir(parents=True)
    (half / "saved_model.pb").write_bytes((models["typed"] / "saved_model.pb").read_bytes())
    assert not runtime.is_complete(half)  # variables still being copied
