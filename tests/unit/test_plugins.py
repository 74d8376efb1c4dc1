"""The runtime registry: lazy built-ins, entry-point plugins, helpful errors."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from navi import optional
from navi.errors import ConfigError
from navi.plugins import BUILTIN_RUNTIMES, BuiltinRuntime, available_runtimes, resolve_runtime
from navi.plugins.base import Runtime

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_onnx_resolves_to_the_onnx_runtime():
    runtime = resolve_runtime("onnx")
    assert isinstance(runtime, Runtime)
    assert runtime.name == "onnx"
    assert runtime.model_filename == "model.onnx"
    assert resolve_runtime(" ONNXRuntime ").name == "onnx"  # alias, any case


def test_resolving_onnx_imports_neither_tensorflow_nor_torch():
    # a fresh interpreter: this test process may already hold TF or torch
    code = textwrap.dedent(
        """
        import json, sys
        from navi.plugins import resolve_runtime, available_runtimes
        runtime = resolve_runtime("onnx")
        available_runtimes()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "torch", "keras"))
        print(json.dumps({"name": runtime.name, "loaded": loaded}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"name": "onnx", "loaded": []}


def test_unknown_runtime_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        resolve_runtime("caffe")
    message = str(info.value)
    assert "caffe" in message
    for name in ("onnx", "tf", "torch"):
        assert name in message
    assert info.value.key == "runtime"


def test_missing_framework_gives_the_install_line(monkeypatch):
    # a built-in whose framework is absent: the message names the extra and the exact line
    monkeypatch.setitem(optional.EXTRAS, "ghost", {"navi_ghost_framework": "navi-ghost-framework>=1.2"})
    monkeypatch.setitem(
        BUILTIN_RUNTIMES, "ghost", BuiltinRuntime("navi_ghost_framework:GhostRuntime", "ghost")
    )
    with pytest.raises(ConfigError) as info:
        resolve_runtime("ghost")
    message = str(info.value)
    assert "navi_ghost_framework" in message and "not installed" in message and "navi[ghost]" in message
    assert message.endswith(f"install with: {shlex.quote(sys.executable)} -m pip install 'navi-ghost-framework>=1.2'")


def test_builtin_runtimes_name_their_extras():
    assert BUILTIN_RUNTIMES["tf"].extra == "tf" and BUILTIN_RUNTIMES["tf"].framework_modules == ("tensorflow",)
    assert BUILTIN_RUNTIMES["torch"].extra == "torch" and BUILTIN_RUNTIMES["torch"].framework_modules == ("torch",)
    assert BUILTIN_RUNTIMES["onnx"].extra is None  # the base install
    assert BUILTIN_RUNTIMES["tf"].target == "navi.plugins.tensorflow:TensorFlowRuntime"
    assert BUILTIN_RUNTIMES["torch"].target == "navi.plugins.torch:TorchRuntime"


def test_a_target_that_is_not_a_runtime_is_refused(monkeypatch):
    monkeypatch.setitem(BUILTIN_RUNTIMES, "notone", BuiltinRuntime("collections:OrderedDict", None, ("collections",)))
    with pytest.raises(ConfigError, match="not a navi Runtime"):
        resolve_runtime("notone")


PLUGIN_SOURCE = '''
"""A third-party runtime, installed as its own distribution."""
from pathlib import Path

from navi.plugins.base import LoadedModel, Runtime, Signature


class EchoModel(LoadedModel):
    @property
    def signature(self):
        return Signature(inputs=(), outputs=())

    def run(self, inputs, output_names=()):
        return dict(inputs)


class EchoRuntime(Runtime):
    model_filename = "echo.txt"

    def load(self, version_dir: Path, settings):
        return EchoModel()


def broken():
    raise RuntimeError("license server unreachable")
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A real installed distribution (dist-info + entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    package = site / "navi_echo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    dist_info = site / "navi_echo_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: navi-echo-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[navi.runtimes]\n"
        "echo = navi_echo_plugin:EchoRuntime\n"
        "broken = navi_echo_plugin:broken\n"
        "absent = navi_echo_plugin_missing_module:Runtime\n"
        # a third party may not take over a built-in name
        "onnx = navi_echo_plugin:EchoRuntime\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("navi_echo_plugin", None)


def test_entry_point_plugin_resolves(plugin_dist, tmp_path):
    assert any(ep.name == "echo" for ep in metadata.entry_points(group="navi.runtimes"))
    assert "echo" in available_runtimes()
    runtime = resolve_runtime("echo")
    assert type(runtime).__name__ == "EchoRuntime"
    assert runtime.name == "echo"  # filled in from the entry point name
    assert runtime.is_complete(tmp_path) is False
    (tmp_path / "echo.txt").write_text("")
    assert runtime.is_complete(tmp_path) is True
    from navi.settings import ModelSettings

    model = runtime.load(tmp_path, ModelSettings(name="m", model_dir=tmp_path))
    assert model.run({"a": 1}) == {"a": 1}


def test_builtin_names_win_over_entry_points(plugin_dist):
    assert type(resolve_runtime("onnx")).__name__ == "OnnxRuntime"
    assert available_runtimes().count("onnx") == 1


def test_entry_point_failures_become_config_errors(plugin_dist):
    with pytest.raises(ConfigError, match="license server unreachable"):
        resolve_runtime("broken")
    with pytest.raises(ConfigError, match="could not be imported"):
        resolve_runtime("absent")


@pytest.mark.parametrize(("runtime", "framework", "requirement"),
                         [("tf", "tensorflow", "'tensorflow>=2.15'"), ("torch", "torch", "'torch>=2.1'")])
def test_real_builtin_without_its_framework_gives_the_install_line(runtime, framework, requirement):
    # a fresh interpreter where the framework cannot be imported, as if not installed
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{framework!r}] = None
        from navi.errors import ConfigError
        from navi.plugins import resolve_runtime
        try:
            resolve_runtime({runtime!r})
        except ConfigError as exc:
            print(exc)
        else:
            print("resolved")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    hint = f"(the navi[{runtime}] extra); install with: {shlex.quote(sys.executable)} -m pip install {requirement}"
    assert hint in result.stdout, result.stdout


def test_served_names_rule_of_every_runtime():
    from navi.errors import ConfigError
    from navi.plugins.base import served_inputs, served_outputs

    model = ("a", "b")
    for foreign in (True, False):
        assert served_inputs((), model, source="m", foreign_means_detect=foreign) == model
        assert served_inputs(("examples",), model, source="m", foreign_means_detect=foreign) == model
        assert served_inputs(("b", "a"), model, source="m", foreign_means_detect=foreign) == ("b", "a")
        with pytest.raises(ConfigError, match="missing: b"):
            served_inputs(("a",), model, source="m", foreign_means_detect=foreign)
    # a runtime cannot tell a BPR client's tensor name from a wrong input name; dense mode can
    assert served_inputs(("bprs",), model, source="m", foreign_means_detect=True) == model
    with pytest.raises(ConfigError, match="unknown: bprs"):
        served_inputs(("bprs",), model, source="m", foreign_means_detect=False)
    assert served_outputs((), model, source="m") == model
    assert served_outputs(("output_0",), model, source="m") == model
    assert served_outputs(("output_0",), ("output_0", "b"), source="m") == ("output_0",)
    assert served_outputs(("b",), model, source="m") == ("b",)
    with pytest.raises(ConfigError, match="not outputs of the model"):
        served_outputs(("c",), model, source="m")
