"""The import layering of pyproject.toml's [tool.importlinter] contracts holds, for every module."""
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# import-linter is a declared test dependency (setup.py's test extra): without it this fails
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_import_layers_hold():
    result = subprocess.run([sys.executable, "-c", LINT_IMPORTS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_every_module_is_placed_in_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    package = REPO / "navi"
    modules = {f"navi.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"navi.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert sorted(modules - placed) == [], "modules missing from the layers in pyproject.toml"
    assert sorted(placed - modules) == [], "layers name modules that do not exist"
