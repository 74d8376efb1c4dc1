"""KServe V2 HTTP (the Open Inference Protocol's REST side), an adapter of the ``DataPlane``.

``/v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` (Triton's model configuration:
tritonclient and perf_analyzer read ``max_batch_size`` and the dims before
they send anything) and ``.../infer``: JSON tensors, and the binary tensor
data extension (``Inference-Header-Content-Length``: the JSON header is
followed by each binary tensor in order; ``binary_data_size`` per tensor,
``binary_data`` per requested output or ``binary_data_output`` for all).
Binary tensors are the same bytes as V2 gRPC's raw contents (numbers
little-endian, BYTES elements each after a 4-byte length), decoded by the same
``codec`` functions. Errors are ``{"error": message}`` with the HTTP status.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import web

from navi import __version__, codec
from navi.errors import InvalidInput, quote
from navi.server.dataplane import DataPlane, InferRequest, version_of
from navi.server.http import ModelCalls, answer_error, compressed, read_body
from navi.server.threads import request_arrival_s

SERVER_NAME = "navi"
HEADER_LENGTH = "Inference-Header-Content-Length"
_STRING = np.dtype(object)

#: Triton's model-configuration data type of each V2 datatype
_CONFIG_TYPE = {"BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32",
                "FP64": "TYPE_FP64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
                "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64"}


def _json(request: web.Request, body: Any, status: int = 200) -> web.Response:
    return compressed(request, web.Response(body=json.dumps(body, separators=(",", ":")).encode(),
                                            status=status, content_type="application/json"))


# ---------------------------------------------------------------------------
# decoding


def split_infer_body(raw: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(JSON header, binary tail) of an ``/infer`` body; the tail is empty without the extension."""
    view = memoryview(raw)
    if header_length is None:
        json_part, binary = view, view[0:0]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} {quote(header_length)} is not an integer") from None
        if not 0 <= length <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} {length} is outside the body's {len(raw)} bytes")
        json_part, binary = view[:length], view[length:]
    try:
        header = json.loads(bytes(json_part))
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the inference header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference header must be a JSON object")
    return header, binary


def _json_data(data: Any, datatype: str, dtype: np.dtype, shape: tuple[int, ...], name: str,
               budget: codec.RequestBudget) -> np.ndarray:
    """A tensor from its JSON ``data`` (flat or nested, row-major)."""
    count = codec.element_count(shape, name)
    if dtype == _STRING:
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(f"input {quote(name)}: data holds {len(flat)} values but shape {list(shape)[:8]} needs {count}")
        items = [item.encode("utf-8") if isinstance(item, str) else None for item in flat]
        if any(item is None for item in items):
            raise InvalidInput(f"input {quote(name)}: BYTES data in JSON must be strings")
        budget.charge(count * 8 + sum(map(len, items)), name)
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"input {quote(name)}: data is not a rectangular list of numbers ({error})") from None
    if array.dtype.kind not in "biuf" and array.size:
        raise InvalidInput(f"input {quote(name)}: {datatype} data must be numbers")
    if array.size != count:
        raise InvalidInput(f"input {quote(name)}: data holds {array.size} values but shape {list(shape)[:8]} needs {count}")
    if array.dtype.kind == "f" and dtype.kind in "iub":
        raise InvalidInput(f"input {quote(name)}: {datatype} data holds fractions")
    budget.charge(count * dtype.itemsize, name)
    try:
        return array.astype(dtype).reshape(shape)
    except OverflowError as error:
        raise InvalidInput(f"input {quote(name)}: {error}") from None


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    return [leaf for item in data for leaf in _flatten(item)]


def infer_inputs(header: dict, binary: memoryview, budget: codec.RequestBudget) -> dict[str, np.ndarray]:
    """The input arrays of an ``/infer`` request, from JSON ``data`` or the binary tail."""
    tensors = header.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        if not isinstance(tensor, dict):
            raise InvalidInput("each input must be a JSON object")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list) \
                or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape):
            raise InvalidInput("each input needs 'name' (string), 'datatype' (string) and 'shape' (list of integers)")
        if name in inputs:
            raise InvalidInput(f"input {quote(name)} given twice")
        dtype = codec.KSERVE_TO_NUMPY.get(datatype)
        if dtype is None:
            raise InvalidInput(f"input {quote(name)}: datatype {quote(datatype)} is not supported "
                               f"({', '.join(codec.KSERVE_TO_NUMPY)})")
        shape = tuple(shape)
        size = _parameters(tensor, f"input {quote(name)}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or size > len(binary) - offset:
                raise InvalidInput(f"input {quote(name)}: binary_data_size {quote(size)} does not fit the "
                                   f"{len(binary) - offset} binary bytes left")
            chunk = binary[offset:offset + size]
            offset += size
            inputs[name] = codec.kserve_raw_to_ndarray(chunk, datatype, shape, name, budget)
        else:
            if "data" not in tensor:
                raise InvalidInput(f"input {quote(name)} has neither 'data' nor parameters.binary_data_size")
            inputs[name] = _json_data(tensor["data"], datatype, dtype, shape, name, budget)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} binary bytes after the last binary input")
    return inputs


