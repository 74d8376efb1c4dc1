"""PyTorch TorchScript runtime (``--runtime torch``).

A version directory holds ``model.pt``, a TorchScript module saved with
``torch.jit.save`` (scripted or traced), loaded on the CPU with
``torch.jit.load``. Its ``forward`` takes one tensor per input, positionally,
and returns a tensor, a tuple (or list) of tensors, or a dict of tensors.

``model.json`` next to ``model.pt`` (optional, recommended) declares the
tensors, inputs in ``forward``'s argument order::

    {
      "inputs":  [{"name": "continuous", "dtype": "float32", "shape": [-1, 5293]},
                  {"name": "binary",     "dtype": "int64",   "shape": [-1, 149]}],
      "outputs": [{"name": "output_0",   "dtype": "float32", "shape": [-1, 1]}]
    }

``dtype`` is a numpy name (float16/32/64, int8/16/32/64, uint8, bool);
``shape`` uses -1 for any size, the batch axis first; ``outputs`` may be left
out. Requests are checked against it before the model runs: a missing or
extra input, a wrong rank or fixed dimension, or a dtype that numpy's
"same_kind" rule cannot convert (float64 -> float32 is fine, float -> int is
not) is answered INVALID_ARGUMENT.

Without ``model.json`` the input names are ``forward``'s argument names
(TorchScript keeps them) and their dtypes and shapes are unknown: requests
pass as sent (numbers only), only their batch axes must agree, and an error
PyTorch raises on them is answered INVALID_ARGUMENT with its text. The
signature then reports ``[batch, features]`` float32, except ``binary`` and
``discrete`` int64, which is what the BPR converter feeds a model over the
home layout (``continuous, binary, user_embedding, user_eng_embedding,
author_embedding``). The outputs are then
named by ``--output`` (default ``output_0``; a tuple result beyond one output
is named ``output_0``, ``output_1``, ... when ``--output`` is left at its
default).

``--input`` / ``--output``: the rule of every runtime,
``navi.plugins.base.served_inputs`` and ``served_outputs`` (the inputs are
checked only, and stay in ``forward``'s order).

Threads: ``--intra-op-parallelism`` becomes ``torch.set_num_threads`` and
``--inter-op-parallelism`` ``torch.set_num_interop_threads``; both are
process-wide in PyTorch, so the first model loaded decides and the
inter-op pool can only be sized before PyTorch first uses it (0 = PyTorch's
default). Batches run under ``torch.inference_mode`` and may run from several
threads at once; TorchScript releases the GIL while it computes.

PyTorch is imported when this module is, which the plugin registry does only
for ``--runtime torch``.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
# Without PyTorch importing this module fails and navi.plugins.resolve_runtime says what to install.
import torch

from navi.errors import ConfigError, InvalidInput, RuntimeFailure
from navi.plugins.base import (
    DEFAULT_OUTPUTS, LoadedModel, ProcessThreadPools, Runtime, Signature, TensorSpec, conform_inputs, served_inputs,
    served_outputs,
)
from navi.settings import ModelSettings

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.pt"
SPEC_FILENAME = "model.json"
#: dtypes a TorchScript model can take from a TF Serving request
_DTYPES = {
    name: np.dtype(name)
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
}
#: BPR layout tensors that are not float32 (see navi.segdense)
_LAYOUT_INT_INPUTS = frozenset({"binary", "discrete"})

_thread_local = threading.local()


def _apply_threads(intra_op: int, inter_op: int, model_name: str) -> tuple[int, int]:
    """Size PyTorch's pools (0 = its default); the inter-op pool only before PyTorch first uses it."""
    if intra_op > 0:
        torch.set_num_threads(intra_op)
    if inter_op > 0:
        try:
            torch.set_num_interop_threads(inter_op)
        except RuntimeError as exc:
            # PyTorch refuses once its inter-op pool has started
            logger.warning("model %s: inter-op threads stay %d (%s)",
                           model_name, torch.get_num_interop_threads(), exc)
    return intra_op, inter_op


#: PyTorch's process-wide thread pools: the first model loaded decides
THREADS = ProcessThreadPools("PyTorch", _apply_threads)


def _apply_threads_here() -> None:
    """Apply the intra-op thread count in the calling thread (OpenMP keeps it per thread)."""
    applied = THREADS.applied
    if applied is None or applied[0] <= 0 or getattr(_thread_local, "intra_op", None) == applied[0]:
        return
    torch.set_num_threads(applied[0])
    _thread_local.intra_op = applied[0]


