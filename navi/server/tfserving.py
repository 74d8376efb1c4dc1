"""TensorFlow Serving's gRPC API: PredictionService and ModelService.

Servicers are thin: decode tensors (codec), call the ``DataPlane`` (which
finds the model, admits, counts and runs the request batched with every other
transport's), encode the answer. Errors are ``NaviError``s mapped to status
codes by ``status.grpc_errors``.

The handlers block a gRPC worker thread until the batch answered (the thread
may run the batch itself: see ``BatchScheduler``); a thread asleep in that wait
gives its place to the next request (``navi.server.threads.HandlerPool``), so
``ServerSettings.grpc_max_threads`` bounds the requests in flight and
``grpc_threads`` the threads running at once.
"""
from __future__ import annotations

import logging

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
from navi.errors import InvalidInput, Unimplemented, quote
from navi import codec
from navi.server.dataplane import DEFAULT_SIGNATURE, DataPlane, InferRequest
from navi.server.grpcutil import compress_if_large, deadline_from
from navi.server.rawrpc import add_raw_service
from navi.server.status import TF_ERROR_CODE, grpc_errors
from navi.server.threads import request_arrival_s

log = logging.getLogger(__name__)

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


def version_choice(model_spec) -> tuple[int | None, str | None]:
    """(version, label) a TF Serving ``ModelSpec`` names; (None, None) for the newest."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return int(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def fill_model_spec(target, served, signature_name: str = DEFAULT_SIGNATURE) -> None:
    """Name the model and the version that served the request in ``target``."""
    target.name = served.name
    target.version.value = served.version
    target.signature_name = signature_name


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
    """``tensorflow.serving.PredictionService``: decodes, calls the ``DataPlane``, encodes."""

    def __init__(self, plane: DataPlane):
        self._plane = plane

    @grpc_errors
    def Predict(self, request, context):
        """Run the request's inputs through the model, batched with other callers.

        ``request`` is a ``PredictRequest`` or its serialized bytes (as
        ``add_prediction_service`` registers it): string values are then
        handed on as views of the received bytes (the BPR decoder reads them
        in place; the dense path turns them into bytes for the framework), and
        the tensors are parsed only once the model's queue admitted it.
        Returns the serialized ``PredictResponse``.
        """
        if isinstance(request, (bytes, bytearray, memoryview)):
            raw = request
            model_spec = codec.peek_predict_model_spec(raw)

            def decode(served, budget):
                parsed, strings = codec.parse_predict_request(raw)
                return _predict_inputs(parsed, strings, budget)
        else:
            model_spec = request.model_spec

            def decode(served, budget):
                return _predict_inputs(request, {}, budget)

        version, label = version_choice(model_spec)

        def encode(result):
            served = result.served
            # written straight to bytes (a message built field by field cost 2-3x)
            response = codec.encode_predict_response(
                result.outputs, codec.model_spec_bytes(served.name, served.version, result.signature_name))
            compress_if_large(context, response)
            return response

        return self._plane.infer(InferRequest(
            model_spec.name, decode, version, label, model_spec.signature_name,
            deadline_from(context), request_arrival_s()), encode)

    @grpc_errors
    def GetModelMetadata(self, request, context):
        """The model's signatures, as TF Serving returns them (Any-packed SignatureDefMap)."""
        fields = list(request.metadata_field) or [SIGNATURE_DEF_FIELD]
        unknown = [field for field in fields if field != SIGNATURE_DEF_FIELD]
        if unknown:
            raise InvalidInput(
                f"metadata_field {quote(unknown[0])} is not supported; only {SIGNATURE_DEF_FIELD!r}"
            )
        metadata = self._plane.metadata(_model_name(request.model_spec), *version_choice(request.model_spec))
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in metadata.signatures.items():
            sig_map.signature_def[name].CopyFrom(signature_def(signature))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        fill_model_spec(response.model_spec, metadata.served, "")
        response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
        return response

    def _delegate(self, request, method: str, result_type):
        """``LoadedModel.<method>(request.input)`` through the data plane, parsed as ``result_type``."""
        spec = request.model_spec
        served, produced = self._plane.delegate(_model_name(spec), *version_choice(spec), method,
                                                request.input, spec.signature_name)
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


def _predict_inputs(request, strings, budget) -> tuple[dict, tuple[str, ...]]:
    """A parsed ``PredictRequest``'s inputs (string values from ``strings`` when lifted out) and output filter."""
    tensors = request.inputs  # a protobuf map: indexing it beats its items() view
    inputs = {
        name: codec.tensor_proto_to_ndarray(tensors[name], name, strings.get(name), budget)
        for name in tensors
    }
    return inputs, tuple(request.output_filter)


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

    def __init__(self, plane: DataPlane):
        self._plane = plane

    @grpc_errors
    def GetModelStatus(self, request, context):
        """Each known version's state (START .. END) and its load error, if any."""
        spec = request.model_spec
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self._plane.version_status(_model_name(spec), *version_choice(spec)):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = _STATE_BY_NAME.get(status.state, _STATE.UNKNOWN)
            if status.error_code is not None:
                entry.status.error_code = TF_ERROR_CODE[status.error_code]
            entry.status.error_message = status.error_message or ""
        return response

    @grpc_errors
    def HandleReloadConfigRequest(self, request, context):
        """Not offered: navi's model set comes from --model-dir / --config."""
        raise Unimplemented(
            "HandleReloadConfigRequest is not supported: navi serves the models given by "
            "--model-dir or --config and picks up new versions by polling each model directory"
        )


__all__ = ["PredictionServicer", "ModelServicer", "add_prediction_service", "signature_def", "version_choice"]
