"""A feature whose optional package is missing stops with the extra's exact install line."""
import shlex
import sys

from click.testing import CliRunner

from navi import optional
from navi.cli.main import main


def test_install_command_is_this_interpreters_pip_with_the_extras_requirements():
    line = optional.install_command("bench")
    assert shlex.split(line) == [sys.executable, "-m", "pip", "install", *optional.EXTRAS["bench"].values()]


def test_navi_bench_without_rich_names_the_bench_extra(monkeypatch):
    assert optional.missing_modules("bench") == []
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails, as if not installed
    assert optional.missing_modules("bench") == ["rich"]
    result = CliRunner().invoke(main, ["bench", "convert"])
    assert result.exit_code == 1
    assert (f"navi bench needs rich, which is not installed (the navi[bench] extra); "
            f"install with: {optional.install_command('bench')}") in result.output
    assert "'rich>=13'" in result.output and "'matplotlib>=3.7'" in result.output


def test_navi_bench_help_needs_no_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "convert" in result.output
