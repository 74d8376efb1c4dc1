"""Dense mode: the request carries the model's inputs by name."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from navi.batching import BatchTask, split_rows
from navi.errors import InvalidInput, quote
from navi.modes.shared import STRING, RunModel, cast_into, castable, describe
from navi.plugins.base import Signature, TensorSpec, served_inputs
from navi.settings import ModelSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DensePayload:
    """One validated dense request: its inputs by model input name, and the outputs it asked for."""

    arrays: dict[str, np.ndarray]
    output_names: tuple[str, ...]


def _strings_as_bytes(array: np.ndarray) -> np.ndarray:
    """``array`` with any memoryview elements (views of a received request) as bytes.

    The servers hand string values on as views of the request; the BPR
    decoder reads them in place, but a framework fed a string tensor
    expects bytes objects.
    """
    flat = array.reshape(-1)
    if not any(isinstance(item, memoryview) for item in flat):
        return array
    out = np.empty(flat.shape, dtype=object)
    out[:] = [bytes(item) if isinstance(item, memoryview) else item for item in flat]
    return out.reshape(array.shape)


class DenseMode:
    """Validates named inputs per request; merges a batch's requests into one buffer per input."""

    name = "dense"
    converter = None
    layout = None

    def __init__(self, model_name: str, settings: ModelSettings, sig: Signature,
                 outputs: tuple[TensorSpec, ...], run_model: RunModel):
        self._model_name = model_name
        self._run_model = run_model
        # dense mode: --input names model inputs, so one naming none of them is an error
        names = served_inputs(settings.inputs, [s.name for s in sig.inputs], source=model_name,
                              foreign_means_detect=False)
        inputs = tuple(sig.input(n) for n in names)
        self._inputs = inputs
        self._input_names = frozenset(s.name for s in inputs)
        # per input: (spec, the rank it needs: at least 1, for the batch axis; the dims after a
        # free batch axis when they are all fixed (one tuple compare per request), else None)
        self._checks = tuple(
            (s, len(s.shape) if s.shape else -1,
             tuple(s.shape[1:]) if s.shape and s.shape[0] < 0 and min(s.shape[1:], default=0) >= 0 else None)
            for s in inputs)
        # a fixed first axis means the model cannot take a merged batch
        self._fixed_batch = any(s.shape and s.shape[0] >= 0 for s in inputs)
        self.signature = Signature(inputs, outputs, sig.method_name, sig.extra)
        if settings.report_continuous_feature_ids or settings.report_discrete_feature_ids:
            log.warning("%s: feature ids to report are set, but only the BPR converter reports "
                        "feature values and this model takes dense inputs", model_name)

    # ----------------------------------------------------------------- validation

    def prepare(self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...]) -> tuple[DensePayload, int]:
        """(payload, rows) of a valid request; raises ``InvalidInput`` otherwise."""
        if inputs.keys() != self._input_names:  # the usual request names exactly the inputs
            self._check_input_names(inputs)
        rows = None
        checked = {}
        for spec, rank, tail in self._checks:
            array = inputs[spec.name]
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            if spec.declared:
                dtype_ok = array.dtype == spec.dtype or castable(array.dtype, spec.dtype)
                ok_shape = array.ndim == rank and (
                    array.shape[1:] == tail if tail is not None else all(
                        want < 0 or want == got for want, got in zip(spec.shape, array.shape)))
            else:  # navi's guess of an input must not refuse what the model takes
                dtype_ok, ok_shape = array.dtype.kind in "biuf", array.ndim >= 1
            if not dtype_ok:
                wanted = spec.dtype.name if spec.declared else "numbers"
                raise InvalidInput(
                    f"input {spec.name!r} has dtype {array.dtype.name}; model {self._model_name} takes {wanted}"
                )
            if not ok_shape:
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(array.shape)}; model {self._model_name} "
                    f"takes {describe(spec)}"
                )
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size: {spec.name!r} has {array.shape[0]} "
                    f"rows, others {rows}"
                )
            if array.dtype == STRING:
                array = _strings_as_bytes(array)
            checked[spec.name] = array
        return DensePayload(checked, output_names), int(rows or 0)

    def _check_input_names(self, inputs: Mapping[str, np.ndarray]) -> None:
        missing = [s for s in self._inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(
                f"model {self._model_name} needs input {', '.join(describe(s) for s in missing)}; "
                f"the request has {', '.join(map(quote, sorted(inputs)[:5])) or 'none'}"
            )
        extra = sorted(set(inputs) - self._input_names)
        if extra:
            raise InvalidInput(
                f"model {self._model_name} has no input {', '.join(map(quote, extra[:5]))}; it takes "
                f"{', '.join(describe(s) for s in self._inputs)}"
            )

    # ----------------------------------------------------------------- batch worker

    def process(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...], report_features: bool) -> list:
        """Run one batch of ``DensePayload`` tasks; one result per task."""
        if len(tasks) == 1:
            return self._run_group(tasks, wanted)
        if self._fixed_batch:
            groups = [[i] for i in range(len(tasks))]
        else:
            # requests can share one buffer only when their non-batch dims agree
            # (and their dtypes, for inputs passed as sent: see TensorSpec.declared)
            by_shape: dict[tuple, list[int]] = {}
            for i, task in enumerate(tasks):
                arrays = task.payload.arrays
                key = tuple((arrays[s.name].shape[1:], None if s.declared else arrays[s.name].dtype)
                            for s in self._inputs)
                by_shape.setdefault(key, []).append(i)
            groups = list(by_shape.values())
        results: list = [None] * len(tasks)
        for group in groups:
            members = [tasks[i] for i in group]
            for i, result in zip(group, self._run_group(members, wanted)):
                results[i] = result
        return results

    def _run_group(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...]) -> list:
        rows = [t.rows for t in tasks]
        total = sum(rows)
        feeds = {}
        for spec in self._inputs:
            first = tasks[0].payload.arrays[spec.name]
            dtype = spec.dtype if spec.declared else first.dtype
            if len(tasks) == 1 and first.dtype == dtype:
                feeds[spec.name] = first
                continue
            buffer = np.empty((total,) + first.shape[1:], dtype=dtype)
            start = 0
            for task in tasks:
                src = task.payload.arrays[spec.name]
                cast_into(src, buffer, start)
                start += src.shape[0]
            feeds[spec.name] = buffer
        outputs = self._run_model(feeds, wanted)
        if len(tasks) == 1:
            return [outputs]
        try:
            pieces = split_rows(outputs, rows)
        except ValueError:
            # an output without a per-row first axis: run each request alone
            return [r for t in tasks for r in self._run_group([t], wanted)]
        return [{n: piece[n] for n in t.payload.output_names} for t, piece in zip(tasks, pieces)]
