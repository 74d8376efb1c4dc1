"""The runtime plugin contract.

A runtime (ONNX Runtime, TensorFlow, PyTorch, or a third party's) turns a
model version directory into a ``LoadedModel``: something that describes its
signature and runs a batch of named numpy arrays. The contract is synchronous
on purpose: batching owns the threads, and runtimes release the GIL while they
compute. Plugins never import the server or the batching layers.
"""
from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from navi.dtypes import feeds
from navi.errors import ConfigError, InvalidInput
from navi.settings import ModelSettings

logger = logging.getLogger(__name__)

#: the original's ``--input`` / ``--output`` defaults; each means "detect" (see ``served_inputs``)
DEFAULT_INPUTS = ("examples",)
DEFAULT_OUTPUTS = ("output_0",)


def served_inputs(
    configured: Sequence[str], available: Sequence[str], *, source: str, foreign_means_detect: bool
) -> tuple[str, ...]:
    """The model inputs to serve given ``--input``: the one rule of every runtime and mode.

    ``--input`` empty, or the default ``examples``, means detect: every input
    of the model (``available``, in the model's order). Otherwise it must name
    every input of the model and nothing else; the order given is kept.

    ``foreign_means_detect``: a runtime loads a model before navi knows
    whether it is served in BPR mode, where ``--input`` is the client's
    tensor name, not a model input; so a runtime passes True and a
    ``--input`` naming none of the model's inputs also means detect. The
    pipeline, which knows the mode, passes False in dense mode.
    """
    configured, available = tuple(configured), tuple(available)
    if not configured or configured == DEFAULT_INPUTS:
        return available
    if foreign_means_detect and not set(configured) & set(available):
        logger.info("%s: --input %s names no input of the model; serving its inputs %s",
                    source, ",".join(configured), ",".join(available))
        return available
    unknown = [name for name in configured if name not in available]
    missing = [name for name in available if name not in configured]
    if unknown or missing:
        raise ConfigError(
            f"--input must name every input of the model ({', '.join(available)}); "
            f"unknown: {', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'}",
            source=source, key="inputs",
        )
    return configured


def served_outputs(configured: Sequence[str], available: Sequence[str], *, source: str) -> tuple[str, ...]:
    """The model outputs to serve given ``--output``: the one rule of every runtime.

    ``--output`` empty, or the default ``output_0`` where the model has no
    output of that name, means detect: every output (``available``, in the
    model's order). Otherwise each name must be an output of the model, and
    only those are served, in the order given.
    """
    configured, available = tuple(configured), tuple(available)
    if not configured or (configured == DEFAULT_OUTPUTS and configured[0] not in available):
        return available
    unknown = [name for name in configured if name not in available]
    if unknown:
        raise ConfigError(
            f"--output names {', '.join(unknown)}, not outputs of the model ({', '.join(available)})",
            source=source, key="outputs",
        )
    return configured


class ProcessThreadPools:
    """A framework's intra-op / inter-op thread pools, which belong to the process, not a model.

    ``configure`` applies the first caller's sizes (through ``apply``, which
    returns the sizes actually in force) and returns them; a later caller
    asking for other sizes gets a warning and the sizes in force.
    """

    def __init__(self, framework: str, apply: Callable[[int, int, str], tuple[int, int]]) -> None:
        self._framework = framework
        self._apply = apply
        self._lock = threading.Lock()
        self.applied: tuple[int, int] | None = None

    def configure(self, intra_op: int, inter_op: int, model_name: str = "") -> tuple[int, int]:
        with self._lock:
            if self.applied is None:
                self.applied = self._apply(intra_op, inter_op, model_name)
            elif self.applied != (intra_op, inter_op):
                logger.warning(
                    "%s thread pools are process-wide and already set to intra_op=%d "
                    "inter_op=%d; model %s asked for intra_op=%d inter_op=%d, ignored",
                    self._framework, *self.applied, model_name, intra_op, inter_op,
                )
            return self.applied


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of one model input or output.

    ``shape`` uses -1 for a dimension of any size (the batch axis first).
    ``declared`` is False when the model does not say what it takes and
    navi guessed dtype and shape (a TorchScript input without
    ``model.json``): requests then pass with their own dtype and shape, for
    a guess of navi's must never refuse what the model accepts.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    declared: bool = True

    @property
    def synthetic_is_guess(self) -> bool:
        """Whether zeros built from this spec may not be a request the model accepts.

        True for a guessed spec, a dimension past the batch axis of any size
        (navi picks 1) and strings (an empty string need not parse).
        """
        return not self.declared or self.dtype == np.dtype(object) or any(dim < 0 for dim in self.shape[1:])


