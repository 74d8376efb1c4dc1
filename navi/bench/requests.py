"""Requests of `navi bench serve`: serialized once, sent as raw bytes, probed and described.

The encoders use ``navi.codec``'s dtype tables, the same ones the server
decodes with, so the benchmark cannot disagree with the server on a dtype.
"""
from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from navi import codec
from navi.errors import InvalidInput

#: Full gRPC method paths (sent as raw bytes, so no stub is involved).
TF_PREDICT = "/tensorflow.serving.PredictionService/Predict"
TF_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"
KSERVE_METADATA = "/inference.GRPCInferenceService/ModelMetadata"

PROTOCOLS = ("tfserving", "kserve", "tfrest", "v2http", "v2json")
#: the REST protocols: TF Serving's REST API (JSON), KServe V2 HTTP with binary tensor data,
#: and KServe V2 HTTP with JSON tensors only (for servers without the binary extension)
HTTP_PROTOCOLS = ("tfrest", "v2http", "v2json")
#: an HTTP payload starts with its JSON header's length (8 bytes LE; 0 = all JSON), then the body
HTTP_PREFIX = struct.Struct("<Q")


def encode_tf_predict(
    model: str,
    inputs: dict[str, np.ndarray | Sequence[bytes]],
    signature_name: str = "",
    version: int | None = None,
    output_filter: Sequence[str] = (),
) -> bytes:
    """Serialize a TF Serving PredictRequest.

    Numeric arrays travel in ``tensor_content``; a list of bytes (or an object
    array) becomes a 1-D DT_STRING tensor in ``string_val``.
    """
    from navi._proto.tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature_name:
        request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        if not (isinstance(value, np.ndarray) and value.dtype != object):
            value = np.array([bytes(v) for v in value], dtype=object)
        try:
            codec.ndarray_to_tensor_proto(value, request.inputs[name])
        except InvalidInput as error:
            raise ValueError(f"input {name!r}: {error}") from None
    request.output_filter.extend(output_filter)
    return request.SerializeToString()


def encode_kserve_infer(
    model: str,
    inputs: dict[str, np.ndarray | Sequence[bytes]],
    version: str = "",
) -> bytes:
    """Serialize a KServe V2 ModelInferRequest with every input in ``raw_input_contents``.

    BYTES elements are each prefixed with their 4-byte little-endian length,
    as the V2 protocol's raw encoding specifies.
    """
    from navi._proto.kserve import grpc_predict_v2_pb2

    request = grpc_predict_v2_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, value in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        if isinstance(value, np.ndarray) and value.dtype != object:
            array = np.ascontiguousarray(value)
            try:
                tensor.datatype = codec.kserve_datatype_of(array.dtype)
            except InvalidInput as error:
                raise ValueError(f"input {name!r}: {error}") from None
            tensor.shape.extend(array.shape)
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        else:
            strings = [bytes(v) for v in value]
            tensor.datatype = "BYTES"
            tensor.shape.append(len(strings))
            request.raw_input_contents.append(codec.bytes_to_raw(np.array(strings, dtype=object)))
    return request.SerializeToString()


def encode_tf_rest(model: str, inputs: dict, signature_name: str = "") -> bytes:
    """A TF Serving REST ``:predict`` body (columnar; strings as ``{"b64": ...}``), ``HTTP_PREFIX``ed."""
    columns = {}
    for name, value in inputs.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            columns[name] = value.tolist()
        else:
            columns[name] = [{"b64": base64.b64encode(bytes(v)).decode("ascii")} for v in value]
    body: dict = {"inputs": columns}
    if signature_name:
        body["signature_name"] = signature_name
    return HTTP_PREFIX.pack(0) + json.dumps(body, separators=(",", ":")).encode()


