"""ServedModel on real ONNX models built in the test (dense and BPR modes)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from navi.errors import InvalidInput
from navi.metrics import Metrics
from navi.pipeline import ServedModel, cast_into, castable
from navi.plugins import resolve_runtime
from navi.settings import BatchingSettings, ModelSettings

WAIT_S = 30.0


def dense_model(path, version=1.0):
    """x float32 [?,3], k int64 [?,1] -> output_0 = x * 2 + version, count = k + 1."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "ver"], ["output_0"]),
        helper.make_node("Add", ["k", "one"], ["count"]),
    ]
    graph = helper.make_graph(
        nodes, "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("k", TensorProto.INT64, ["n", 1])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("count", TensorProto.INT64, ["n", 1])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("ver", TensorProto.FLOAT, [], [float(version)]),
         helper.make_tensor("one", TensorProto.INT64, [], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    return path


def serve(version_dir, metrics=None, model=None, **batching):
    settings = ModelSettings(
        name="m", model_dir=version_dir.parent, outputs=(), **(model or {}),
        batching=BatchingSettings(**{"batch_timeout_ms": 1.0, "batch_drop_ms": 0,
                                    "eager_when_idle": False, **batching}),
    )
    runtime = resolve_runtime("onnx")
    loaded = runtime.load(version_dir, settings)
    return ServedModel("m", 1, settings, loaded, version_dir=version_dir, metrics=metrics)


def concurrent_infer(served, requests):
    """Each request's ``infer`` on its own thread, as the servers' handler threads call it."""
    pool = ThreadPoolExecutor(len(requests))
    futures = [pool.submit(served.infer, r) for r in requests]
    pool.shutdown(wait=False)
    return futures


def test_dense_signature_detected_from_model(tmp_path):
    served = serve(dense_model(tmp_path / "m" / "1"))
    assert served.mode == "dense"
    assert [s.name for s in served.signature.inputs] == ["x", "k"]
    assert [s.name for s in served.signature.outputs] == ["output_0", "count"]
    served.close()


def test_dense_requests_batched_and_split_with_dtype_conversion(tmp_path):
    metrics = Metrics()
    served = serve(dense_model(tmp_path / "m" / "1", version=5), metrics=metrics,
                   max_batch_size=4, batch_timeout_ms=200)
    requests = [
        {"x": np.full((2, 3), 1.0, np.float64), "k": np.array([[1], [2]], np.int32)},
        {"x": np.full((1, 3), 2.0, np.float32), "k": np.array([[7]], np.int64)},
        {"x": np.full((3, 3), 3.0, np.float32), "k": np.array([[0], [0], [0]], np.int64)},
        {"x": np.full((1, 3), 4.0, np.float32), "k": np.array([[9]], np.int64)},
    ]
    futures = concurrent_infer(served, requests)
    results = [f.result(WAIT_S) for f in futures]
    for request, result in zip(requests, results):
        expected = request["x"].astype(np.float32) * 2 + 5
        np.testing.assert_array_equal(result["output_0"], expected)
        np.testing.assert_array_equal(result["count"], request["k"].astype(np.int64) + 1)
    assert result["count"].dtype == np.int64
    batches = metrics.registry.get_sample_value(":navi:num_batch_prediction")
    assert batches is not None and batches < 4  # at least two requests shared a batch
    served.close()


def test_output_filter(tmp_path):
    served = serve(dense_model(tmp_path / "m" / "1"))
    out = served.infer({"x": np.zeros((1, 3), np.float32), "k": np.zeros((1, 1), np.int64)}, ("count",))
    assert list(out) == ["count"]
    with pytest.raises(InvalidInput, match="no output 'nope'"):
        served.infer({"x": np.zeros((1, 3), np.float32), "k": np.zeros((1, 1), np.int64)},
                     ("nope",))
    served.close()


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"x": np.zeros((1, 3), np.float32)}, "needs input k"),
        ({"x": np.zeros((1, 3), np.float32), "k": np.zeros((1, 1), np.int64),
          "z": np.zeros(1)}, "no input 'z'"),
        ({"x": np.zeros((1, 3), np.int64), "k": np.zeros((1, 1), np.int64)}, "dtype int64"),
        ({"x": np.zeros((1, 4), np.float32), "k": np.zeros((1, 1), np.int64)}, r"shape \[1, 4\]"),
        ({"x": np.zeros((2, 3), np.float32), "k": np.zeros((1, 1), np.int64)}, "disagree"),
    ],
)
def test_dense_invalid_inputs(tmp_path, inputs, message):
    served = serve(dense_model(tmp_path / "m" / "1"))
    with pytest.raises(InvalidInput, match=message):
        served.infer(inputs)
    served.close()


def test_castable_rules():
    assert castable(np.dtype(np.float64), np.dtype(np.float32))
    assert castable(np.dtype(np.int32), np.dtype(np.int64))
    assert not castable(np.dtype(np.float32), np.dtype(np.int64))
    assert not castable(np.dtype(np.int64), np.dtype(np.float32))
    assert castable(np.dtype(object), np.dtype(object))


def test_cast_into_converts_rows_in_place():
    dst = np.zeros((5, 2), np.float32)
    cast_into(np.ones((2, 2), np.float64), dst, 2)
    assert dst[:, 0].tolist() == [0, 0, 1, 1, 0]