def synthetic_inputs(specs: Iterable[TensorSpec], rows: int = 1) -> dict[str, np.ndarray]:
    """Zeros (empty strings) shaped like ``specs`` with ``rows`` rows; any-size dimensions become 1.

    The one builder of synthetic requests (warm-up, benchmarks, tests). What
    it builds is a guess where ``TensorSpec.synthetic_is_guess`` says so.
    """
    batch = {}
    for spec in specs:
        shape = tuple(rows if axis == 0 and dim < 0 else max(dim, 1) for axis, dim in enumerate(spec.shape))
        if spec.dtype == np.dtype(object):
            batch[spec.name] = np.full(shape, b"", dtype=object)
        else:
            batch[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return batch


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a loaded model, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method_name: str = "tensorflow/serving/predict"
    extra: Mapping[str, object] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec | None:
        """The input spec called ``name``, or None."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output spec called ``name``, or None."""
        return next((spec for spec in self.outputs if spec.name == name), None)


class LoadedModel(abc.ABC):
    """One loaded model version, ready to run batches."""

    @property
    @abc.abstractmethod
    def signature(self) -> Signature:
        """The model's inputs and outputs."""

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Run one batch.

        ``inputs`` maps every input name to an array whose first axis is the
        batch; the result maps each requested output (all when
        ``output_names`` is empty) to an array with the same first axis.
        Must be safe to call from several threads at once.
        """

    def close(self) -> None:
        """Release the model's memory. No call to ``run`` follows."""


class Runtime(abc.ABC):
    """A factory of loaded models for one framework."""

    #: the name given to ``--runtime``
    name: str = ""
    #: file (or directory) name that marks a complete version directory
    model_filename: str = ""

    @abc.abstractmethod
    def load(self, version_dir: Path, settings: ModelSettings) -> LoadedModel:
        """Load the model stored in ``version_dir``; raise on any failure."""

    def is_complete(self, version_dir: Path) -> bool:
        """Whether ``version_dir`` holds a whole model (not a half-copied one)."""
        return (version_dir / self.model_filename).exists()


def conform_inputs(
    specs: "tuple[TensorSpec, ...]",
    inputs: Mapping[str, np.ndarray],
    *,
    unknown_rank: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Check one batch against ``specs``; return it in spec order with the specs' dtypes.

    Raises ``navi.errors.InvalidInput`` (naming the tensor) for a missing or
    extra input, inputs whose first axes disagree, a wrong rank or fixed
    dimension, or a dtype that cannot become the model's without changing the
    kind of value: ``navi.dtypes.feeds``, the rule every path uses
    (float64 -> float32, int32 -> int64: what TF Serving clients rely on when
    they send Python floats as doubles).
    String specs (numpy object dtype) take object, bytes (``S``) or ``str``
    (``U``) arrays unchanged. ``unknown_rank`` names inputs whose shape the
    model does not declare; only their dtype is checked. A spec that is not
    ``declared`` checks nothing but the batch axis: the array passes as sent.
    """
    expected = {spec.name for spec in specs}
    missing = [spec.name for spec in specs if spec.name not in inputs]
    extra = sorted(name for name in inputs if name not in expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing input(s) " + ", ".join(missing))
        if extra:
            parts.append("unexpected input(s) " + ", ".join(extra))
        raise InvalidInput("; ".join(parts) + "; the model takes " + ", ".join(s.name for s in specs))
    out: dict[str, np.ndarray] = {}
    batch_rows: tuple[str, int] | None = None
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        if spec.declared and spec.name not in unknown_rank:
            if array.ndim != len(spec.shape):
                raise InvalidInput(
                    f"input {spec.name}: expected rank {len(spec.shape)} shape {list(spec.shape)}, "
                    f"got shape {list(array.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
                if want >= 0 and want != got:
                    raise InvalidInput(
                        f"input {spec.name}: dimension {axis} must be {want}, got shape {list(array.shape)}"
                    )
        if array.ndim >= 1:
            if batch_rows is None:
                batch_rows = (spec.name, array.shape[0])
            elif array.shape[0] != batch_rows[1]:
                raise InvalidInput(
                    f"inputs disagree on the batch size: {batch_rows[0]} has {batch_rows[1]} rows, "
                    f"{spec.name} has {array.shape[0]}"
                )
        if not spec.declared:
            if array.dtype.kind in "OSU" and spec.dtype != np.dtype(object):
                raise InvalidInput(f"input {spec.name}: expected numbers, got {array.dtype}")
        elif spec.dtype == np.dtype(object):
            if array.dtype.kind not in "OSU":
                raise InvalidInput(f"input {spec.name}: expected strings, got {array.dtype}")
        elif array.dtype != spec.dtype:
            if not feeds(array.dtype, spec.dtype):
                raise InvalidInput(f"input {spec.name}: expected {spec.dtype}, got {array.dtype}")
            array = array.astype(spec.dtype)
        out[spec.name] = array
    return out
