"""Optional packages: which extra provides them, and the line that installs it.

``EXTRAS`` is the one table of navi's optional extras: setup.py declares
``extras_require`` from it (reading this file with ``runpy``, so it imports
only the standard library), and a feature whose package is missing says
which extra it needs and the exact ``pip install`` line for the Python that is
running navi. Installing the requirements themselves, not ``navi[extra]``,
works whether navi came from a wheel, a checkout or an editable install.
"""
from __future__ import annotations

import shlex
import sys
from importlib import util

#: extra -> {top-level module it provides: requirement that installs it}
EXTRAS: dict[str, dict[str, str]] = {
    "tf": {"tensorflow": "tensorflow>=2.15"},
    "torch": {"torch": "torch>=2.1"},
    # navi bench: tables and progress (rich), latency plots (matplotlib), the raw
    # HTTP/2 load generator's header compression (hpack)
    "bench": {"rich": "rich>=13", "matplotlib": "matplotlib>=3.7", "hpack": "hpack>=4"},
    # navi.ray.BprToTensors runs inside Ray Data's map_batches
    "ray": {"ray": "ray[data]>=2.9"},
}


def install_command(extra: str) -> str:
    """The shell line that installs ``extra``'s packages into this interpreter's environment."""
    return shlex.join([sys.executable, "-m", "pip", "install", *EXTRAS[extra].values()])


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def missing_message(extra: str, needed_by: str, missing: list[str] | tuple[str, ...]) -> str:
    """``needed_by`` needs the ``missing`` modules: the message naming the extra and its install line."""
    return (f"{needed_by} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed (the navi[{extra}] extra); install with: {install_command(extra)}")


__all__ = ["EXTRAS", "install_command", "missing_message", "missing_modules"]
