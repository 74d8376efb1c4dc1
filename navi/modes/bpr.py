"""BPR mode (the original's "home" converter): one string tensor of serialized BatchPredictionRequests.

The worker converts the whole batch's payloads in one
``BprConverter.convert_into`` call and feeds the model its inputs, by name
when they carry the layout's tensor names, else by position in
``DenseLayout.feed_order``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from navi._fast.kernels import cast_into as _kernel_cast_into
from navi.batching import BatchTask, split_rows
from navi.errors import ConfigError, InvalidInput, quote
from navi.modes.shared import STRING, RunModel, describe
from navi.plugins.base import Signature, TensorSpec
from navi.segdense import find_spec_files, load_layout
from navi.settings import ModelSettings


@dataclass(slots=True)
class BprPayload:
    """One validated BPR request: its serialized records, rows per record, and the outputs it asked for."""

    records: list            # bytes or memoryviews of the received request: the decoder reads both in place
    row_counts: np.ndarray   # rows of each record, counted without decoding it
    output_names: tuple[str, ...]


def wants_converter(settings: ModelSettings, version_dir: Path | None, sig: Signature, source: str) -> bool:
    """Whether the model at ``version_dir`` with ``sig`` is served in BPR mode (``settings.converter``)."""
    choice = settings.converter
    if choice == "none":
        return False
    has_spec = version_dir is not None and find_spec_files(version_dir) is not None
    if choice == "home":
        if not has_spec:
            raise ConfigError(
                "converter 'home' needs segdense_transform_spec_home_recap_2022.json and "
                f"all_config.json in {version_dir}",
                source=source, key="converter",
            )
        return True
    if not has_spec:
        return False
    from navi.segdense import FEED_ORDER

    names = [spec.name for spec in sig.inputs]
    # the layout's tensor names (the discrete tensor is not fed by the original
    # but a model may take it), or the original's five inputs by position
    return set(names) <= {*FEED_ORDER, "discrete"} or len(names) == len(FEED_ORDER)


class BprMode:
    """Counts each request's rows up front; converts a batch's records into reused buffers."""

    name = "bpr"

    def __init__(self, model_name: str, settings: ModelSettings, sig: Signature,
                 outputs: tuple[TensorSpec, ...], run_model: RunModel, *,
                 version_dir: Path, metrics: Any | None = None):
        # imported here so dense serving never needs the compiled BPR decoder
        from navi.converter import BprConverter

        self._model_name = model_name
        self._settings = settings
        self._run_model = run_model
        self._metrics = metrics
        self._converter_time = None  # the metric series, looked up when first observed
        # one histogram series per reported feature (counts row), made when first counted
        self._feature_series: list | None = None
        # converter output buffers of finished batches, reused by the next ones:
        # at most one per batch in flight (the threads that run batches are the
        # gRPC handler threads, far more than the batches they run at once)
        self._free_buffers: list[dict[str, np.ndarray]] = []
        self._buffers_lock = threading.Lock()
        self.layout = load_layout(*find_spec_files(version_dir))
        reported: dict = {}
        if metrics is not None:
            histogram = metrics.feature_id_continuous
            reported = dict(report_continuous_ids=settings.report_continuous_feature_ids,
                            report_discrete_ids=settings.report_discrete_feature_ids,
                            report_bounds=histogram.bounds)
        self.converter = BprConverter(self.layout, **reported)
        continuous_ids, discrete_ids = self.converter.reported_feature_ids
        if continuous_ids or discrete_ids:
            self._feature_series = [None] * (len(continuous_ids) + len(discrete_ids))
        layout_names = {t.name for t in self.layout.tensors}
        model_names = [s.name for s in sig.inputs]
        if set(model_names) <= layout_names:
            feed = {s.name: s.name for s in sig.inputs}
        elif len(model_names) == len(self.layout.feed_order):
            feed = {s.name: t for s, t in zip(sig.inputs, self.layout.feed_order)}
        else:
            raise ConfigError(
                f"model inputs {', '.join(model_names)} match neither the layout's tensor "
                f"names nor its {len(self.layout.feed_order)} feed inputs",
                source=model_name, key="converter",
            )
        for spec in sig.inputs:
            width = self.layout.tensor(feed[spec.name]).width
            if len(spec.shape) != 2 or spec.shape[1] not in (-1, width):
                raise ConfigError(
                    f"model input {describe(spec)} cannot take layout tensor "
                    f"{feed[spec.name]!r} of width {width}",
                    source=model_name, key="converter",
                )
        # model input name -> (layout tensor name, model dtype)
        self._feed = {s.name: (feed[s.name], s.dtype) for s in sig.inputs}
        self._bpr_input = settings.request_tensor_name
        client_input = TensorSpec(self._bpr_input, STRING, (-1,))
        extra = dict(sig.extra)
        extra["converter"] = "home"
        self.signature = Signature((client_input,), outputs, sig.method_name, extra)

    # ----------------------------------------------------------------- validation

    def prepare(self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...]) -> tuple[BprPayload, int]:
        """(payload, rows) of a valid request; raises ``InvalidInput`` (or ``DecodeError``) otherwise."""
        tensor = inputs.get(self._bpr_input)
        if tensor is None:
            strings = [a for a in inputs.values() if np.asarray(a).dtype.kind in "OS"]
            if len(strings) != 1:
                raise InvalidInput(
                    f"model {self._model_name} takes one string tensor {self._bpr_input!r} of "
                    f"serialized BatchPredictionRequests; the request has "
                    f"{', '.join(map(quote, sorted(inputs)[:5])) or 'no inputs'}"
                )
            tensor = strings[0]
        array = np.asarray(tensor)
        if array.dtype.kind not in "OS":
            raise InvalidInput(
                f"input {self._bpr_input!r} must be a string tensor of serialized "
                f"BatchPredictionRequests, not {array.dtype.name}"
            )
        # bytes or memoryviews of the received request: the decoder reads both in place
        records = array.reshape(-1).tolist()
        counts = self.converter.count_rows(records)
        return BprPayload(records, counts, output_names), int(counts.sum())

    # ----------------------------------------------------------------- batch worker

    def _take_buffers(self, total: int) -> dict[str, np.ndarray]:
        """Converter output arrays with room for ``total`` rows; give them back with ``_return_buffers``."""
        with self._buffers_lock:
            pool = self._free_buffers.pop() if self._free_buffers else None
        have = 0 if pool is None else next(iter(pool.values())).shape[0]
        if pool is None or have < total:  # none free (a batch of no rows too needs a set)
            # grow geometrically: batch sizes creep up under load, reallocate rarely
            capacity = max(total, 2 * have, self._settings.batching.max_batch_rows, 64)
            pool = self.layout.allocate(capacity)
        return pool

    def _return_buffers(self, pool: dict[str, np.ndarray]) -> None:
        with self._buffers_lock:
            # the most recently used set is reused first: it is the one still in cache
            self._free_buffers.append(pool)

    def process(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...], report_features: bool) -> list:
        """Run one batch of ``BprPayload`` tasks; one result per task."""
        if len(tasks) == 1:
            records = tasks[0].payload.records
        else:
            records = [r for task in tasks for r in task.payload.records]
        total = sum(task.rows for task in tasks)
        pool = self._take_buffers(total)
        try:
            started = time.monotonic()
            # the decoder counts the reported features' values as it converts
            counting = report_features and self._feature_series is not None
            counts = self.converter.new_feature_counts() if counting else None
            self.converter.convert_into(records, pool, feature_counts=counts)
            if self._metrics is not None and total:
                # the original's unit: microseconds per row of the batch
                micros = (time.monotonic() - started) * 1e6 / total
                series = self._converter_time
                if series is None:
                    series = self._converter_time = self._metrics.converter_time.labels(self._model_name)
                series.observe(micros)
            if counts is not None:
                self._observe_features(*counts)
            model_feeds = {}
            for model_input, (tensor_name, dtype) in self._feed.items():
                array = pool[tensor_name][:total]
                if array.dtype != dtype:
                    # the layout's dtype (int64 binary features) into the model's (often float32)
                    converted = np.empty(array.shape, dtype=dtype)
                    _kernel_cast_into(array, converted, 0)
                    array = converted
                model_feeds[model_input] = array
            outputs = self._run_model(model_feeds, wanted)
            # A runtime may hand back a view of its input (torch.from_numpy
            # round trips); the buffers go to the next batch, so keep a copy.
            for name, array in outputs.items():
                # an array that owns its memory is nobody's view
                if array.base is not None and any(np.may_share_memory(array, buffer) for buffer in pool.values()):
                    outputs[name] = np.array(array)
        finally:
            self._return_buffers(pool)
        if len(tasks) == 1:
            return [outputs]
        pieces = split_rows(outputs, [t.rows for t in tasks])
        return [{n: piece[n] for n in t.payload.output_names} for t, piece in zip(tasks, pieces)]

    def _observe_features(self, counts: np.ndarray, sums: np.ndarray) -> None:
        """Add one batch's counts of the reported features to their histograms.

        A feature's series appears once a value of it was seen, as the
        original's (it observes, creating the series, only then).
        """
        series = self._feature_series
        for row in np.flatnonzero(counts.any(axis=1)).tolist():
            child = series[row]
            if child is None:
                continuous_ids, discrete_ids = self.converter.reported_feature_ids
                if row < len(continuous_ids):
                    child = self._metrics.feature_id_continuous.labels(continuous_ids[row])
                else:
                    child = self._metrics.feature_id_discrete.labels(discrete_ids[row - len(continuous_ids)])
                series[row] = child
            child.add(counts[row].tolist(), float(sums[row]))
