"""navi.config: flags layered over a YAML/TOML file into one ServerSettings."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from navi.cli.main import main
from navi.config import build_settings, load_config_file, model_name_of
from navi.errors import ConfigError


def test_defaults_serve_the_default_model_dir(tmp_path):
    settings = build_settings({}, None, [tmp_path / "models" / "home"])
    assert settings.port == 8500 and settings.prometheus_port == 9000
    (model,) = settings.models
    assert model.name == "home" and model.runtime == "onnx"
    assert model.batching.max_batch_size == 16


def test_model_name_is_last_path_component():
    assert model_name_of("models/pvideo/") == "pvideo"
    assert model_name_of(Path("/a/b/home")) == "home"


def test_per_model_flag_once_applies_to_all():
    settings = build_settings({"--model-dir": ["m/a", "m/b"], "--max-batch-size": [4]})
    assert [m.batching.max_batch_size for m in settings.models] == [4, 4]


def test_per_model_flag_n_times_maps_in_order():
    settings = build_settings({
        "--model-dir": ["m/a", "m/b"],
        "--max-batch-size": [4, 8],
        "--batch-time-out-millis": [1.5, 3],
        "--input": ["x,y", ""],
        "--output": ["out", "p,q"],
        "--onnx-use-converter": ["home", ""],
    })
    a, b = settings.models
    assert (a.name, a.batching.max_batch_size, a.batching.batch_timeout_ms) == ("a", 4, 1.5)
    assert (b.name, b.batching.max_batch_size, b.batching.batch_timeout_ms) == ("b", 8, 3.0)
    assert a.inputs == ("x", "y") and b.inputs == ()
    assert a.outputs == ("out",) and b.outputs == ("p", "q")
    assert a.converter == "home" and b.converter == "none"


def test_per_model_flag_count_mismatch_names_the_flag():
    with pytest.raises(ConfigError, match="^--max-batch-size: given 3 times for 2"):
        build_settings({"--model-dir": ["m/a", "m/b"], "--max-batch-size": [1, 2, 3]})


def test_global_flags_and_onnx_options():
    settings = build_settings({
        "--model-dir": ["m/a"],
        "--port": 9100,
        "--batch-drop-millis": 0,
        "--max-batch-rows": 512,
        "--onnx-use-parallel-mode": "true",
        "--onnx-gpu-ep": "cuda",
        "--ssl-dir": "/tmp/certs",
    })
    assert settings.port == 9100 and settings.ssl_dir == Path("/tmp/certs")
    (model,) = settings.models
    assert model.batching.batch_drop_ms == 0 and model.batching.max_batch_rows == 512
    assert model.runtime_options == {"onnx_use_parallel_mode": "true", "onnx_gpu_ep": "cuda"}


def test_onnx_options_skip_other_runtimes():
    settings = build_settings({
        "--model-dir": ["m/a", "m/b"], "--runtime": ["onnx", "tf"], "--profiling": "/tmp/p",
    })
    assert settings.models[0].runtime_options == {"profiling": "/tmp/p"}
    assert settings.models[1].runtime_options == {}


YAML = """
port: 8600
defaults:
  batching: {batch_timeout_ms: 5}
models:
  - model_dir: repo/home
    batching: {max_batch_size: 32}
    bpr_input_name: requests
  - name: dense
    model_dir: /abs/dense_dir
    runtime: onnx
    inputs: []
"""

TOML = """
port = 8600
[defaults.batching]
batch_timeout_ms = 5
[[models]]
model_dir = "repo/home"
batching = { max_batch_size = 32 }
bpr_input_name = "requests"
[[models]]
name = "dense"
model_dir = "/abs/dense_dir"
inputs = []
"""


@pytest.mark.parametrize("suffix, text", [(".yaml", YAML), (".toml", TOML)])
def test_config_file(tmp_path, suffix, text):
    path = tmp_path / f"navi{suffix}"
    path.write_text(text)
    settings = build_settings({}, path)
    home, dense = settings.models
    assert settings.port == 8600
    assert home.name == "home" and home.model_dir == tmp_path / "repo" / "home"
    assert home.batching.max_batch_size == 32 and home.batching.batch_timeout_ms == 5
    # the BPR client's tensor by its own key; --input keeps its default
    assert home.request_tensor_name == "requests" and home.inputs == ("examples",)
    assert dense.request_tensor_name == "examples"
    assert dense.name == "dense" and dense.model_dir == Path("/abs/dense_dir") and dense.inputs == ()


def test_flags_override_file(tmp_path):
    path = tmp_path / "navi.yaml"
    path.write_text(YAML)
    settings = build_settings({"--port": 1234, "--max-batch-size": [2]}, path)
    assert settings.port == 1234
    assert [m.batching.max_batch_size for m in settings.models] == [2, 2]
    # --model-dir picks the models; the file's section of the same name still applies
    settings = build_settings({"--model-dir": ["elsewhere/home"]}, path)
    (home,) = settings.models
    assert home.model_dir == Path("elsewhere/home") and home.batching.max_batch_size == 32


def test_file_error_names_the_key(tmp_path):
    path = tmp_path / "navi.yaml"
    path.write_text("models:\n  - model_dir: a\n  - model_dir: b\n    batching: {max_batch_size: 0}\n")
    with pytest.raises(ConfigError) as info:
        build_settings({}, path)
    assert str(info.value).startswith(f"{path}: models[1].batching.max_batch_size: ")


def test_file_unknown_key(tmp_path):
    path = tmp_path / "navi.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"navi.toml: prot: Extra inputs are not permitted"):
        build_settings({}, path)


def test_file_syntax_error(tmp_path):
    path = tmp_path / "navi.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(path)


def test_duplicate_model_names():
    with pytest.raises(ConfigError, match="'home' is used twice"):
        build_settings({"--model-dir": ["a/home", "b/home"]})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-batch-size", "0"], "--max-batch-size: models[0]: Input should be greater than or equal to 1"),
        (["--max-batch-size", "x"], "'x' is not a valid integer"),
        (["--port", "70000"], "70000 is not in the range"),
        (["--runtime", "nope"], "models[0] (home): runtime"),
        (["--onnx-use-parallel-mode", "maybe", "--runtime", "onnx"], "onnx_use_parallel_mode"),
    ],
)
def test_cli_bad_values_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, ["serve", "--model-dir", str(tmp_path / "home"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_original_short_and_repeated_flags(tmp_path, monkeypatch):
    """The original's short flags and repeated k=v options reach the settings."""
    import navi.cli.serve as serve_module

    seen = {}
    monkeypatch.setattr(serve_module, "run", lambda settings: seen.setdefault("settings", settings) and 0)
    monkeypatch.setattr(serve_module, "_check_runtimes", lambda settings: None)
    result = CliRunner().invoke(main, [
        "serve", "-p", "8600", "-m", str(tmp_path / "a"), "-b", "3", "-s", str(tmp_path),
        "--onnx-gpu-ep", "cuda", "--onnx-ep-options", "device_id=0", "--onnx-ep-options", "x=1",
        "-n", "4", "--max-blocking-threads", "14",
    ])
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.port == 8600 and settings.ssl_dir == tmp_path
    (model,) = settings.models
    assert model.name == "a" and model.batching.batch_timeout_ms == 3
    assert model.runtime_options["onnx_ep_options"] == "device_id=0,x=1"


def test_bool_flag_values():
    from navi.settings import parse_bool

    assert parse_bool("true") is True and parse_bool("OFF") is False and parse_bool(True) is True
    assert parse_bool(" Yes ") is True and parse_bool("0") is False
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool("maybe")