def _parse_specs(entries: Any, source: str, key: str) -> tuple[TensorSpec, ...]:
    """TensorSpecs of a model.json ``inputs`` / ``outputs`` list, with errors naming the key."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError("must be a non-empty list of {name, dtype, shape}", source=source, key=key)
    specs = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError("needs a non-empty string 'name'", source=source, key=where)
        dtype = _DTYPES.get(str(entry.get("dtype", "")).removeprefix("torch."))
        if dtype is None:
            raise ConfigError(
                f"dtype {entry.get('dtype')!r} is not one of {', '.join(_DTYPES)}", source=source, key=f"{where}.dtype"
            )
        shape = entry.get("shape", [-1, -1])
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ConfigError("shape must be a list of ints (-1 = any size)", source=source, key=f"{where}.shape")
        specs.append(TensorSpec(entry["name"], dtype, tuple(shape)))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"names repeat: {names}", source=source, key=key)
    return tuple(specs)


def read_model_json(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...] | None]:
    """Inputs and (optional) outputs declared by a ``model.json`` file."""
    source = str(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=source) from exc
    if not isinstance(document, dict):
        raise ConfigError("must be a JSON object with 'inputs' (and 'outputs')", source=source)
    unknown = sorted(set(document) - {"inputs", "outputs"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}", source=source)
    inputs = _parse_specs(document.get("inputs"), source, "inputs")
    outputs = _parse_specs(document["outputs"], source, "outputs") if "outputs" in document else None
    return inputs, outputs


def _forward_arguments(module) -> list[str] | None:
    """Names of ``forward``'s tensor arguments (after self), or None if TorchScript does not say."""
    try:
        arguments = module.forward.schema.arguments
    except (AttributeError, RuntimeError):
        return None
    return [argument.name for argument in arguments[1:]]