def _parameters(holder: dict, what: str) -> dict:
    """The ``parameters`` object of a request, input or output ({} when absent)."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{what}: 'parameters' must be a JSON object")
    return parameters


def _wanted_outputs(header: dict) -> tuple[tuple[str, ...], dict[str, bool], bool]:
    """(output names asked for, binary choice per output, the request's default)."""
    default_binary = bool(_parameters(header, "the request").get("binary_data_output", False))
    names, binary = [], {}
    for output in header.get("outputs") or ():
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput("each requested output must be a JSON object with a 'name'")
        names.append(output["name"])
        binary[output["name"]] = bool(_parameters(output, f"output {quote(output['name'])}").get(
            "binary_data", default_binary))
    return tuple(names), binary, default_binary


# ---------------------------------------------------------------------------
# encoding


def _json_values(array: np.ndarray) -> list:
    if array.dtype == _STRING or array.dtype.kind in "SU":
        return [bytes(item).decode("utf-8", "replace") if not isinstance(item, str) else item
                for item in array.reshape(-1).tolist()]
    return array.reshape(-1).tolist()


def infer_response(served, request_id, outputs: dict[str, np.ndarray], binary: dict[str, bool],
                   default_binary: bool) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary tensors follow it) of an ``/infer`` answer."""
    entries, tail = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        datatype = codec.kserve_datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(name, default_binary):
            data = codec.kserve_raw_of(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        else:
            entry["data"] = _json_values(array)
        entries.append(entry)
    header: dict[str, Any] = {"model_name": served.name, "model_version": str(served.version), "outputs": entries}
    if request_id:
        header["id"] = request_id
    head = json.dumps(header, separators=(",", ":")).encode()
    if not tail:
        return head, None
    return b"".join([head, *tail]), len(head)


# ---------------------------------------------------------------------------
# handlers


class V2HttpApi:
    """The ``/v2`` resources over a ``DataPlane``; model calls on the handler pool."""

    def __init__(self, plane: DataPlane, calls: ModelCalls):
        self._plane = plane
        self._calls = calls

    def routes(self) -> list:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [("GET", "/v2", self.server_metadata),
                  ("GET", "/v2/health/live", self.live),
                  ("GET", "/v2/health/ready", self.ready)]
        for prefix in (model, versioned):
            routes += [("GET", prefix, self.model_metadata),
                       ("GET", prefix + "/ready", self.model_ready),
                       ("GET", prefix + "/config", self.model_config),
                       ("POST", prefix + "/infer", self.infer)]
        return routes

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(request, {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(self, request: web.Request) -> web.Response:
        return _json(request, {"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._plane.is_ready()
        return _json(request, {"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            name, version = request.match_info["name"], version_of(request.match_info.get("version"))
            ready = self._plane.is_ready(name, version)
            return _json(request, {"name": name, "ready": ready}, 200 if ready else 503)
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"GET {request.path}")

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            metadata = self._plane.metadata(request.match_info["name"], version_of(request.match_info.get("version")))
            signature = metadata.signature
            return _json(request, {
                "name": metadata.served.name,
                "versions": [str(version) for version in metadata.versions],
                "platform": metadata.platform,
                "inputs": [_tensor_metadata(spec) for spec in signature.inputs],
                "outputs": [_tensor_metadata(spec) for spec in signature.outputs],
            })
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"GET {request.path}")

    async def model_config(self, request: web.Request) -> web.Response:
        try:
            metadata = self._plane.metadata(request.match_info["name"], version_of(request.match_info.get("version")))
            return _json(request, model_config(metadata, self._plane.limits.max_request_rows))
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"GET {request.path}")

    async def infer(self, request: web.Request) -> web.Response:
        try:
            raw = await read_body(request)
            name, version = request.match_info["name"], version_of(request.match_info.get("version"))
            body, header_length = await self._calls.run(
                self._infer, name, version, raw, request.headers.get(HEADER_LENGTH))
            response = web.Response(body=body, content_type="application/json" if header_length is None
                                    else "application/octet-stream")
            if header_length is not None:
                response.headers[HEADER_LENGTH] = str(header_length)
            return compressed(request, response)
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"POST {request.path}")

    def _infer(self, name: str, version: int | None, raw: bytes, header_length: str | None):
        """On a handler thread: parse, run through the data plane, encode."""
        parsed: dict = {}

        def decode(served, budget):
            header, binary = split_infer_body(raw, header_length)
            names, binary_by_name, default_binary = _wanted_outputs(header)
            parsed.update(id=header.get("id"), binary=binary_by_name, default=default_binary)
            return infer_inputs(header, binary, budget), names

        def encode(result):
            return infer_response(result.served, parsed["id"], result.outputs, parsed["binary"], parsed["default"])

        return self._plane.infer(InferRequest(name, decode, version, arrival_s=request_arrival_s()), encode)


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": codec.kserve_datatype_of(spec.dtype),
            "shape": codec.shape_for_metadata(spec.shape)}


def model_config(metadata, max_request_rows: int) -> dict:
    """Triton's model configuration of a model: batchable (first axis -1 on every input) or not."""
    served, signature = metadata.served, metadata.signature
    specs = list(signature.inputs) + list(signature.outputs)
    batchable = all(spec.shape and spec.shape[0] < 0 for spec in specs)
    max_rows = served.settings.batching.max_batch_rows or max_request_rows

    def entries(tensors):
        return [{"name": spec.name,
                 "data_type": _CONFIG_TYPE[codec.kserve_datatype_of(spec.dtype)],
                 "dims": codec.shape_for_metadata(spec.shape[1:] if batchable else spec.shape)}
                for spec in tensors]

    return {"name": served.name, "platform": metadata.platform,
            "backend": metadata.platform.split("_")[0] if metadata.platform else "",
            "max_batch_size": max_rows if batchable else 0,
            "input": entries(signature.inputs), "output": entries(signature.outputs),
            "version_policy": {"latest": {"num_versions": 1}}}


__all__ = ["V2HttpApi", "infer_inputs", "infer_response", "model_config", "split_infer_body"]
