"""KServe V2 (Open Inference Protocol) gRPC API: ``inference.GRPCInferenceService``.

An adapter of the ``DataPlane`` (navi.server.dataplane), as the TF Serving API
is; only the tensor encoding differs. Answers carry numbers in ``raw_output_contents``.
"""
from __future__ import annotations

from navi import __version__
from navi._proto.kserve import grpc_predict_v2_pb2 as pb2
from navi._proto.kserve import grpc_predict_v2_pb2_grpc as pb2_grpc
from navi import codec
from navi.server.dataplane import DataPlane, InferRequest, version_of
from navi.server.grpcutil import compress_if_large, deadline_from
from navi.server.status import grpc_errors
from navi.server.threads import request_arrival_s

SERVER_NAME = "navi"


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService``: decodes, calls the ``DataPlane``, encodes."""

    def __init__(self, plane: DataPlane):
        self._plane = plane

    @grpc_errors
    def ServerLive(self, request, context):
        """Live as long as the process answers."""
        return pb2.ServerLiveResponse(live=True)

    @grpc_errors
    def ServerReady(self, request, context):
        """Ready once every configured model is loaded and warmed up."""
        return pb2.ServerReadyResponse(ready=self._plane.is_ready())

    @grpc_errors
    def ModelReady(self, request, context):
        """Whether the model (or the given version) can serve now."""
        return pb2.ModelReadyResponse(ready=self._plane.is_ready(request.name, version_of(request.version)))

    @grpc_errors
    def ServerMetadata(self, request, context):
        """Server name and version; no protocol extensions."""
        return pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    @grpc_errors
    def ModelMetadata(self, request, context):
        """Inputs and outputs (datatype, shape with -1) and the loaded versions."""
        metadata = self._plane.metadata(request.name, version_of(request.version))
        response = pb2.ModelMetadataResponse(name=metadata.served.name, platform=metadata.platform)
        response.versions.extend(str(version) for version in metadata.versions)
        signature = metadata.signature
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
        if isinstance(request, (bytes, bytearray, memoryview)):
            raw = request
            model_name, version_text = codec.peek_kserve_model(raw)
            parsed: list = []

            def decode(served, budget):
                # raw_input_contents stay in ``raw``, as views (not parsed into the message)
                message, contents = codec.parse_kserve_request(raw)
                parsed.append(message)
                return _infer_inputs(message, budget, contents)
        else:
            model_name, version_text = request.model_name, request.model_version
            parsed = [request]

            def decode(served, budget):
                return _infer_inputs(request, budget)

        def encode(result):
            served = result.served
            response = pb2.ModelInferResponse(
                model_name=served.name, model_version=str(served.version), id=parsed[0].id)
            codec.fill_kserve_outputs(response, result.outputs.items())
            compress_if_large(context, response)
            return response

        return self._plane.infer(InferRequest(
            model_name, decode, version_of(version_text), deadline_s=deadline_from(context),
            arrival_s=request_arrival_s()), encode)


def _infer_inputs(request, budget, raw_contents=None) -> tuple[dict, tuple[str, ...]]:
    """A parsed ``ModelInferRequest``'s inputs by name and the outputs it asks for."""
    return (codec.kserve_request_inputs(request, budget, raw_contents),
            tuple(output.name for output in request.outputs))
