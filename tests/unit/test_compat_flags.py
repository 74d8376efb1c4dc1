"""Every flag of the original Navi's cli_args.rs is accepted with its meaning; metric units."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from navi.cli.serve import IGNORED_FLAGS, serve
from navi.config import RUNTIME_MARKERS, build_settings, detect_runtime
from navi.errors import ConfigError
from navi.metrics import Metrics, customop_version, version_number

#: the original's Args (navi/navi/src/cli_args.rs): long flag -> short flag or None
ORIGINAL_FLAGS = {
    "--port": "-p", "--prometheus-port": None, "--num-worker-threads": "-n",
    "--max-blocking-threads": None, "--max-batch-size": None, "--batch-time-out-millis": "-b",
    "--batch-drop-millis": None, "--model-check-interval-secs": None, "--model-dir": "-m",
    "--meta-json-dir": None, "--ssl-dir": "-s", "--modelsync-cli": None, "--versions-per-model": None,
    "--customops-lib": "-c", "--intra-op-parallelism": None, "--inter-op-parallelism": None,
    "--serving-sig": None, "--input": None, "--output": None, "--max-warmup-records": None,
    "--onnx-global-thread-pool-options": None, "--onnx-use-parallel-mode": None,
    "--onnx-use-memory-pattern": None, "--onnx-ep-options": None, "--onnx-gpu-ep": None,
    "--onnx-use-converter": None, "--profiling": None, "--onnx-report-discrete-feature-ids": None,
    "--onnx-report-continuous-feature-ids": None,
}


def test_every_original_flag_and_short_form_is_accepted():
    options = {opt: param for param in serve.params for opt in param.opts}
    for flag, short in ORIGINAL_FLAGS.items():
        assert flag in options, flag
        if short is not None:
            assert short in options and options[short] is options[flag], (flag, short)


def test_help_documents_the_thread_and_custom_op_flags():
    text = CliRunner().invoke(serve, ["--help"], terminal_width=200).output
    for flag in ("--num-worker-threads", "--max-blocking-threads", "--customops-lib"):
        assert flag in text
    assert "no effect" in text and "CPU" in text
    assert IGNORED_FLAGS.count("max_blocking_threads") == 1


def test_num_worker_threads_is_grpc_threads_unless_that_is_given(tmp_path):
    assert build_settings({"--num-worker-threads": 8}, None, [tmp_path]).grpc_threads == 8
    both = build_settings({"--num-worker-threads": 8, "--grpc-threads": 3}, None, [tmp_path])
    assert both.grpc_threads == 3
    with pytest.raises(ConfigError, match="--num-worker-threads"):
        build_settings({"--num-worker-threads": 0}, None, [tmp_path])


def test_customops_lib_is_comma_separated_for_every_model(tmp_path):
    settings = build_settings({"--model-dir": [str(tmp_path / "a"), str(tmp_path / "b")],
                               "--customops-lib": "/x/one.so, /y/two.so"}, None)
    assert [m.customops_libs for m in settings.models] == [(Path("/x/one.so"), Path("/y/two.so"))] * 2


def test_runtime_is_detected_from_the_newest_version(tmp_path):
    model = tmp_path / "click"
    (model / "100").mkdir(parents=True)
    (model / "100" / "model.onnx").write_bytes(b"")
    (model / "2000").mkdir()
    (model / "2000" / "saved_model.pb").write_bytes(b"")
    assert detect_runtime(model) == "tf"
    assert detect_runtime(tmp_path / "absent") is None
    assert build_settings({"--model-dir": [str(model)]}, None).models[0].runtime == "tf"
    # a runtime given by flag wins
    flagged = build_settings({"--model-dir": [str(model)], "--runtime": ["onnx"]}, None)
    assert flagged.models[0].runtime == "onnx"
    # nothing there yet (e.g. --modelsync-cli fetches it later): the default
    assert build_settings({"--model-dir": [str(tmp_path / "empty")]}, None).models[0].runtime == "onnx"


def test_runtime_markers_are_the_plugins_model_files():
    from navi.plugins.onnx import OnnxRuntime
    from navi.plugins.torch import TorchRuntime

    markers = dict(RUNTIME_MARKERS)
    assert markers[OnnxRuntime.model_filename] == "onnx"
    assert markers[TorchRuntime.model_filename] == "torch"
    assert markers["saved_model.pb"] == markers["saved_model.pbtxt"] == "tf"


# ---- --onnx-ep-options without --onnx-gpu-ep: the CPU provider's options


def _onnx_options(tmp_path, **runtime_options):
    from navi.plugins.onnx import OnnxOptions

    settings = build_settings({"--model-dir": [str(tmp_path / "m")]}, None).models[0]
    return OnnxOptions.from_settings(settings.model_copy(update={"runtime_options": runtime_options}))


@pytest.mark.parametrize("value, arena", [("use_arena=true", True), ("use_arena=false", False)])
def test_cpu_ep_options_set_the_memory_arena(tmp_path, value, arena):
    from navi.plugins.onnx import session_options

    options = _onnx_options(tmp_path, onnx_ep_options=value)
    assert options.cpu_mem_arena is arena
    so, providers = session_options(options)
    assert so.enable_cpu_mem_arena is arena and providers == ["CPUExecutionProvider"]


def test_unknown_cpu_ep_option_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="'device_id' is not an option of the CPU"):
        _onnx_options(tmp_path, onnx_ep_options="device_id=0")
    with pytest.raises(ConfigError, match="expected true or false"):
        _onnx_options(tmp_path, onnx_ep_options="use_arena=maybe")


def test_bad_custom_op_library_is_a_config_error(tmp_path):
    from navi.plugins.onnx import OnnxRuntime

    settings = build_settings({"--model-dir": [str(tmp_path / "m")],
                               "--customops-lib": str(tmp_path / "nope.so")}, None).models[0]
    with pytest.raises(ConfigError, match="nope.so"):
        OnnxRuntime().check_options(settings)


# ---- metric values and units


def test_version_numbers_as_the_original():
    assert version_number("1.2.3") == 1_002_003
    assert version_number("0.1.0") == 1_000
    assert version_number("1.2") is None and version_number("1.2.3rc1") is None


def test_customop_version_is_the_last_four_hex_digits_of_sha256(tmp_path):
    import hashlib

    library = tmp_path / "lib.so"
    library.write_bytes(b"custom ops")
    assert customop_version(library) == int(hashlib.sha256(b"custom ops").hexdigest()[-4:], 16)


class _Registry:
    def model_names(self):
        return ["m"]


def test_request_metrics_in_milliseconds_and_score_sum():
    from navi.server.dataplane import RequestMetrics

    metrics = Metrics()
    counts = RequestMetrics(metrics, _Registry())
    series = counts.received("m")
    counts.answered(series, 3, time.monotonic() - 0.05, {"p": np.array([[0.25], [0.5], [0.75]], np.float32)})
    counts.answered(series, 1, time.monotonic(), {"p": np.array([[-2.0]], np.float32)})  # not added
    value = metrics.registry.get_sample_value
    assert 50 <= value(":navi:response_time_sum", {"model_name": "m"}) < 5000  # ms, not s
    assert value(":navi:num_predictions", {"model_name": "m"}) == 2
    assert value(":navi:predicted_rows_total", {"model_name": "m"}) == 4
    assert value(":navi:prediction_score_sum", {"model_name": "m"}) == 0.25
    assert value(":navi:num_requests") == 1


def test_tensorflow_custom_op_library_that_does_not_load_is_a_config_error(tmp_path):
    from navi.plugins.tensorflow import TensorFlowRuntime

    not_a_library = tmp_path / "ops.so"
    not_a_library.write_bytes(b"not an ELF file")
    settings = build_settings({"--model-dir": [str(tmp_path / "m")], "--runtime": ["tf"],
                               "--customops-lib": str(not_a_library)}, None).models[0]
    with pytest.raises(ConfigError, match="TensorFlow cannot load custom-op library .*ops.so"):
        TensorFlowRuntime().check_options(settings)


def test_torch_models_refuse_custom_op_libraries_at_start_up(tmp_path):
    from navi.cli.serve import _check_runtimes

    settings = build_settings({"--model-dir": [str(tmp_path / "m")], "--runtime": ["torch"],
                               "--customops-lib": "/x/ops.so"}, None)
    with pytest.raises(ConfigError, match="does not load custom-op libraries"):
        _check_runtimes(settings)