def _error_text(exc: BaseException) -> str:
    """The cause of a TorchScript error: its last line, without the interpreter's traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class TorchModel(LoadedModel):
    """One loaded TorchScript version; ``run`` is safe to call from several threads."""

    def __init__(
        self,
        name: str,
        module,
        signature: Signature,
        result_names: tuple[str, ...],
        auto_name_tuples: bool,
        declared_outputs: bool,
    ):
        self._name = name
        self._module = module
        self._signature = signature
        # names given to a tuple result, in order (all declared outputs, not only the served ones)
        self._result_names = result_names
        self._auto_name_tuples = auto_name_tuples
        self._declared_outputs = declared_outputs
        self._inputs_guessed = not all(spec.declared for spec in signature.inputs)
        self._output_dtypes = {spec.name: spec.dtype for spec in signature.outputs}

    @property
    def signature(self) -> Signature:
        """Inputs in ``forward``'s order and the served outputs."""
        return self._signature

    def _name_results(self, result: Any) -> dict[str, Any]:
        """Map what ``forward`` returned to output names."""
        if isinstance(result, torch.Tensor):
            if len(self._result_names) > 1:
                raise RuntimeFailure(
                    f"model {self._name} returned one tensor but declares outputs {', '.join(self._result_names)}"
                )
            return {self._result_names[0]: result}
        if isinstance(result, dict):
            return {str(key): value for key, value in result.items()}
        if isinstance(result, (tuple, list)):
            names = self._result_names
            if self._auto_name_tuples:
                names = tuple(f"output_{index}" for index in range(len(result)))
            if len(result) != len(names):
                raise RuntimeFailure(
                    f"model {self._name} returned {len(result)} tensors but declares "
                    f"{len(names)} outputs ({', '.join(names)})"
                )
            return dict(zip(names, result))
        raise RuntimeFailure(f"model {self._name} returned {type(result).__name__}, not tensors")

    def run(self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Check the batch against the signature, run ``forward`` and return numpy outputs."""
        served = tuple(spec.name for spec in self._signature.outputs)
        wanted = tuple(output_names) or served
        arrays = conform_inputs(self._signature.inputs, inputs)
        tensors = []
        for spec in self._signature.inputs:
            array = arrays[spec.name]
            # torch cannot wrap read-only (e.g. protobuf-backed) or negatively strided memory
            if not array.flags.writeable or any(stride < 0 for stride in array.strides):
                array = np.array(array, copy=True)
            tensors.append(torch.from_numpy(array))
        _apply_threads_here()
        try:
            with torch.inference_mode():
                named = self._name_results(self._module(*tensors))
        except RuntimeFailure:
            raise
        except RuntimeError as exc:
            if self._inputs_guessed:
                # nothing checked the request first: its shape or dtype is the likely cause
                raise InvalidInput(
                    f"model {self._name} rejected the inputs (declare them in {SPEC_FILENAME} to have "
                    f"them checked first): {_error_text(exc)}"
                ) from exc
            raise RuntimeFailure(f"model {self._name} failed: {_error_text(exc)}") from exc
        missing = [name for name in wanted if name not in named]
        if missing:
            available = sorted(set(served) | set(named))
            raise InvalidInput(f"model {self._name} has no output {', '.join(missing)}; outputs: {', '.join(available)}")
        out = {}
        for name in wanted:
            value = named[name]
            if not isinstance(value, torch.Tensor):
                raise RuntimeFailure(f"model {self._name} output {name} is {type(value).__name__}, not a tensor")
            array = value.detach().cpu().numpy()
            dtype = self._output_dtypes.get(name)
            if self._declared_outputs and dtype is not None and array.dtype != dtype:
                array = array.astype(dtype)
            out[name] = array
        return out

    def close(self) -> None:
        """Drop the module; PyTorch frees its parameters with the last reference."""
        self._module = None


class TorchRuntime(Runtime):
    """Loads TorchScript version directories (``--runtime torch``)."""

    name = "torch"
    model_filename = MODEL_FILENAME

    def load(self, version_dir: Path, settings: ModelSettings) -> TorchModel:
        """Load ``model.pt`` (and ``model.json`` when present) from ``version_dir``."""
        version_dir = Path(version_dir)
        source = str(version_dir / MODEL_FILENAME)
        THREADS.configure(settings.intra_op_parallelism, settings.inter_op_parallelism, settings.name)
        declared_inputs: tuple[TensorSpec, ...] | None = None
        declared_outputs: tuple[TensorSpec, ...] | None = None
        spec_path = version_dir / SPEC_FILENAME
        if spec_path.exists():
            declared_inputs, declared_outputs = read_model_json(spec_path)
        try:
            module = torch.jit.load(str(version_dir / MODEL_FILENAME), map_location="cpu")
        except Exception as exc:
            raise RuntimeFailure(f"{source}: not a loadable TorchScript file: {exc}") from exc
        module.eval()
        arguments = _forward_arguments(module)
        if declared_inputs is not None:
            if arguments is not None and len(arguments) != len(declared_inputs):
                raise ConfigError(
                    f"model.json declares {len(declared_inputs)} inputs but forward takes "
                    f"{len(arguments)} ({', '.join(arguments)})",
                    source=str(spec_path), key="inputs",
                )
            inputs = declared_inputs
        else:
            if arguments is None:
                raise ConfigError("forward's arguments are unknown; declare them in model.json", source=source)
            inputs = tuple(
                TensorSpec(name, np.dtype("int64" if name in _LAYOUT_INT_INPUTS else "float32"), (-1, -1),
                           declared=False)
                for name in arguments
            )
            logger.warning(
                "%s: no %s; inputs %s taken as sent (the BPR converter feeds float32, binary/discrete int64)",
                source, SPEC_FILENAME, ", ".join(arguments),
            )
        served_inputs(settings.inputs, [spec.name for spec in inputs], source=source, foreign_means_detect=True)
        auto_name_tuples = False
        if declared_outputs is None:
            names = tuple(settings.outputs) or DEFAULT_OUTPUTS
            auto_name_tuples = names == DEFAULT_OUTPUTS
            declared_outputs = tuple(TensorSpec(name, np.dtype("float32"), (-1, -1)) for name in names)
            served_names = names
            was_declared = False
        else:
            served_names = served_outputs(settings.outputs, [spec.name for spec in declared_outputs], source=source)
            was_declared = True
        by_name = {spec.name: spec for spec in declared_outputs}
        signature = Signature(inputs, tuple(by_name[name] for name in served_names))
        logger.info(
            "%s: inputs %s, outputs %s", source,
            ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in inputs), ", ".join(served_names),
        )
        return TorchModel(
            settings.name,
            module,
            signature,
            tuple(spec.name for spec in declared_outputs),
            auto_name_tuples,
            was_declared,
        )


__all__ = ["TorchModel", "TorchRuntime", "THREADS", "read_model_json"]
