"""ServedModel: one loaded (model, version) with its batch queue.

A request goes: ``infer`` validates it in the caller's thread (dense inputs:
names, dtypes, shapes; BPR mode: every payload decoded once to count its rows)
and queues it; a batch worker merges the batch's requests into one buffer per
model input (dtype conversion on the way), runs the model, and cuts the outputs
back per request by row counts. Errors of one request never touch another.

What depends on the input mode (dense or BPR) lives in its strategy class in
navi.modes (``DenseMode``, ``BprMode``), picked once at construction; this
module holds what both share: outputs, row limits, the queue, model timing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from navi.batching import BatchScheduler, BatchTask, Clock, sleep
from navi.errors import InvalidInput, RequestTooLarge, quote
from navi.modes import BprMode, DenseMode, cast_into, castable, wants_converter
from navi.plugins.base import LoadedModel, Signature, TensorSpec, served_outputs
from navi.settings import ModelSettings


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
        self._inference_time = None  # the metric series, looked up when first observed
        self._run_s = 0.0  # moving average of the model's run time (how long a run sleeps)
        model_sig = model.signature
        self._outputs = self._pick_outputs(model_sig)
        self._output_names = tuple(s.name for s in self._outputs)  # what a request naming none gets
        if wants_converter(settings, self.version_dir, model_sig, name):
            self._mode: DenseMode | BprMode = BprMode(
                name, settings, model_sig, self._outputs, self._run_model,
                version_dir=self.version_dir, metrics=metrics)
        else:
            self._mode = DenseMode(name, settings, model_sig, self._outputs, self._run_model)
        #: what clients see: in BPR mode one string input, in dense mode the model's inputs
        self.signature: Signature = self._mode.signature
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

    @property
    def mode(self) -> str:
        """``"dense"`` or ``"bpr"``: how requests carry the model's inputs."""
        return self._mode.name

    @property
    def converter(self):
        """The BPR converter (BPR mode), else None."""
        return self._mode.converter

    @property
    def layout(self):
        """The segdense layout the converter fills (BPR mode), else None."""
        return self._mode.layout

    # ----------------------------------------------------------------- public API

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...] = (),
        deadline_s: float | None = None,
        arrival_s: float | None = None,
        max_rows: int | None = None,
        admitted: bool = False,
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
        server (the batch timeout counts from it). ``admitted``: ``admit``
        let it in before its parse (its queue-wait bound is not applied twice).
        """
        payload, rows = self._prepare(inputs, output_names, max_rows)
        return self._scheduler.run(payload, rows, deadline_s, arrival_s, admitted)

    def admit(self, arrival_s: float | None = None) -> None:
        """Raise ``Overloaded`` (or ``SchedulerClosed``) now if a request would be refused at its queue.

        For the servers, before a request's tensors are parsed: a request the
        queue will refuse costs no more than finding its model. ``arrival_s``
        (``time.monotonic()``): when it reached the server; its wait since
        counts against ``max_queue_wait_ms``.
        """
        self._scheduler.admit(arrival_s)

    def wait_refusal(self, arrival_s: float | None = None, ahead: int = 0) -> str | None:
        """Why ``admit(arrival_s)`` would refuse by ``max_queue_wait_ms`` now, with ``ahead`` more
        requests queued, or None; nothing counted."""
        return self._scheduler.wait_refusal(arrival_s, ahead)

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
                 max_rows: int | None = None):
        """(batch payload, rows) of a valid request; raises ``InvalidInput`` otherwise.

        ``RequestTooLarge`` when it has more than ``max_rows`` rows (BPR: counted
        without decoding the records, before anything of their size is allocated).
        """
        payload, rows = self._mode.prepare(inputs, self._check_outputs(output_names))
        if max_rows is not None and rows > max_rows:
            raise RequestTooLarge(
                f"the request has {rows} rows for model {self.name}, over max_request_rows={max_rows} "
                "(raise it with --max-request-rows)"
            )
        return payload, rows

    def _check_outputs(self, output_names: Sequence[str]) -> tuple[str, ...]:
        if not output_names:
            return self._output_names
        model_sig = self.model.signature
        unknown = [n for n in output_names if model_sig.output(n) is None]
        if unknown:
            raise InvalidInput(
                f"model {self.name} has no output {', '.join(map(quote, unknown[:5]))}; outputs: "
                f"{', '.join(s.name for s in model_sig.outputs)}"
            )
        return tuple(output_names)

    # ----------------------------------------------------------------- batch worker

    def _process(self, tasks: Sequence[BatchTask], report_features: bool = True) -> list:
        """Run one batch (on the thread that took it); one result per task."""
        if len(tasks) == 1:  # the common case at low load: nothing to merge
            wanted = tasks[0].payload.output_names
        else:
            merged: list[str] = []
            for task in tasks:
                for name in task.payload.output_names:
                    if name not in merged:
                        merged.append(name)
            wanted = tuple(merged)
        return self._mode.process(tasks, wanted, report_features)

    def _run_model(self, feeds: dict, wanted: tuple[str, ...]) -> dict:
        # The run releases the GIL: one expected to be long lets the calling
        # thread's pool admit another request meanwhile, so requests keep being
        # parsed and joining the queue while the model runs; a short one keeps
        # its place (navi.batching.sleep). Only the run counts: the batch's
        # conversion holds the GIL, and announcing it too admitted threads that
        # could only wait (benchmarks/RESULTS.md, "Per-request cost").
        started = time.monotonic()
        sleep.sleeping(self._run_s)
        try:
            outputs = self.model.run(feeds, wanted)
        finally:
            sleep.awake()
        run_s = time.monotonic() - started
        self._run_s = run_s if self._run_s == 0.0 else 0.8 * self._run_s + 0.2 * run_s
        # rows predicted are counted by the server per answered request (warmup excluded)
        if self._metrics is not None:
            series = self._inference_time
            if series is None:
                series = self._inference_time = self._metrics.model_inference_time.labels(self.name)
            series.observe(run_s * 1e3)  # milliseconds
        return outputs


__all__ = ["ServedModel", "cast_into", "castable"]