def encode_v2_http(model: str, inputs: dict, binary: bool = True) -> bytes:
    """A KServe V2 HTTP ``/infer`` body, ``HTTP_PREFIX``ed: every tensor as binary data (answers
    too), or with ``binary=False`` every tensor as JSON ``data`` (BYTES as UTF-8 text)."""
    if not binary:
        tensors = []
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                tensors.append({"name": name, "datatype": codec.kserve_datatype_of(value.dtype),
                                "shape": list(value.shape), "data": value.reshape(-1).tolist()})
            else:
                strings = [bytes(v).decode("utf-8") for v in value]
                tensors.append({"name": name, "datatype": "BYTES", "shape": [len(strings)], "data": strings})
        return HTTP_PREFIX.pack(0) + json.dumps({"inputs": tensors}, separators=(",", ":")).encode()
    tensors, tail = [], []
    for name, value in inputs.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            array = np.ascontiguousarray(value)
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            datatype, shape = codec.kserve_datatype_of(array.dtype), list(array.shape)
        else:
            strings = [bytes(v) for v in value]
            data = codec.bytes_to_raw(np.array(strings, dtype=object))
            datatype, shape = "BYTES", [len(strings)]
        tensors.append({"name": name, "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": len(data)}})
        tail.append(data)
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}},
                        separators=(",", ":")).encode()
    return HTTP_PREFIX.pack(len(header)) + header + b"".join(tail)


def encode_request(protocol: str, model: str, inputs: dict, signature_name: str = "", version: int | None = None) -> bytes:
    """Serialize one request in the given protocol."""
    if protocol == "tfrest":
        return encode_tf_rest(model, inputs, signature_name)
    if protocol in ("v2http", "v2json"):
        return encode_v2_http(model, inputs, binary=protocol == "v2http")
    if protocol == "kserve":
        return encode_kserve_infer(model, inputs, "" if version is None else str(version))
    return encode_tf_predict(model, inputs, signature_name, version)


def predict_method(protocol: str, model: str = "") -> str:
    """The gRPC method path (or, for the REST protocols, the URL path) requests of ``protocol`` go to."""
    if protocol == "tfrest":
        return f"/v1/models/{model}:predict"
    if protocol in ("v2http", "v2json"):
        return f"/v2/models/{model}/infer"
    return KSERVE_INFER if protocol == "kserve" else TF_PREDICT


def is_http_method(method: str) -> bool:
    """Whether ``method`` is a REST URL path rather than a gRPC method."""
    return method.startswith(("/v1/", "/v2/"))


