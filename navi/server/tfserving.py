"""TensorFlow Serving's gRPC API: PredictionService and ModelService.

Servicers are thin: decode tensors (codec), find the ``ServedModel`` in the
registry, ``infer`` (queue and wait for the batch), encode the answer. Errors
are ``NaviError``s mapped to status codes by ``status.grpc_errors``.

The handlers block a gRPC worker thread until the batch answered (the thread
may run the batch itself: see ``BatchScheduler``); a thread asleep in that wait
gives its place to the next request (``navi.server.threads.HandlerPool``), so
``ServerSettings.grpc_max_threads`` bounds the requests in flight and
``grpc_threads`` the threads running at once.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np

from navi._proto.tensorflow.core.protobuf import meta_graph_pb2
from navi._proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from navi.errors import InvalidInput, ModelVersionNotFound, Unimplemented, quote
from navi import codec
from navi.server.rawrpc import add_raw_service
from navi.server.status import TF_ERROR_CODE, grpc_errors
from navi.server.threads import request_arrival_s
from navi.settings import RequestLimits

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"

_STATE = get_model_status_pb2.ModelVersionStatus.State
_STATE_BY_NAME = {
    "START": _STATE.START,
    "LOADING": _STATE.LOADING,
    "AVAILABLE": _STATE.AVAILABLE,
    "UNLOADING": _STATE.UNLOADING,
    "END": _STATE.END,
}


def _model_name(model_spec) -> str:
    if not model_spec.name:
        raise InvalidInput("model_spec.name is required")
    return model_spec.name


class RequestMetrics:
    """Per-request counters of both APIs, with each model's labelled children cached.

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

    def received(self, model_name: str) -> None:
        """A request for ``model_name`` arrived."""
        self._metrics.num_requests.inc()
        children = self._of(model_name)
        if children is not None:
            children[0].inc()

    def failed(self, model_name: str) -> None:
        """The request was answered with an error."""
        self._metrics.num_requests_failed.inc()
        children = self._of(model_name)
        if children is not None:
            children[1].inc()

    def answered(self, model_name: str, rows: int, started_s: float, outputs=None) -> None:
        """The request was answered with ``rows`` predictions, ``outputs`` by name."""
        children = self._of(model_name)
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
    if getattr(array, "size", 0) == 0 or array.dtype.kind not in "fiub":
        return None
    score = float(array.flat[0])
    return score if 0.0 <= score < float("inf") else None


def resolve_model(registry, model_spec) -> Any:
    """The ``ServedModel`` a TF Serving ``ModelSpec`` names (version, label or newest)."""
    name = _model_name(model_spec)
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return registry.get(name, version=int(model_spec.version.value))
    if choice == "version_label":
        return registry.get(name, label=model_spec.version_label)
    return registry.get(name)


def _check_signature_name(served, model_spec) -> str:
    # TF Serving models may carry several signatures; ours carry one, served
    # under "serving_default" and under the configured --serving-sig name.
    wanted = model_spec.signature_name or DEFAULT_SIGNATURE
    configured = getattr(getattr(served, "settings", None), "serving_signature", DEFAULT_SIGNATURE)
    if wanted not in (DEFAULT_SIGNATURE, configured):
        raise InvalidInput(
            f"model {served.name!r} has no signature {quote(wanted)}; it serves "
            f"{DEFAULT_SIGNATURE!r}" + (f" and {configured!r}" if configured != DEFAULT_SIGNATURE else "")
        )
    return wanted


def fill_model_spec(target, served, signature_name: str = DEFAULT_SIGNATURE) -> None:
    """Name the model and the version that served the request in ``target``."""
    target.name = served.name
    target.version.value = served.version
    target.signature_name = signature_name


def deadline_from(context) -> float | None:
    """The caller's gRPC deadline as an absolute ``time.monotonic()`` value, or None."""
    remaining_s = context.time_remaining()
    if remaining_s is None:
        return None
    return time.monotonic() + remaining_s


#: answers at least this big are gzip-compressed (when the client accepts gzip);
#: below it, compressing costs more CPU than the bytes saved on loopback/LAN.
COMPRESS_MIN_BYTES = 4096


def compress_if_large(context, response) -> None:
    """Ask gRPC to gzip ``response`` (a message or its bytes) when it is at least ``COMPRESS_MIN_BYTES``."""
    size = len(response) if isinstance(response, bytes) else response.ByteSize()
    if size >= COMPRESS_MIN_BYTES:
        context.set_compression(grpc.Compression.Gzip)


