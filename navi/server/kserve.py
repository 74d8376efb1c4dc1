"""KServe V2 (Open Inference Protocol) gRPC API: ``inference.GRPCInferenceService``.

Same data plane as the TF Serving API (registry -> ServedModel.submit); only
the tensor encoding differs. Answers carry numbers in ``raw_output_contents``.
"""
from __future__ import annotations

import time

import numpy as np

from navi import __version__
from navi._proto.kserve import grpc_predict_v2_pb2 as pb2
from navi._proto.kserve import grpc_predict_v2_pb2_grpc as pb2_grpc
from navi.errors import InvalidInput, NaviError, quote
from navi import codec
from navi.server.status import grpc_errors
from navi.server.rawrpc import parse_request
from navi.server.threads import request_arrival_s
from navi.settings import RequestLimits
from navi.server.tfserving import RequestMetrics, compress_if_large, deadline_from

SERVER_NAME = "navi"

# Triton's platform names, which KServe clients display.
_PLATFORM = {"onnx": "onnxruntime_onnx", "tf": "tensorflow_savedmodel", "torch": "pytorch_libtorch"}


def _version_of(text: str) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"model version {quote(text)} is not an integer") from None


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a ``ModelRegistry``."""

    def __init__(self, registry, metrics, limits: RequestLimits | None = None):
        self._registry = registry
        self._counts = RequestMetrics(metrics, registry)
        self._limits = limits if limits is not None else RequestLimits()

    def _served(self, name: str, version_text: str):
        if not name:
            raise InvalidInput("model name is required")
        return self._registry.get(name, version=_version_of(version_text))

    @grpc_errors
    def ServerLive(self, request, context):
        """Live as long as the process answers."""
        return pb2.ServerLiveResponse(live=True)

    @grpc_errors
    def ServerReady(self, request, context):
        """Ready once every configured model is loaded and warmed up."""
        return pb2.ServerReadyResponse(ready=bool(self._registry.is_ready()))

    @grpc_errors
    def ModelReady(self, request, context):
        """Whether the model (or the given version) can serve now."""
        if not request.version:
            return pb2.ModelReadyResponse(ready=bool(self._registry.is_ready(request.name)))
        try:
            self._served(request.name, request.version)
        except NaviError as error:
            if isinstance(error, InvalidInput):
                raise
            return pb2.ModelReadyResponse(ready=False)
        return pb2.ModelReadyResponse(ready=True)

    @grpc_errors
    def ServerMetadata(self, request, context):
        """Server name and version; no protocol extensions."""
        return pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    @grpc_errors
    def ModelMetadata(self, request, context):
        """Inputs and outputs (datatype, shape with -1) and the loaded versions."""
        served = self._served(request.name, request.version)
        response = pb2.ModelMetadataResponse(name=served.name)
        response.versions.extend(
            str(status.version)
            for status in self._registry.version_status(served.name)
            if status.state == "AVAILABLE"
        )
        runtime = getattr(served.settings, "runtime", "")
        response.platform = _PLATFORM.get(runtime, runtime)
        signature = served.signature
        for target, specs in ((response.inputs, signature.inputs), (response.outputs, signature.outputs)):
            for spec in specs:
                target.add(
                    name=spec.name,
                    datatype=codec.kserve_datatype_of(spec.dtype),
                    shape=codec.shape_for_metadata(spec.shape),
                )
        return response

    @grpc_errors
    def ModelInfer(self, request, context):
        """Run one inference request, batched with other callers.

        ``request`` is a ``ModelInferRequest`` or its serialized bytes (as
        ``NaviServer`` registers it): the model is then found, and the request
        refused if its queue is full, before the tensors are parsed.
        """
        # when the call reached its thread pool (the response-time metric counts from it)
        arrival_s = request_arrival_s()
        started_s = arrival_s if arrival_s is not None else time.monotonic()
        raw = None
        if isinstance(request, (bytes, bytearray, memoryview)):
            raw = request
            model_name, version_text = codec.peek_kserve_model(raw)
        else:
            model_name, version_text = request.model_name, request.model_version
        counts = self._counts
        counts.received(model_name)
        try:
            served = self._served(model_name, version_text)
            limits = self._limits
            if raw is not None:
                served.admit()  # refused (queue full, unloading) before its tensors are parsed
                request = parse_request(pb2.ModelInferRequest, raw)
                served = self._served(request.model_name, request.model_version)
            inputs = codec.kserve_request_inputs(request, codec.RequestBudget(limits.max_request_decoded_bytes))
            output_names = tuple(output.name for output in request.outputs)
            outputs = served.infer(inputs, output_names, deadline_from(context), arrival_s,
                                   max_rows=limits.max_request_rows)
        except Exception:
            counts.failed(model_name)
            raise
        response = pb2.ModelInferResponse(
            model_name=served.name, model_version=str(served.version), id=request.id
        )
        order = output_names or tuple(outputs)
        codec.fill_kserve_outputs(response, ((name, outputs[name]) for name in order))
        rows = next((len(a) for a in outputs.values() if np.ndim(a) > 0), 0)
        compress_if_large(context, response)
        counts.answered(model_name, rows, started_s, outputs)
        return response