def test_bpr_mode_batches_and_cuts_rows_by_candidates(tmp_path):
    from navi.demo import write_home_version
    from navi.errors import DecodeError
    from navi.segdense import load_layout_from_dir
    from navi.workload import make_bprs

    version_dir = write_home_version(tmp_path / "home", hidden=(8,), version=1)
    metrics = Metrics()
    served = serve(version_dir, metrics=metrics, max_batch_size=3, batch_timeout_ms=500)
    assert served.mode == "bpr"
    assert [(s.name, s.dtype) for s in served.signature.inputs] == [("examples", np.dtype(object))]
    layout = load_layout_from_dir(version_dir)
    requests = [make_bprs(layout, 1, candidates=c, seed=c, continuous_per_candidate=50)
                for c in (3, 1, 5)]
    futures = concurrent_infer(served, [{"any_name": np.array(r, dtype=object)} for r in requests])
    results = [f.result(WAIT_S)["output_0"] for f in futures]
    assert [r.shape for r in results] == [(3, 1), (1, 1), (5, 1)]
    # the same rows alone give the same answers: nothing leaked between requests
    alone = served.infer({"examples": np.array(requests[2], dtype=object)})
    np.testing.assert_allclose(alone["output_0"], results[2], rtol=1e-5)
    assert metrics.registry.get_sample_value(":navi:converter_time_count",
                                             {"model_name": "m"}) >= 1
    with pytest.raises(DecodeError):
        served.infer({"examples": np.array([b"\x0f\xff garbage"], dtype=object)})
    served.close()


def test_input_names_model_inputs_in_dense_mode(tmp_path):
    version_dir = dense_model(tmp_path / "m" / "1")
    ordered = serve(version_dir, model={"inputs": ("k", "x")})
    assert [s.name for s in ordered.signature.inputs] == ["k", "x"]
    ordered.close()
    for detect in ((), ("examples",)):  # empty and the original's default both mean detect
        detected = serve(version_dir, model={"inputs": detect})
        assert [s.name for s in detected.signature.inputs] == ["x", "k"]
        detected.close()
    from navi.errors import ConfigError

    with pytest.raises(ConfigError, match="missing: k"):
        serve(version_dir, model={"inputs": ("x",)})
    with pytest.raises(ConfigError, match="unknown: other"):  # dense mode: no client tensor to name
        serve(version_dir, model={"inputs": ("other",)})


def test_input_names_client_tensor_in_bpr_mode(tmp_path):
    from navi.demo import write_home_version

    version_dir = write_home_version(tmp_path / "home", hidden=(8,), version=1)
    for model, client in [({}, "examples"), ({"inputs": ()}, "examples"), ({"inputs": ("bprs",)}, "bprs"),
                          ({"inputs": ("bprs",), "bpr_input_name": "requests"}, "requests")]:
        served = serve(version_dir, model=model)
        assert served.mode == "bpr"
        assert [(s.name, s.dtype) for s in served.signature.inputs] == [(client, np.dtype(object))]
        assert ModelSettings(name="m", model_dir=tmp_path, **model).request_tensor_name == client
        served.close()


def test_a_model_run_is_announced_to_the_handler_pool_as_a_sleep_of_its_usual_length(tmp_path):
    """The run (outside the GIL) lets the caller's pool admit another request; its expected
    length is the model's recent run time, so a long model run gives its place and a short one does not."""
    import time

    from navi.batching import sleep

    served = serve(dense_model(tmp_path / "1"), eager_when_idle=True)
    run = served.model.run

    def slow_run(feeds, wanted):
        time.sleep(0.03)  # a model that runs 30 ms
        return run(feeds, wanted)

    served.model.run = slow_run
    announced, woken = [], []

    def caller():
        sleep.set_sleep_hooks(announced.append, lambda: woken.append(len(announced)))
        request = {"x": np.ones((2, 3), np.float32), "k": np.ones((2, 1), np.int64)}
        return [served.infer(request)["output_0"].tolist() for _ in range(3)]

    try:
        with ThreadPoolExecutor(1) as thread:
            answers = thread.submit(caller).result(WAIT_S)
    finally:
        served.close()
    assert answers == [[[3.0] * 3] * 2] * 3
    assert announced[0] == 0.0  # nothing measured yet
    assert all(expected >= 0.03 for expected in announced[1:])  # the run's own length
    assert woken == [1, 2, 3]  # each announced sleep ends when its run does


def test_bpr_requests_of_no_rows_are_answered_empty_whatever_buffers_are_free(tmp_path):
    """A request of no BPRs (TF REST `{"instances": []}`) in a batch of no rows, while no
    converter buffers are free (a fresh model, or every set taken by running batches): found
    by the REST wire fuzz as a TypeError answered HTTP 500."""
    from navi.demo import write_home_version

    version_dir = write_home_version(tmp_path / "home", hidden=(8,), version=1)
    served = serve(version_dir, max_batch_size=4, batch_timeout_ms=200)
    empty = {"examples": np.array([], dtype=object)}
    first = served.infer(empty)  # the first request of the model: no buffers made yet
    assert first["output_0"].shape == (0, 1)
    together = [f.result(WAIT_S)["output_0"].shape for f in concurrent_infer(served, [empty, empty])]
    assert together == [(0, 1), (0, 1)]
    served.close()
