"""ServedModel: one loaded (model, version) with its batch queue.

A request goes: ``infer`` validates it in the caller's thread (dense inputs:
names, dtypes, shapes; BPR mode: every payload decoded once to count its rows)
and queues it; a batch worker merges the batch's requests into one buffer per
model input (dtype conversion on the way), runs the model, and cuts the outputs
back per request by row counts. Errors of one request never touch another.

Two modes:

* **dense**: the request carries the model's inputs by name.
* **BPR** (the original's "home" converter): the request carries one string
  tensor of serialized BatchPredictionRequests; the worker converts the whole
  batch's payloads in one ``BprConverter.convert_into`` call and feeds the
  model its inputs, by name when they carry the layout's tensor names, else by
  position in ``DenseLayout.feed_order``.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from navi.batching import BatchScheduler, BatchTask, Clock, split_rows
from navi._fast.kernels import cast_into as _kernel_cast_into
from navi.dtypes import feeds
from navi.errors import ConfigError, InvalidInput, RequestTooLarge, quote
from navi.plugins.base import LoadedModel, Signature, TensorSpec, served_inputs, served_outputs
from navi.segdense import find_spec_files, load_layout
from navi.settings import ModelSettings

log = logging.getLogger(__name__)

#: the settings' default input list; "default" means: detect from the model
_STRING = np.dtype(object)


def _numpy_cast_into(src: np.ndarray, dst: np.ndarray, row_start: int) -> None:
    """Copy ``src`` into ``dst[row_start:row_start+len(src)]`` converting dtype."""
    dst[row_start : row_start + src.shape[0]] = src


def cast_into(src: np.ndarray, dst: np.ndarray, row_start: int) -> None:
    """Write request rows ``src`` into the batch buffer ``dst`` at ``row_start``.

    Numeric arrays go through the Numba kernel (one pass, converts dtype);
    strings and anything the kernel does not take use numpy assignment.
    """
    if dst.dtype == _STRING or src.dtype.kind not in "biuf" or src.ndim != dst.ndim:
        _numpy_cast_into(src, dst, row_start)
        return
    try:
        _kernel_cast_into(np.ascontiguousarray(src), dst, row_start)
    except (TypeError, ValueError):
        # a dtype pair or layout the kernel was not compiled for
        _numpy_cast_into(src, dst, row_start)


#: the one dtype rule (navi.dtypes), under the name the pipeline's callers know
castable = feeds


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


def _describe(spec: TensorSpec) -> str:
    dims = ", ".join("?" if d < 0 else str(d) for d in spec.shape)
    return f"{spec.name} ({spec.dtype.name} [{dims}])"


class ServedModel:
    """One loaded model version behind a batch queue.

    ``signature`` is what clients see: in BPR mode one string input named
    ``settings.request_tensor_name`` (default ``examples``), shape (-1,); in dense mode
    the model's inputs. ``infer`` validates (raising ``InvalidInput``) before
    queueing, then waits for this request's outputs; ``run_now`` runs one
    request in the calling thread (warmup).
    """

    def __init__(
        self,
        name: str,
        version: int,
        settings: ModelSettings,
        model: LoadedModel,
        *,
        version_dir: Path | None = None,
        metrics: Any | None = None,
        clock: Clock | None = None,
    ):
        self.name = name
        self.version = int(version)
        self.settings = settings
        self.model = model
        self.version_dir = Path(version_dir) if version_dir is not None else None
        self._metrics = metrics
        self._metric_series: tuple | None = None
        # one histogram series per reported feature (counts row), made when first counted
        self._feature_series: list | None = None
        # converter output buffers of finished batches, reused by the next ones:
        # at most one per batch in flight (the threads that run batches are the
        # gRPC handler threads, far more than the batches they run at once)
        self._free_buffers: list[dict[str, np.ndarray]] = []
        self._buffers_lock = threading.Lock()
        model_sig = model.signature
        self._outputs = self._pick_outputs(model_sig)
        self.converter = None
        self.layout = None
        self.mode = "bpr" if self._wants_converter(model_sig) else "dense"
        if self.mode == "bpr":
            self._init_bpr(model_sig)
        else:
            self._init_dense(model_sig)
            if settings.report_continuous_feature_ids or settings.report_discrete_feature_ids:
                log.warning("%s: feature ids to report are set, but only the BPR converter reports "
                            "feature values and this model takes dense inputs", name)
        self._scheduler = BatchScheduler(
            self._process,
            settings.batching,
            clock=clock,
            name=f"{name}:{self.version}",
            metrics=metrics,
            model_name=name,
        )

    # ----------------------------------------------------------------- set-up

    def _pick_outputs(self, sig: Signature) -> tuple[TensorSpec, ...]:
        names = served_outputs(self.settings.outputs, [s.name for s in sig.outputs], source=self.name)
        return tuple(sig.output(n) for n in names)

    def _wants_converter(self, sig: Signature) -> bool:
        choice = self.settings.converter
        if choice == "none":
            return False
        has_spec = self.version_dir is not None and find_spec_files(self.version_dir) is not None
        if choice == "home":
            if not has_spec:
                raise ConfigError(
                    "converter 'home' needs segdense_transform_spec_home_recap_2022.json and "
                    f"all_config.json in {self.version_dir}",
                    source=self.name, key="converter",
                )
            return True
        if not has_spec:
            return False
        from navi.segdense import FEED_ORDER

        names = [spec.name for spec in sig.inputs]
        # the layout's tensor names (the discrete tensor is not fed by the original
        # but a model may take it), or the original's five inputs by position
        return set(names) <= {*FEED_ORDER, "discrete"} or len(names) == len(FEED_ORDER)

    def _init_dense(self, sig: Signature) -> None:
        # dense mode: --input names model inputs, so one naming none of them is an error
        names = served_inputs(self.settings.inputs, [s.name for s in sig.inputs], source=self.name,
                              foreign_means_detect=False)
        inputs = tuple(sig.input(n) for n in names)
        self._inputs = inputs
        self._input_names = frozenset(s.name for s in inputs)
        # a fixed first axis means the model cannot take a merged batch
        self._fixed_batch = any(s.shape and s.shape[0] >= 0 for s in inputs)
        self.signature = Signature(inputs, self._outputs, sig.method_name, sig.extra)

    def _init_bpr(self, sig: Signature) -> None:
        # imported here so dense serving never needs the compiled BPR decoder
        from navi.converter import BprConverter

        spec_files = find_spec_files(self.version_dir)
        self.layout = load_layout(*spec_files)
        reported: dict = {}
        if self._metrics is not None:
            histogram = self._metrics.feature_id_continuous
            reported = dict(report_continuous_ids=self.settings.report_continuous_feature_ids,
                            report_discrete_ids=self.settings.report_discrete_feature_ids,
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
                source=self.name, key="converter",
            )
        for spec in sig.inputs:
            width = self.layout.tensor(feed[spec.name]).width
            if len(spec.shape) != 2 or spec.shape[1] not in (-1, width):
                raise ConfigError(
                    f"model input {_describe(spec)} cannot take layout tensor "
                    f"{feed[spec.name]!r} of width {width}",
                    source=self.name, key="converter",
                )
        # model input name -> (layout tensor name, model dtype)
        self._feed = {s.name: (feed[s.name], s.dtype) for s in sig.inputs}
        self._bpr_input = self.settings.request_tensor_name
        client_input = TensorSpec(self._bpr_input, _STRING, (-1,))
        extra = dict(sig.extra)
        extra["converter"] = "home"
        self.signature = Signature((client_input,), self._outputs, sig.method_name, extra)

    # ----------------------------------------------------------------- public API

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...] = (),
        deadline_s: float | None = None,
        arrival_s: float | None = None,
        max_rows: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate, queue and wait for one request's outputs (what the servicers call).

        ``max_rows`` bounds the request's rows (``RequestTooLarge`` past it,
        before it is queued).

        Raises ``InvalidInput`` (or ``DecodeError``) for a bad request and
        ``Overloaded`` when the queue is full, before queueing anything;
        ``deadline_s`` is absolute, on the ``time.monotonic()`` clock. The
        calling thread may run its batch itself instead of waking a batch
        thread and being woken back.
        ``arrival_s`` (``time.monotonic()``) is when the request reached the
        server (the batch timeout counts from it).
        """
        payload, rows = self._prepare(inputs, output_names, max_rows)
        return self._scheduler.run(payload, rows, deadline_s, arrival_s)

    def admit(self) -> None:
        """Raise ``Overloaded`` (or ``SchedulerClosed``) now if a request would be refused at its queue.

        For the servers, before a request's tensors are parsed: a request the
        queue will refuse costs no more than finding its model.
        """
        self._scheduler.admit()

    def run_now(
        self, inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Validate and run one request in the calling thread, bypassing the queue.

        For warmup: the same validation, conversion and model code as ``infer``,
        without waiting out ``batch_timeout_ms`` for company that cannot come.
        Feature values are not reported: the warmup's BPRs (synthetic ones
        included) are no traffic the model serves.
        """
        payload, rows = self._prepare(inputs, output_names)
        return self._process([BatchTask(payload, rows, time.monotonic())], report_features=False)[0]

    def signature_defs(self) -> dict[str, Signature]:
        """Every signature the model's runtime exports by name (a SavedModel's); empty for the others."""
        listing = getattr(self.model, "signature_defs", None)
        return dict(listing()) if callable(listing) else {}

    def tf_method(self, method: str):
        """The runtime's TF Serving ``classify`` or ``regress`` (taking an ``Input`` message), or None."""
        if method not in ("classify", "regress"):
            raise ValueError(f"no TF Serving method {method!r}")
        return getattr(self.model, method, None)

    @property
    def num_queued(self) -> int:
        """Requests waiting in this version's queue."""
        return self._scheduler.num_queued

    def close(self) -> None:
        """Answer every accepted request, then release the model."""
        self._scheduler.close()
        self.model.close()

    # ----------------------------------------------------------------- validation

    def _prepare(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str],
                 max_rows: int | None = None) -> tuple[tuple, int]:
        """(batch payload, rows) of a valid request; raises ``InvalidInput`` otherwise.

        ``RequestTooLarge`` when it has more than ``max_rows`` rows (BPR: counted
        without decoding the records, before anything of their size is allocated).
        """
        names = self._check_outputs(output_names)
        if self.mode == "bpr":
            payload, rows = self._prepare_bpr(inputs)
        else:
            payload, rows = self._prepare_dense(inputs)
        if max_rows is not None and rows > max_rows:
            raise RequestTooLarge(
                f"the request has {rows} rows for model {self.name}, over max_request_rows={max_rows} "
                "(raise it with --max-request-rows)"
            )
        return (payload, names), rows

    def _check_outputs(self, output_names: Sequence[str]) -> tuple[str, ...]:
        if not output_names:
            return tuple(s.name for s in self._outputs)
        model_sig = self.model.signature
        unknown = [n for n in output_names if model_sig.output(n) is None]
        if unknown:
            raise InvalidInput(
                f"model {self.name} has no output {', '.join(map(quote, unknown[:5]))}; outputs: "
                f"{', '.join(s.name for s in model_sig.outputs)}"
            )
        return tuple(output_names)

    def _prepare_dense(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict, int]:
        if inputs.keys() != self._input_names:  # the usual request names exactly the inputs
            self._check_input_names(inputs)
        rows = None
        checked = {}
        for spec in self._inputs:
            array = np.asarray(inputs[spec.name])
            if spec.declared:
                dtype_ok, wanted = castable(array.dtype, spec.dtype), spec.dtype.name
                ok_shape = array.ndim == len(spec.shape) and array.ndim >= 1 and all(
                    want < 0 or want == got for want, got in zip(spec.shape, array.shape)
                )
            else:  # navi's guess of an input must not refuse what the model takes
                dtype_ok, wanted, ok_shape = array.dtype.kind in "biuf", "numbers", array.ndim >= 1
            if not dtype_ok:
                raise InvalidInput(
                    f"input {spec.name!r} has dtype {array.dtype.name}; model {self.name} takes {wanted}"
                )
            if not ok_shape:
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(array.shape)}; model {self.name} "
                    f"takes {_describe(spec)}"
                )
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size: {spec.name!r} has {array.shape[0]} "
                    f"rows, others {rows}"
                )
            if array.dtype == _STRING:
                array = _strings_as_bytes(array)
            checked[spec.name] = array
        return checked, int(rows or 0)

    def _check_input_names(self, inputs: Mapping[str, np.ndarray]) -> None:
        missing = [s for s in self._inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(
                f"model {self.name} needs input {', '.join(_describe(s) for s in missing)}; "
                f"the request has {', '.join(map(quote, sorted(inputs)[:5])) or 'none'}"
            )
        extra = sorted(set(inputs) - self._input_names)
        if extra:
            raise InvalidInput(
                f"model {self.name} has no input {', '.join(map(quote, extra[:5]))}; it takes "
                f"{', '.join(_describe(s) for s in self._inputs)}"
            )

    def _prepare_bpr(self, inputs: Mapping[str, np.ndarray]) -> tuple[tuple, int]:
        tensor = inputs.get(self._bpr_input)
        if tensor is None:
            strings = [a for a in inputs.values() if np.asarray(a).dtype.kind in "OS"]
            if len(strings) != 1:
                raise InvalidInput(
                    f"model {self.name} takes one string tensor {self._bpr_input!r} of "
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
        payloads = array.reshape(-1).tolist()
        counts = self.converter.count_rows(payloads)
        return (payloads, counts), int(counts.sum())

    # ----------------------------------------------------------------- batch worker

    def _process(self, tasks: Sequence[BatchTask], report_features: bool = True) -> list:
        """Run one batch (on the thread that took it); one result per task."""
        if len(tasks) == 1:  # the common case at low load: nothing to merge
            wanted = tasks[0].payload[1]
        else:
            merged: list[str] = []
            for task in tasks:
                for name in task.payload[1]:
                    if name not in merged:
                        merged.append(name)
            wanted = tuple(merged)
        if self.mode == "bpr":
            return self._process_bpr(tasks, wanted, report_features)
        return self._process_dense(tasks, wanted)

    def _process_dense(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...]) -> list:
        if len(tasks) == 1:
            return self._run_dense_group(tasks, wanted)
        if self._fixed_batch:
            groups = [[i] for i in range(len(tasks))]
        else:
            # requests can share one buffer only when their non-batch dims agree
            # (and their dtypes, for inputs passed as sent: see TensorSpec.declared)
            by_shape: dict[tuple, list[int]] = {}
            for i, task in enumerate(tasks):
                arrays = [(s, task.payload[0][s.name]) for s in self._inputs]
                key = tuple((a.shape[1:], None if s.declared else a.dtype) for s, a in arrays)
                by_shape.setdefault(key, []).append(i)
            groups = list(by_shape.values())
        results: list = [None] * len(tasks)
        for group in groups:
            members = [tasks[i] for i in group]
            for i, result in zip(group, self._run_dense_group(members, wanted)):
                results[i] = result
        return results

    def _run_dense_group(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...]) -> list:
        rows = [t.rows for t in tasks]
        total = sum(rows)
        feeds = {}
        for spec in self._inputs:
            first = tasks[0].payload[0][spec.name]
            dtype = spec.dtype if spec.declared else first.dtype
            if len(tasks) == 1 and first.dtype == dtype:
                feeds[spec.name] = first
                continue
            buffer = np.empty((total,) + first.shape[1:], dtype=dtype)
            start = 0
            for task in tasks:
                src = task.payload[0][spec.name]
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
            return [r for t in tasks for r in self._run_dense_group([t], wanted)]
        return [{n: piece[n] for n in t.payload[1]} for t, piece in zip(tasks, pieces)]

    def _take_buffers(self, total: int) -> dict[str, np.ndarray]:
        """Converter output arrays with room for ``total`` rows; give them back with ``_return_buffers``."""
        with self._buffers_lock:
            pool = self._free_buffers.pop() if self._free_buffers else None
        have = 0 if pool is None else next(iter(pool.values())).shape[0]
        if have < total:
            # grow geometrically: batch sizes creep up under load, reallocate rarely
            capacity = max(total, 2 * have, self.settings.batching.max_batch_rows, 64)
            pool = self.layout.allocate(capacity)
        return pool

    def _return_buffers(self, pool: dict[str, np.ndarray]) -> None:
        with self._buffers_lock:
            # the most recently used set is reused first: it is the one still in cache
            self._free_buffers.append(pool)

    def _process_bpr(self, tasks: Sequence[BatchTask], wanted: tuple[str, ...], report_features: bool) -> list:
        if len(tasks) == 1:
            payloads = tasks[0].payload[0][0]
        else:
            payloads = [p for task in tasks for p in task.payload[0][0]]
        total = sum(task.rows for task in tasks)
        pool = self._take_buffers(total)
        try:
            started = time.monotonic()
            # the decoder counts the reported features' values as it converts
            counting = report_features and self._feature_series is not None
            counts = self.converter.new_feature_counts() if counting else None
            self.converter.convert_into(payloads, pool, feature_counts=counts)
            if self._metrics is not None and total:
                # the original's unit: microseconds per row of the batch
                micros = (time.monotonic() - started) * 1e6 / total
                self._series()[1].observe(micros)
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
        return [{n: piece[n] for n in t.payload[1]} for t, piece in zip(tasks, pieces)]

    def _run_model(self, feeds: dict, wanted: tuple[str, ...]) -> dict:
        started = time.monotonic()
        outputs = self.model.run(feeds, wanted)
        # rows predicted are counted by the server per answered request (warmup excluded)
        if self._metrics is not None:
            self._series()[0].observe((time.monotonic() - started) * 1e3)  # milliseconds
        return outputs

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

    def _series(self) -> tuple:
        """(inference time, converter time) series of this model, looked up once."""
        series = self._metric_series
        if series is None:
            m = self._metrics
            series = self._metric_series = (
                m.model_inference_time.labels(self.name), m.converter_time.labels(self.name),
            )
        return series


__all__ = ["ServedModel", "cast_into", "castable"]
