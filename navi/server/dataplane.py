"""The data plane every transport calls: one request's life, written once.

TF Serving gRPC (``tfserving``), KServe V2 gRPC (``kserve``), TF Serving REST
(``tfrest``) and KServe V2 HTTP (``v2http``) are adapters: each decodes its
wire format into an ``InferRequest``, calls ``DataPlane.infer`` and encodes the
``InferResult``. What the request goes through lives here and nowhere else:

1. the request metrics (received / failed / answered, per model);
2. model resolution by name and version, label or newest (``ModelRegistry.get``);
3. the signature name check;
4. admission at the model's queue (``ServedModel.admit``) *before* the tensors
   are decoded, so a request its queue will refuse costs no decoding;
5. the decode, under the per-request bounds (``codec.RequestBudget``);
6. ``ServedModel.infer`` with the caller's deadline and arrival time: every
   transport's requests to one model version join the same batches;
7. the answer's row count, the response time and the score sum.

Errors are ``NaviError``s; each transport maps them at its own edge
(``status.grpc_errors``, ``status.http_status_of``). No transport imports
another transport's module: what two of them share (metadata, version states,
the platform names) is here too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from navi import codec
from navi.errors import InvalidInput, ModelVersionNotFound, Unimplemented, quote
from navi.plugins.base import Signature
from navi.settings import RequestLimits

#: the signature name TF Serving clients send when they name none
DEFAULT_SIGNATURE = "serving_default"

#: Triton's platform names (KServe clients display them), by navi runtime
PLATFORM = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel", "torch": "pytorch_libtorch"}

#: decodes a request's tensors for the model version that will run them (its signature gives JSON
#: numbers their dtype), under the request's budget: ({input name: array}, wanted output names)
Decoder = Callable[[Any, codec.RequestBudget], "tuple[Mapping[str, np.ndarray], tuple[str, ...]]"]


@dataclass(slots=True)
class InferRequest:
    """One inference request, as every transport hands it to the data plane.

    ``decode`` runs after the model is found and its queue admits the request
    (it parses the tensors: bytes not yet parsed cost nothing if refused).
    ``version``/``label`` choose the version (neither: the newest or pinned
    one); ``signature_name`` None or "" means the default. ``deadline_s`` and
    ``arrival_s`` are on the ``time.monotonic()`` clock.
    """

    model_name: str
    decode: Decoder
    version: int | None = None
    label: str | None = None
    signature_name: str | None = None
    deadline_s: float | None = None
    arrival_s: float | None = None


@dataclass(slots=True)
class InferResult:
    """The model version that answered, its outputs by name (in answer order) and their rows."""

    served: Any
    outputs: dict[str, np.ndarray]
    rows: int
    signature_name: str = DEFAULT_SIGNATURE


@dataclass(slots=True)
class ModelMetadata:
    """What both metadata APIs tell of a model version: its serving signature and the others."""

    served: Any
    signature: Signature
    #: every signature a client may name, the serving one under each of its names
    signatures: dict[str, Signature] = field(default_factory=dict)
    versions: tuple[int, ...] = ()
    platform: str = ""


class RequestMetrics:
    """Per-request counters of every transport, with each model's labelled children cached.

    ``labels()`` costs a lock and a dict walk per call; a request touches four
    by-model series, so they are looked up once per model. Names the registry
    does not serve get no by-model series: a client must not be able to grow
    the metrics without bound by sending made-up model names.
    """

    def __init__(self, metrics, registry):
        self._metrics = metrics
        self._known = frozenset(registry.model_names())
        self._children: dict[str, tuple] = {}

    def _of(self, model_name: str):
        children = self._children.get(model_name)
        if children is None and model_name in self._known:
            m = self._metrics
            children = (
                m.num_requests_by_model.labels(model_name),
                m.num_requests_failed_by_model.labels(model_name),
                m.num_predictions.labels(model_name),
                m.response_time.labels(model_name),
                m.predicted_rows.labels(model_name),
                m.prediction_score_sum.labels(model_name),
            )
            self._children[model_name] = children
        return children

    def received(self, model_name: str) -> tuple | None:
        """A request for ``model_name`` arrived; returns its by-model series for ``answered``."""
        self._metrics.num_requests.inc()
        children = self._of(model_name)
        if children is not None:
            children[0].inc()
        return children

    def failed(self, model_name: str) -> None:
        """The request was answered with an error."""
        self._metrics.num_requests_failed.inc()
        children = self._of(model_name)
        if children is not None:
            children[1].inc()

    def answered(self, children: tuple | None, rows: int, started_s: float, outputs=None) -> None:
        """The request was answered with ``rows`` predictions, ``outputs`` by name
        (``children``: what ``received`` returned)."""
        if children is not None:
            children[2].inc()
            children[3].observe((time.monotonic() - started_s) * 1e3)  # milliseconds, as the original
            children[4].inc(rows)
            score = first_score(outputs)
            if score is not None:
                children[5].inc(score)


def first_score(outputs) -> float | None:
    """The first value of the first output, for :navi:prediction_score_sum; None when
    there is none, it is not a number, or it is negative or not finite (a counter
    only goes up)."""
    if not outputs:
        return None
    array = next(iter(outputs.values()))
    try:
        if array.dtype.kind not in "fiub":
            return None
        score = float(array.item(0))
    except (AttributeError, IndexError):  # not an array, or an empty one
        return None
    return score if 0.0 <= score < float("inf") else None


def rows_of(outputs: Mapping[str, np.ndarray]) -> int:
    """The rows an answer carries: the first axis of its first output that has one."""
    for array in outputs.values():
        if np.ndim(array) > 0:
            return len(array)
    return 0


def version_of(text: str | None) -> int | None:
    """A version given as text (KServe, REST paths): None when empty, ``InvalidInput`` when not an integer."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"model version {quote(text)} is not an integer") from None


