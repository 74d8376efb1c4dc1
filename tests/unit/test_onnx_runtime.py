"""The ONNX Runtime plugin against real model files written into tmp_path."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from navi.demo import build_dense_model, build_home_model, save_model
from navi.errors import ConfigError, InvalidInput, RuntimeFailure
from navi.plugins.base import synthetic_inputs
from navi.plugins.onnx import OnnxModel, OnnxOptions, OnnxRuntime, session_options
from navi.settings import ModelSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_HOME = {"continuous": 40, "binary": 7, "user_embedding": 5, "user_eng_embedding": 5,
              "author_embedding": 5}


def settings_for(model_dir: Path, **fields) -> ModelSettings:
    return ModelSettings(name=model_dir.name, model_dir=model_dir, **fields)


def write_version(tmp_path: Path, model: onnx.ModelProto, name: str = "m") -> Path:
    version_dir = tmp_path / name / "1"
    save_model(model, version_dir / "model.onnx")
    return version_dir


def direct(version_dir: Path, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def home_feed(rows: int, widths: dict[str, int], seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    continuous = rng.normal(0, 1, (rows, widths["continuous"])).astype(np.float32)
    continuous[rng.random(continuous.shape) < 0.4] = np.nan  # missing features
    feed = {
        "continuous": continuous,
        "binary": (rng.random((rows, widths["binary"])) < 0.2).astype(np.int64),
    }
    for name in ("user_embedding", "user_eng_embedding", "author_embedding"):
        feed[name] = rng.normal(0, 1, (rows, widths[name])).astype(np.float32)
    return feed


@pytest.fixture
def dense_version(tmp_path) -> Path:
    return write_version(tmp_path, build_dense_model(), "dense")


def test_dense_model_answers_equal_a_direct_run(dense_version):
    model = OnnxRuntime().load(dense_version, settings_for(dense_version.parent))
    assert isinstance(model, OnnxModel)
    x = np.random.default_rng(0).normal(size=(9, 16)).astype(np.float32)
    got = model.run({"x": x})
    assert list(got) == ["y"]
    np.testing.assert_array_equal(got["y"], direct(dense_version, {"x": x})[0])
    assert got["y"].shape == (9, 4) and got["y"].dtype == np.float32


def test_home_model_answers_equal_a_direct_run_and_zero_nans(tmp_path):
    version_dir = write_version(tmp_path, build_home_model(SMALL_HOME), "home")
    model = OnnxRuntime().load(version_dir, settings_for(version_dir.parent))
    feed = home_feed(12, SMALL_HOME)
    got = model.run(feed, ("output_0",))
    expected = direct(version_dir, feed)[0]
    np.testing.assert_array_equal(got["output_0"], expected)
    assert got["output_0"].shape == (12, 1)
    assert np.all((got["output_0"] > 0) & (got["output_0"] < 1))
    # NaN means "missing" and must act exactly as 0
    zeroed = dict(feed, continuous=np.nan_to_num(feed["continuous"], nan=0.0))
    np.testing.assert_array_equal(model.run(zeroed)["output_0"], expected)


def test_home_signature_follows_the_widths(tmp_path):
    version_dir = write_version(tmp_path, build_home_model(SMALL_HOME), "home")
    signature = OnnxRuntime().load(version_dir, settings_for(version_dir.parent)).signature
    assert [(s.name, s.dtype, s.shape) for s in signature.inputs] == [
        ("continuous", np.dtype(np.float32), (-1, 40)),
        ("binary", np.dtype(np.int64), (-1, 7)),
        ("user_embedding", np.dtype(np.float32), (-1, 5)),
        ("user_eng_embedding", np.dtype(np.float32), (-1, 5)),
        ("author_embedding", np.dtype(np.float32), (-1, 5)),
    ]
    assert [(s.name, s.dtype, s.shape) for s in signature.outputs] == [
        ("output_0", np.dtype(np.float32), (-1, 1))
    ]
    assert signature.extra["producer"] == "navi-demo"
    assert signature.extra["metadata"]["navi.demo"] == "home"


ALL_TYPES = [
    (TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64),
    (TensorProto.FLOAT16, np.float16), (TensorProto.INT8, np.int8),
    (TensorProto.INT16, np.int16), (TensorProto.INT32, np.int32), (TensorProto.INT64, np.int64),
    (TensorProto.UINT8, np.uint8), (TensorProto.UINT16, np.uint16),
    (TensorProto.UINT32, np.uint32), (TensorProto.UINT64, np.uint64),
    (TensorProto.BOOL, np.bool_), (TensorProto.STRING, object),
]


@pytest.fixture
def identity_version(tmp_path) -> Path:
    """One Identity per dtype, with symbolic, unknown and fixed dimensions."""
    inputs, outputs, nodes = [], [], []
    for index, (elem_type, _) in enumerate(ALL_TYPES):
        shape = ["batch", 3] if index % 2 == 0 else [None, "width"]
        inputs.append(helper.make_tensor_value_info(f"in{index}", elem_type, shape))
        outputs.append(helper.make_tensor_value_info(f"out{index}", elem_type, shape))
        nodes.append(helper.make_node("Identity", [f"in{index}"], [f"out{index}"]))
    graph = helper.make_graph(nodes, "identities", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return write_version(tmp_path, model, "identity")


def test_signature_maps_every_onnx_type_and_symbolic_dims(identity_version):
    model = OnnxRuntime().load(identity_version, settings_for(identity_version.parent))
    for index, (_, np_type) in enumerate(ALL_TYPES):
        spec = model.signature.inputs[index]
        assert spec.name == f"in{index}"
        assert spec.dtype == np.dtype(np_type)
        assert spec.shape == ((-1, 3) if index % 2 == 0 else (-1, -1))
        assert model.signature.outputs[index].dtype == np.dtype(np_type)


def test_every_dtype_round_trips_and_warmup_runs(identity_version):
    model = OnnxRuntime().load(identity_version, settings_for(identity_version.parent))
    model.run(synthetic_inputs(model.signature.inputs))  # strings included: empty bytes
    feed = {}
    for index, (_, np_type) in enumerate(ALL_TYPES):
        if np_type is object:
            value = np.array([[b"a", b"bc", b""], [b"\xc3\xa9", b"x", b"yz"]], dtype=object)
        else:
            value = (np.arange(6).reshape(2, 3) % 2).astype(np_type)
        feed[f"in{index}"] = value
    got = model.run(feed)
    assert list(got) == [f"out{i}" for i in range(len(ALL_TYPES))]
    for index, (_, np_type) in enumerate(ALL_TYPES):
        if np_type is object:
            # ONNX Runtime hands strings back as str: the same text, not the bytes' repr
            assert got[f"out{index}"].tolist() == [["a", "bc", ""], ["\u00e9", "x", "yz"]]
            bad = dict(feed, **{f"in{index}": np.array([[b"\xff"] * 3] * 2, dtype=object)})
            with pytest.raises(InvalidInput, match="UTF-8"):
                model.run(bad)
        else:
            np.testing.assert_array_equal(got[f"out{index}"], feed[f"in{index}"])


def test_bad_inputs_raise_invalid_input(dense_version):
    model = OnnxRuntime().load(dense_version, settings_for(dense_version.parent))
    good = np.zeros((2, 16), np.float32)
    with pytest.raises(InvalidInput, match="dimensions"):
        model.run({"x": np.zeros((2, 15), np.float32)})
    with pytest.raises(InvalidInput, match="data type"):
        model.run({"x": good.astype(np.float64)})
    with pytest.raises(InvalidInput, match="needs input"):
        model.run({})
    with pytest.raises(InvalidInput, match="input name"):
        model.run({"x": good, "extra": good})
    with pytest.raises(InvalidInput, match="output"):
        model.run({"x": good}, ("nope",))
    model.run({"x": good})  # the model keeps working after each error


def test_runs_from_several_threads_agree(dense_version):
    model = OnnxRuntime().load(dense_version, settings_for(dense_version.parent))
    batches = [np.random.default_rng(seed).normal(size=(seed + 1, 16)).astype(np.float32)
               for seed in range(32)]
    expected = [model.run({"x": batch})["y"] for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda batch: model.run({"x": batch})["y"], batches))
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(want, have)


def test_close_drops_the_session(dense_version):
    model = OnnxRuntime().load(dense_version, settings_for(dense_version.parent))
    model.close()
    with pytest.raises(RuntimeFailure, match="closed"):
        model.run({"x": np.zeros((1, 16), np.float32)})
    model.close()  # idempotent


def test_load_failures(tmp_path):
    runtime = OnnxRuntime()
    empty = tmp_path / "m" / "1"
    empty.mkdir(parents=True)
    assert not runtime.is_complete(empty)
    with pytest.raises(RuntimeFailure, match="does not exist"):
        runtime.load(empty, settings_for(empty.parent))
    (empty / "model.onnx").write_bytes(b"not a model")
    assert runtime.is_complete(empty)
    with pytest.raises(RuntimeFailure, match="cannot load"):
        runtime.load(empty, settings_for(empty.parent))


# --- options --------------------------------------------------------------------------------

def options(tmp_path, intra=1, inter=1, **runtime_options) -> OnnxOptions:
    return OnnxOptions.from_settings(settings_for(
        tmp_path, intra_op_parallelism=intra, inter_op_parallelism=inter,
        runtime_options=runtime_options))


def test_default_session_options(tmp_path):
    so, providers = session_options(options(tmp_path))
    assert so.intra_op_num_threads == 1
    assert so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.enable_profiling is False
    assert providers == ["CPUExecutionProvider"]


def test_session_options_follow_the_flags(tmp_path):
    parsed = options(tmp_path, intra=3, inter=2, onnx_use_parallel_mode="TRUE",
                     onnx_use_memory_pattern="0", onnx_allow_spinning="yes",
                     profiling=str(tmp_path / "prof"))
    so, _ = session_options(parsed)
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 2)
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.enable_mem_pattern is False
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.enable_profiling is True


def test_empty_values_mean_not_given(tmp_path):
    parsed = options(tmp_path, onnx_gpu_ep="", onnx_ep_options="", onnx_use_parallel_mode="",
                     profiling="")
    assert parsed == options(tmp_path)


@pytest.mark.parametrize(
    ("runtime_options", "key"),
    [
        ({"onnx_use_parallel_mode": "maybe"}, "onnx_use_parallel_mode"),
        ({"onnx_use_memory_pattern": "2"}, "onnx_use_memory_pattern"),
        ({"onnx_allow_spinning": "sometimes"}, "onnx_allow_spinning"),
        ({"onnx_gpu_ep": "rocm"}, "onnx_gpu_ep"),
        ({"onnx_gpu_ep": "cuda", "onnx_ep_options": "device_id"}, "onnx_ep_options"),
        ({"onnx_gpu_ep": "cuda", "onnx_ep_options": "=3"}, "onnx_ep_options"),
        ({"onnx_gpu_ep": "cuda", "onnx_ep_options": "a=1,a=2"}, "onnx_ep_options"),
        ({"onnx_ep_options": "device_id=0"}, "onnx_ep_options"),
        ({"onnx_global_thread_pool_options": "intra_op_num_threads=two"},
         "onnx_global_thread_pool_options"),
        ({"onnx_global_thread_pool_options": "threads=2"}, "onnx_global_thread_pool_options"),
        ({"onnx_global_thread_pool_options": "inter_op_num_threads=-1"},
         "onnx_global_thread_pool_options"),
        ({"onnx_use_paralel_mode": "true"}, "onnx_use_paralel_mode"),
    ],
)
def test_bad_option_values_name_the_option(tmp_path, runtime_options, key):
    with pytest.raises(ConfigError) as info:
        OnnxRuntime().check_options(settings_for(tmp_path, runtime_options=runtime_options))
    assert info.value.key == key
    assert key in str(info.value)


def test_ep_options_are_parsed(tmp_path):
    parsed = options(tmp_path, onnx_gpu_ep="CUDA", onnx_ep_options=" device_id=0, gpu_mem_limit = 2 ")
    assert parsed.gpu_ep == "cuda"
    assert parsed.ep_options == {"device_id": "0", "gpu_mem_limit": "2"}


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this build has CUDA; the fallback path is not taken")
def test_unavailable_gpu_ep_falls_back_to_cpu_with_a_log_line(dense_version, caplog):
    settings = settings_for(dense_version.parent, runtime_options={
        "onnx_gpu_ep": "cuda", "onnx_ep_options": "device_id=0"})
    with caplog.at_level(logging.WARNING, logger="navi.plugins.onnx"):
        model = OnnxRuntime().load(dense_version, settings)
    assert model.providers == ("CPUExecutionProvider",)
    assert any("CUDAExecutionProvider" in record.getMessage() for record in caplog.records)
    model.run({"x": np.zeros((1, 16), np.float32)})


def test_profiling_writes_a_profile_on_close(dense_version, tmp_path):
    prefix = tmp_path / "profile"
    model = OnnxRuntime().load(dense_version, settings_for(
        dense_version.parent, runtime_options={"profiling": str(prefix)}))
    model.run({"x": np.zeros((2, 16), np.float32)})
    model.close()
    profiles = list(tmp_path.glob("profile*.json"))
    assert len(profiles) == 1
    assert isinstance(json.loads(profiles[0].read_text()), list)


def test_global_thread_pool_is_shared_by_every_session(dense_version):
    # a fresh interpreter: the pool is process-wide and cannot be undone
    code = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from navi.errors import ConfigError
        from navi.plugins.onnx import OnnxRuntime
        from navi.settings import ModelSettings
        version_dir = Path({str(dense_version)!r})
        def settings(pool):
            return ModelSettings(name="dense", model_dir=version_dir.parent,
                                 runtime_options={{"onnx_global_thread_pool_options": pool}})
        first = OnnxRuntime().load(version_dir, settings("intra_op_num_threads=1,inter_op_num_threads=1"))
        # a model without the option joins the same pool (ONNX Runtime allows nothing else)
        second = OnnxRuntime().load(version_dir, ModelSettings(name="d", model_dir=version_dir.parent))
        for model in (first, second):
            assert model.run({{"x": np.ones((2, 16), np.float32)}})["y"].shape == (2, 4)
        try:
            OnnxRuntime().load(version_dir, settings("intra_op_num_threads=2"))
        except ConfigError as exc:
            assert exc.key == "onnx_global_thread_pool_options", exc
            print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
