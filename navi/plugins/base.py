"""The runtime plugin contract.

A runtime (ONNX Runtime, TensorFlow, PyTorch, or a third party's) turns a
model version directory into a ``LoadedModel``: something that describes its
signature and runs a batch of named numpy arrays. The contract is synchronous
on purpose: batching owns the threads, and runtimes release the GIL while they
compute. Plugins never import the server or the batching layers.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from navi.settings import ModelSettings


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of one model input or output.

    ``shape`` uses -1 for a dimension of any size (the batch axis first).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


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

    def warmup(self) -> None:
        """Run the model once on synthetic inputs so the first request is not slow."""

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