class DataPlane:
    """Model resolution, metrics, admission, bounded decoding and inference, for every transport."""

    def __init__(self, registry, metrics, limits: RequestLimits | None = None):
        self.registry = registry
        self.counts = RequestMetrics(metrics, registry)
        self.limits = limits if limits is not None else RequestLimits()

    # ----------------------------------------------------------------- resolution

    def model(self, name: str, version: int | None = None, label: str | None = None):
        """The ``ServedModel`` a request names: by version, by label, or the newest (pinned) one."""
        if not name:
            raise InvalidInput("model name is required")
        if label:
            return self.registry.get(name, label=label)
        return self.registry.get(name, version=version)

    @staticmethod
    def check_signature(served, signature_name: str | None) -> str:
        """The signature name a request may use (``DEFAULT_SIGNATURE`` or the configured one); ``InvalidInput`` else."""
        wanted = signature_name or DEFAULT_SIGNATURE
        configured = served.settings.serving_signature or DEFAULT_SIGNATURE
        if wanted not in (DEFAULT_SIGNATURE, configured):
            raise InvalidInput(
                f"model {served.name!r} has no signature {quote(wanted)}; it serves "
                f"{DEFAULT_SIGNATURE!r}" + (f" and {configured!r}" if configured != DEFAULT_SIGNATURE else "")
            )
        return wanted

    # ----------------------------------------------------------------- inference

    def infer(self, request: InferRequest, encode: Callable[[InferResult], Any]) -> Any:
        """Run ``request`` and return ``encode(result)``: the transport's answer.

        The response time counts from ``request.arrival_s`` to the end of the
        encoding; an error anywhere (the encoding's included) counts as failed
        and is raised for the transport to map.
        """
        arrival_s = request.arrival_s
        started_s = arrival_s if arrival_s is not None else time.monotonic()
        name = request.model_name
        counts = self.counts
        series = counts.received(name)
        try:
            served = self.model(name, request.version, request.label)
            signature_name = self.check_signature(served, request.signature_name)
            served.admit(arrival_s)  # refused (queue full or late, unloading) before its tensors are parsed
            limits = self.limits
            inputs, output_names = request.decode(served, codec.RequestBudget(limits.max_request_decoded_bytes))
            outputs = served.infer(inputs, output_names, request.deadline_s, arrival_s,
                                   max_rows=limits.max_request_rows, admitted=True)
            if output_names and tuple(outputs) != tuple(output_names):
                outputs = {n: outputs[n] for n in output_names}
            result = InferResult(served, outputs, rows_of(outputs), signature_name)
            answer = encode(result)
        except Exception:
            counts.failed(name)
            raise
        counts.answered(series, result.rows, started_s, outputs)
        return answer

    # ----------------------------------------------------------------- model information

    def metadata(self, name: str, version: int | None = None, label: str | None = None) -> ModelMetadata:
        """The served signature (what Predict takes), the model's other signatures, loaded versions, platform."""
        served = self.model(name, version, label)
        signature = served.signature
        signatures = dict(served.signature_defs())
        # the one Predict serves is what clients see through the pipeline (in
        # BPR mode: one string input): it overrides the model's own entry
        signatures[DEFAULT_SIGNATURE] = signature
        configured = served.settings.serving_signature
        if configured and configured != DEFAULT_SIGNATURE:
            signatures[configured] = signature
        versions = tuple(status.version for status in self.registry.version_status(served.name)
                         if status.state == "AVAILABLE")
        runtime = served.settings.runtime or ""
        return ModelMetadata(served, signature, signatures, versions, PLATFORM.get(runtime, runtime))

    def version_status(self, name: str, version: int | None = None, label: str | None = None) -> list:
        """The ``VersionStatus`` of every known version of ``name``, or only of the one asked for."""
        if not name:
            raise InvalidInput("model name is required")
        statuses = self.registry.version_status(name)
        wanted = version
        if label:
            wanted = self.registry.get(name, label=label).version
        if wanted is None:
            return list(statuses)
        chosen = [status for status in statuses if status.version == wanted]
        if not chosen:
            raise ModelVersionNotFound(f"model {name!r} has no version {wanted}")
        return chosen

    def is_ready(self, name: str | None = None, version: int | None = None) -> bool:
        """Whether the server (None), a model or one of its versions can serve now."""
        if name is None:
            return bool(self.registry.is_ready())
        if version is None:
            return bool(self.registry.is_ready(name))
        try:
            self.model(name, version)
        except InvalidInput:
            raise
        except Exception:  # noqa: BLE001 - any other refusal means: not ready
            return False
        return True

    def delegate(self, name: str, version: int | None, label: str | None, method: str,
                 input_message, signature_name: str | None):
        """(served, ``LoadedModel.<method>(input_message)``) for TF Serving's Classify and Regress.

        ``Unimplemented`` when the model's runtime does not offer ``method``.
        """
        served = self.model(name, version, label)
        handler = served.tf_method(method)
        if handler is None:
            raise Unimplemented(
                f"{method.capitalize()} is not supported by model {served.name!r} "
                f"(runtime {served.settings.runtime or '?'}); use Predict"
            )
        if signature_name:
            return served, handler(input_message, signature_name=signature_name)
        return served, handler(input_message)


__all__ = ["DEFAULT_SIGNATURE", "DataPlane", "InferRequest", "InferResult", "ModelMetadata",
           "PLATFORM", "RequestMetrics", "first_score", "rows_of", "version_of"]