def http_post(address: str, path: str, payload: bytes, timeout_s: float = 30.0) -> tuple[int, bytes, dict]:
    """POST an ``HTTP_PREFIX``ed payload: (status, body, headers)."""
    import urllib.error
    import urllib.request

    (header_length,) = HTTP_PREFIX.unpack_from(payload)
    headers = {"Content-Type": "application/json" if not header_length else "application/octet-stream"}
    if header_length:
        headers["Inference-Header-Content-Length"] = str(header_length)
    request = urllib.request.Request(f"http://{address}{path}", data=payload[HTTP_PREFIX.size:], headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@dataclass(frozen=True)
class InputInfo:
    """One model input as the server describes it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def fetch_inputs(address: str, model: str, protocol: str, signature_name: str = "serving_default",
                 timeout_s: float = 10.0) -> list[InputInfo]:
    """Ask a server for a model's inputs (GetModelMetadata or V2 ModelMetadata, over gRPC or HTTP)."""
    if protocol in HTTP_PROTOCOLS:
        return _fetch_inputs_http(address, model, protocol, signature_name, timeout_s)
    import grpc

    with grpc.insecure_channel(address) as channel:
        if protocol == "kserve":
            from navi._proto.kserve import grpc_predict_v2_pb2 as pb2

            call = channel.unary_unary(
                KSERVE_METADATA,
                request_serializer=pb2.ModelMetadataRequest.SerializeToString,
                response_deserializer=pb2.ModelMetadataResponse.FromString,
            )
            response = call(pb2.ModelMetadataRequest(name=model), timeout=timeout_s)
            return [
                InputInfo(t.name, codec.KSERVE_TO_NUMPY.get(t.datatype, np.dtype(np.float32)), tuple(t.shape))
                for t in response.inputs
            ]
        from navi._proto.tensorflow_serving.apis import get_model_metadata_pb2 as meta_pb2

        call = channel.unary_unary(
            TF_METADATA,
            request_serializer=meta_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=meta_pb2.GetModelMetadataResponse.FromString,
        )
        request = meta_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = call(request, timeout=timeout_s)
        signature_map = meta_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = signature_map.signature_def
        if signature_name not in signatures:
            if not signatures:
                raise RuntimeError(f"model {model!r} at {address} reports no signature")
            signature_name = sorted(signatures)[0]
        result = []
        for key, info in sorted(signatures[signature_name].inputs.items()):
            shape = tuple(-1 if d.size < 0 else d.size for d in info.tensor_shape.dim)
            result.append(InputInfo(key, codec.TF_TO_NUMPY.get(info.dtype, np.dtype(np.float32)), shape))
        return result


def _fetch_inputs_http(address: str, model: str, protocol: str, signature_name: str,
                       timeout_s: float) -> list[InputInfo]:
    import urllib.request

    path = f"/v1/models/{model}/metadata" if protocol == "tfrest" else f"/v2/models/{model}"
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout_s) as response:
        metadata = json.loads(response.read())
    if protocol != "tfrest":
        return [InputInfo(t["name"], codec.KSERVE_TO_NUMPY.get(t["datatype"], np.dtype(np.float32)),
                          tuple(t["shape"])) for t in metadata["inputs"]]
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    if signature_name not in signatures:
        signature_name = sorted(signatures)[0]
    from navi._proto.tensorflow.core.framework import types_pb2

    return [InputInfo(key, codec.TF_TO_NUMPY.get(types_pb2.DataType.Value(info["dtype"]), np.dtype(np.float32)),
                      tuple(int(d["size"]) for d in info["tensor_shape"]["dim"]))
            for key, info in sorted(signatures[signature_name]["inputs"].items())]


def _probe_rows_http(address: str, method: str, payload: bytes, protocol: str, timeout_s: float) -> int:
    status, body, headers = http_post(address, method, payload, timeout_s)
    if status != 200:
        raise RuntimeError(f"{address} answered HTTP {status}: {body[:300]!r}")
    if protocol != "tfrest":
        length = int(headers.get("Inference-Header-Content-Length", len(body)))
        outputs = json.loads(body[:length])["outputs"]
        return int(outputs[0]["shape"][0]) if outputs and outputs[0]["shape"] else 1
    answer = json.loads(body)
    values = answer.get("outputs", answer.get("predictions"))
    if isinstance(values, dict):
        values = next(iter(values.values()))
    return len(values) if isinstance(values, list) else 1


def probe_rows(address: str, method: str, payload: bytes, protocol: str, timeout_s: float = 30.0) -> int:
    """Send one request and return the first output's leading dimension (its rows).

    Raises ``RuntimeError`` naming the status when the target refuses it: a
    benchmark against a target that answers errors is pointless.
    """
    if protocol in HTTP_PROTOCOLS:
        return _probe_rows_http(address, method, payload, protocol, timeout_s)
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 30),
                                                 ("grpc.max_send_message_length", 1 << 30)]) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            raw = call(payload, timeout=timeout_s)
        except grpc.RpcError as error:
            raise RuntimeError(f"{address} answered {error.code().name}: {error.details()}") from error
    if protocol == "kserve":
        from navi._proto.kserve import grpc_predict_v2_pb2

        response = grpc_predict_v2_pb2.ModelInferResponse.FromString(raw)
        return int(response.outputs[0].shape[0]) if response.outputs and response.outputs[0].shape else 1
    from navi._proto.tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse.FromString(raw)
    for _, tensor in sorted(response.outputs.items()):
        if tensor.tensor_shape.dim:
            return int(tensor.tensor_shape.dim[0].size)
    return 1
