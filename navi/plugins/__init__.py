"""Runtime plugins: find the ``Runtime`` for a ``--runtime`` name.

Built-in runtimes are named by import strings and imported only when asked
for, so ``--runtime onnx`` never pays for (or depends on) TensorFlow or
PyTorch. A third party adds a runtime without editing navi by declaring an
entry point in the ``navi.runtimes`` group, e.g. in its ``pyproject.toml``::

    [project.entry-points."navi.runtimes"]
    mxnet = "navi_mxnet:MxnetRuntime"

The entry point may name a ``Runtime`` subclass (instantiated with no
arguments), a ready ``Runtime`` instance, or a zero-argument factory returning
one. Built-in names win over entry points of the same name, so an installed
package cannot silently replace ``onnx``.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata

from navi import optional
from navi.errors import ConfigError
from navi.plugins.base import Runtime

logger = logging.getLogger(__name__)

#: entry-point group third-party runtimes register under
ENTRY_POINT_GROUP = "navi.runtimes"


@dataclass(frozen=True)
class BuiltinRuntime:
    """Where a built-in runtime lives and which extra installs its framework.

    ``extra`` names an entry of ``navi.optional.EXTRAS``, whose modules are
    the ones whose absence means "not installed"; ``None`` for a runtime of
    the base install (``base_modules``), whose absence is a broken install.
    """

    target: str  # "module:attribute"
    extra: str | None
    base_modules: tuple[str, ...] = ()

    @property
    def framework_modules(self) -> tuple[str, ...]:
        """Top-level modules whose absence means the runtime's framework is not installed."""
        return tuple(optional.EXTRAS[self.extra]) if self.extra else self.base_modules


#: built-in runtime name -> lazy import target (nothing here is imported up front)
BUILTIN_RUNTIMES: dict[str, BuiltinRuntime] = {
    "onnx": BuiltinRuntime("navi.plugins.onnx:OnnxRuntime", None, ("onnxruntime", "onnx")),
    "tf": BuiltinRuntime("navi.plugins.tensorflow:TensorFlowRuntime", "tf"),
    "torch": BuiltinRuntime("navi.plugins.torch:TorchRuntime", "torch"),
}

#: other spellings users reach for
ALIASES = {"onnxruntime": "onnx", "tensorflow": "tf", "pytorch": "torch"}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points of the ``navi.runtimes`` group, by name (first one wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def available_runtimes() -> list[str]:
    """Every runtime name ``resolve_runtime`` accepts (built-ins first), without importing any."""
    third_party = sorted(name for name in _entry_points() if name not in BUILTIN_RUNTIMES)
    return [*BUILTIN_RUNTIMES, *third_party]


def _as_runtime(obj: object, origin: str) -> Runtime:
    """Turn what an import target names (class, instance or factory) into a Runtime instance."""
    if isinstance(obj, Runtime):
        return obj
    if callable(obj):
        try:
            made = obj()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"runtime {origin} failed to start: {exc}", key="runtime") from exc
        if isinstance(made, Runtime):
            return made
        obj = made
    raise ConfigError(
        f"{origin} is not a navi Runtime (got {type(obj).__name__}); it must subclass "
        "navi.plugins.base.Runtime",
        key="runtime",
    )


def _load_builtin(name: str, builtin: BuiltinRuntime) -> Runtime:
    module_name, attribute = builtin.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in builtin.framework_modules:
            if builtin.extra is None:
                message = (f"runtime {name!r} needs {missing}, part of navi's base install, which "
                           f"cannot be imported ({exc}): reinstall navi")
            else:
                message = optional.missing_message(builtin.extra, f"runtime {name!r}", [missing])
            raise ConfigError(message, key="runtime") from exc
        raise ConfigError(
            f"runtime {name!r} could not be imported from {module_name}: {exc}", key="runtime"
        ) from exc
    try:
        target = getattr(module, attribute)
    except AttributeError as exc:
        raise ConfigError(
            f"runtime {name!r}: {module_name} has no attribute {attribute!r}", key="runtime"
        ) from exc
    return _as_runtime(target, builtin.target)


def _load_entry_point(name: str, entry_point: metadata.EntryPoint) -> Runtime:
    origin = f"{entry_point.value} (entry point {name!r} of group {ENTRY_POINT_GROUP})"
    try:
        target = entry_point.load()
    except ImportError as exc:
        dist = getattr(entry_point, "dist", None)
        package = f" of package {dist.name}" if dist is not None else ""
        raise ConfigError(
            f"runtime {name!r}{package} could not be imported: {exc}", key="runtime"
        ) from exc
    except Exception as exc:
        raise ConfigError(f"runtime {origin} failed to load: {exc}", key="runtime") from exc
    return _as_runtime(target, origin)


def resolve_runtime(name: str) -> Runtime:
    """Return a new ``Runtime`` for ``name`` (e.g. ``"onnx"``), importing only that runtime.

    Raises ``navi.errors.ConfigError`` for an unknown name (the message lists
    the choices), or when the runtime's framework is not installed (the
    message says which extra to install).
    """
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    builtin = BUILTIN_RUNTIMES.get(key)
    if builtin is not None:
        runtime = _load_builtin(key, builtin)
    else:
        entry_points = _entry_points()
        entry_point = entry_points.get(name) or entry_points.get(key)
        if entry_point is None:
            choices = ", ".join(available_runtimes())
            raise ConfigError(f"unknown runtime {name!r}; choose one of: {choices}", key="runtime")
        runtime = _load_entry_point(entry_point.name, entry_point)
        logger.info("runtime %r provided by entry point %s", entry_point.name, entry_point.value)
    if not runtime.name:
        # a plugin that forgot its name still reports the one it was asked by
        runtime.name = key
    return runtime


__all__ = ["ALIASES", "BUILTIN_RUNTIMES", "ENTRY_POINT_GROUP", "available_runtimes", "resolve_runtime"]