def signature_def(signature) -> meta_graph_pb2.SignatureDef:
    """A navi ``Signature`` in TF's SignatureDef layout (dtypes, shapes with -1)."""
    sig = meta_graph_pb2.SignatureDef(method_name=signature.method_name)
    for target, specs in ((sig.inputs, signature.inputs), (sig.outputs, signature.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name = spec.name
            info.dtype = codec.tf_dtype_of(spec.dtype)
            for size in codec.shape_for_metadata(spec.shape):
                info.tensor_shape.dim.add(size=size)
    return sig


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over a ``ModelRegistry``."""

    def __init__(self, registry, metrics, limits: RequestLimits | None = None):
        self._registry = registry
        self._counts = RequestMetrics(metrics, registry)
        self._limits = limits if limits is not None else RequestLimits()

    @grpc_errors
    def Predict(self, request, context):
        """Run the request's inputs through the model, batched with other callers.

        ``request`` is a ``PredictRequest`` or its serialized bytes (as
        ``add_prediction_service`` registers it): string values are then
        handed on as views of the received bytes (the BPR decoder reads them
        in place; the dense path turns them into bytes for the framework).
        Returns the serialized ``PredictResponse``.
        """
        # when the call reached its thread pool: waiting for a handler thread counts
        arrival_s = request_arrival_s()
        started_s = arrival_s if arrival_s is not None else time.monotonic()
        raw = None
        if isinstance(request, (bytes, bytearray, memoryview)):
            raw = request
            model_spec = codec.peek_predict_model_spec(raw)
        else:
            model_spec = request.model_spec
        model_name = model_spec.name
        counts = self._counts
        counts.received(model_name)
        try:
            if raw is not None:
                # refused (queue full, unloading) before its tensors are parsed
                resolve_model(self._registry, model_spec).admit()
                request, strings = codec.parse_predict_request(raw)
            else:
                strings = {}
            served = resolve_model(self._registry, request.model_spec)
            signature_name = _check_signature_name(served, request.model_spec)
            limits = self._limits
            budget = codec.RequestBudget(limits.max_request_decoded_bytes)
            inputs = {
                name: codec.tensor_proto_to_ndarray(tensor, name, strings.get(name), budget)
                for name, tensor in request.inputs.items()
            }
            outputs = served.infer(inputs, tuple(request.output_filter), deadline_from(context), arrival_s,
                                   max_rows=limits.max_request_rows)
        except Exception:
            counts.failed(model_name)
            raise
        rows = 0
        for array in outputs.values():
            if np.ndim(array) > 0:
                rows = len(array)
                break
        # written straight to bytes (a message built field by field cost 2-3x)
        response = codec.encode_predict_response(
            outputs, codec.model_spec_bytes(served.name, served.version, signature_name))
        compress_if_large(context, response)
        counts.answered(model_name, rows, started_s, outputs)
        return response

    @grpc_errors
    def GetModelMetadata(self, request, context):
        """The model's signature, as TF Serving returns it (Any-packed SignatureDefMap)."""
        fields = list(request.metadata_field) or [SIGNATURE_DEF_FIELD]
        unknown = [field for field in fields if field != SIGNATURE_DEF_FIELD]
        if unknown:
            raise InvalidInput(
                f"metadata_field {quote(unknown[0])} is not supported; only {SIGNATURE_DEF_FIELD!r}"
            )
        served = resolve_model(self._registry, request.model_spec)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        # A runtime with several signatures (a SavedModel) lists them all; the
        # one Predict serves is what clients see through the pipeline (in BPR
        # mode: one string input), so it overrides the model's own entry.
        signature_defs = getattr(getattr(served, "model", None), "signature_defs", None)
        if callable(signature_defs):
            for name, other in signature_defs().items():
                sig_map.signature_def[name].CopyFrom(signature_def(other))
        sig = signature_def(served.signature)
        sig_map.signature_def[DEFAULT_SIGNATURE].CopyFrom(sig)
        configured = getattr(served.settings, "serving_signature", DEFAULT_SIGNATURE)
        if configured and configured != DEFAULT_SIGNATURE:
            sig_map.signature_def[configured].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        fill_model_spec(response.model_spec, served, "")
        response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
        return response

    def _delegate(self, request, method: str, result_type):
        """Call ``LoadedModel.<method>(input)`` when the runtime offers it.

        The runtime receives the request's ``tensorflow.serving.Input`` message
        (and ``signature_name=`` when the request names one) and returns the
        matching result message or its serialized bytes.
        """
        served = resolve_model(self._registry, request.model_spec)
        model = getattr(served, "model", None)
        handler = getattr(model, method, None)
        if handler is None:
            raise Unimplemented(
                f"{method.capitalize()} is not supported by model {served.name!r} "
                f"(runtime {getattr(served.settings, 'runtime', '?')}); use Predict"
            )
        signature_name = request.model_spec.signature_name
        if signature_name:
            produced = handler(request.input, signature_name=signature_name)
        else:
            produced = handler(request.input)
        result = result_type()
        if isinstance(produced, (bytes, bytearray)):
            result.ParseFromString(produced)
        else:
            result.CopyFrom(produced)
        return served, result

    def _delegated_response(self, request, method: str, result_type, response_type):
        """``response_type`` holding ``_delegate``'s result and the model that produced it."""
        served, result = self._delegate(request, method, result_type)
        response = response_type()
        fill_model_spec(response.model_spec, served, request.model_spec.signature_name or DEFAULT_SIGNATURE)
        response.result.CopyFrom(result)
        return response

    @grpc_errors
    def Classify(self, request, context):
        """Classify tf.Examples: only for runtimes whose models implement ``classify``."""
        return self._delegated_response(request, "classify", classification_pb2.ClassificationResult,
                                        classification_pb2.ClassificationResponse)

    @grpc_errors
    def Regress(self, request, context):
        """Regress tf.Examples: only for runtimes whose models implement ``regress``."""
        return self._delegated_response(request, "regress", regression_pb2.RegressionResult,
                                        regression_pb2.RegressionResponse)

    @grpc_errors
    def MultiInference(self, request, context):
        """Several classify/regress tasks over one input, each delegated as above."""
        if not request.tasks:
            raise InvalidInput("MultiInference needs at least one task")
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            if task.method_name == "tensorflow/serving/classify":
                method, result_type, field = "classify", classification_pb2.ClassificationResult, "classification_result"
            elif task.method_name == "tensorflow/serving/regress":
                method, result_type, field = "regress", regression_pb2.RegressionResult, "regression_result"
            else:
                raise Unimplemented(
                    f"MultiInference method {quote(task.method_name)} is not supported; "
                    "navi answers tensorflow/serving/classify and tensorflow/serving/regress "
                    "for runtimes that implement them, and Predict for all"
                )
            sub_request = classification_pb2.ClassificationRequest(input=request.input)
            sub_request.model_spec.CopyFrom(task.model_spec)
            served, result = self._delegate(sub_request, method, result_type)
            entry = response.results.add()
            fill_model_spec(entry.model_spec, served, task.model_spec.signature_name or DEFAULT_SIGNATURE)
            getattr(entry, field).CopyFrom(result)
        return response


def add_prediction_service(servicer: PredictionServicer, server, pools=None) -> None:
    """Register ``servicer`` as ``tensorflow.serving.PredictionService`` on ``server``.

    Every method parses its own request (``navi.server.rawrpc``): a malformed
    message gets INVALID_ARGUMENT, never grpcio's INTERNAL. Predict receives
    the bytes unparsed and returns bytes: ``codec.parse_predict_request``
    parses it without copying its string values and
    ``codec.encode_predict_response`` writes the answer without building a
    message. ``pools`` maps method names to the thread pool each runs on.
    """
    service = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
    add_raw_service(server, service, servicer, pools=pools, raw_methods=("Predict",))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: version states of each model."""

    def __init__(self, registry):
        self._registry = registry

    @grpc_errors
    def GetModelStatus(self, request, context):
        """Each known version's state (START .. END) and its load error, if any."""
        name = _model_name(request.model_spec)
        statuses = self._registry.version_status(name)
        wanted = None
        if request.model_spec.WhichOneof("version_choice") == "version":
            wanted = int(request.model_spec.version.value)
        elif request.model_spec.WhichOneof("version_choice") == "version_label":
            wanted = self._registry.get(name, label=request.model_spec.version_label).version
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            if wanted is not None and status.version != wanted:
                continue
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = _STATE_BY_NAME.get(status.state, _STATE.UNKNOWN)
            if status.error_code is not None:
                entry.status.error_code = TF_ERROR_CODE[status.error_code]
            entry.status.error_message = status.error_message or ""
        if wanted is not None and not response.model_version_status:
            raise ModelVersionNotFound(f"model {name!r} has no version {wanted}")
        return response

    @grpc_errors
    def HandleReloadConfigRequest(self, request, context):
        """Not offered: navi's model set comes from --model-dir / --config."""
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported: navi serves the models given by "
            "--model-dir or --config and picks up new versions by polling each model directory"
        )


__all__ = ["PredictionServicer", "ModelServicer", "add_prediction_service", "signature_def", "resolve_model"]
