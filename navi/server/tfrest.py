"""TensorFlow Serving's REST API, an adapter of the ``DataPlane``.

``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (version states),
``.../metadata`` (signatures), ``POST ...:predict`` (row ``instances`` or
columnar ``inputs``), ``...:classify`` and ``...:regress`` (tf.Examples, for
runtimes that implement them). As TF Serving's documentation has it: errors
are ``{"error": message}`` with the matching HTTP status; binary strings are
``{"b64": "..."}`` both ways (so a BPR model is callable over REST); NaN and
Infinity are read and written as the bare tokens ``NaN``, ``Infinity``,
``-Infinity``; int64 values keep every digit (Python's ints); float32 outputs
are written as their shortest decimal (0.1, not 0.10000000149011612).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np
from aiohttp import web

from navi import codec
from navi._proto.tensorflow.core.example import example_pb2, feature_pb2
from navi._proto.tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2
from navi.errors import InvalidInput, NaviError, quote
from navi.server.dataplane import DataPlane, InferRequest
from navi.server.http import ModelCalls, answer_error, compressed, read_body
from navi.server.threads import request_arrival_s

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$"
)
_VERBS = ("predict", "classify", "regress")
_STRING = np.dtype(object)
_STATE_CODE_OK = "OK"


def _route(request: web.Request) -> tuple[str, int | None, str | None, bool, str | None]:
    """(model name, version, label, metadata?, verb) of a ``/v1/models/...`` path."""
    match = _PATH.match(request.path)
    if match is None:
        raise _NotFound(f"no TF Serving REST resource at {quote(request.path)}")
    version = int(match["version"]) if match["version"] is not None else None
    return match["name"], version, match["label"], bool(match["metadata"]), match["verb"]


class _NotFound(NaviError):
    from navi.errors import Code as _Code

    code = _Code.NOT_FOUND


# ---------------------------------------------------------------------------
# JSON -> arrays


def _b64(value: dict) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise InvalidInput('a JSON object as a tensor value must be {"b64": "<base64 string>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f"value of \"b64\" is not base64: {error}") from None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and "b64" in value


def _strings(value: Any, name: str) -> np.ndarray:
    """A nested list of strings / ``{"b64"}`` objects as an object array of bytes."""
    flat: list[bytes] = []
    shape: list[int] = []

    def walk(item, depth: int) -> None:
        if isinstance(item, list):
            if depth == len(shape):
                shape.append(len(item))
            elif shape[depth] != len(item):
                raise InvalidInput(f"input {quote(name)}: lists of different lengths at depth {depth}")
            for element in item:
                walk(element, depth + 1)
            return
        if depth != len(shape):
            raise InvalidInput(f"input {quote(name)}: values at different depths")
        if isinstance(item, str):
            flat.append(item.encode("utf-8"))
        elif _is_b64(item):
            flat.append(_b64(item))
        else:
            raise InvalidInput(f"input {quote(name)} takes strings; got {type(item).__name__}")

    walk(value, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _numbers(value: Any, name: str, dtype: np.dtype | None) -> np.ndarray:
    """A nested list of JSON numbers (or booleans) as an array of the model's dtype."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"input {quote(name)}: not a rectangular list of numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"input {quote(name)}: not a rectangular list of numbers (got {array.dtype.name} values)")
    if dtype is None or array.dtype == dtype:
        return array
    # JSON has one number type: an integer literal feeds a float input; a
    # fraction never feeds an integer one (the data plane refuses the kinds)
    if array.dtype.kind in "iub" and dtype.kind in "iuf" or array.dtype.kind == dtype.kind:
        try:
            return array.astype(dtype, casting="unsafe" if dtype.kind == "f" else "same_kind")
        except TypeError:
            return array
    return array


def _tensor(value: Any, name: str, spec, budget: codec.RequestBudget) -> np.ndarray:
    wants_strings = spec is not None and spec.dtype == _STRING
    if wants_strings or _first_leaf_is_text(value):
        array = _strings(value, name)
        budget.charge(array.size * 8 + sum(map(len, array.reshape(-1))), name)
    else:
        array = _numbers(value, name, spec.dtype if spec is not None and spec.declared else None)
        budget.charge(array.nbytes, name)
    return array


def _first_leaf_is_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or _is_b64(value)


def predict_inputs(body: dict, served, budget: codec.RequestBudget) -> dict[str, np.ndarray]:
    """The input arrays of a ``:predict`` body (row or columnar format) for ``served``'s signature."""
    specs = {spec.name: spec for spec in served.signature.inputs}
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise InvalidInput("the body must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise InvalidInput("'instances' must be a list")
        if rows and all(isinstance(row, dict) and not _is_b64(row) for row in rows):
            names = list(rows[0])
            for index, row in enumerate(rows):
                if set(row) != set(names):
                    raise InvalidInput(f"instance {index} names inputs {sorted(row)[:5]}, instance 0 {sorted(names)[:5]}")
            columns = {name: [row[name] for row in rows] for name in names}
        else:
            columns = {_only_input(specs): rows}
    else:
        given = body["inputs"]
        columns = given if isinstance(given, dict) and not _is_b64(given) else {_only_input(specs): given}
    return {name: _tensor(value, name, specs.get(name), budget) for name, value in columns.items()}


def _only_input(specs: dict) -> str:
    if len(specs) != 1:
        raise InvalidInput(f"the model takes {len(specs)} inputs ({', '.join(specs)}): name each one")
    return next(iter(specs))


# ---------------------------------------------------------------------------
# arrays -> JSON


def _json_values(array: np.ndarray, name: str) -> list:
    """``array`` as nested lists of JSON-ready values."""
    if array.dtype == _STRING or array.dtype.kind in "SU":
        as_b64 = name.endswith("_bytes")
        flat = []
        for item in array.reshape(-1).tolist():
            if isinstance(item, str):
                flat.append(item)
                continue
            item = bytes(item)
            if not as_b64:
                try:
                    flat.append(item.decode("utf-8"))
                    continue
                except UnicodeDecodeError:
                    pass
            flat.append({"b64": base64.b64encode(item).decode("ascii")})
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape).tolist()
    if array.dtype == np.float32 or array.dtype == np.float16:
        # the shortest decimal of each float32 (numpy's str), read back as the double it names
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def predict_body(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """The ``:predict`` answer: ``predictions`` (row format) or ``outputs`` (columnar)."""
    values = {name: _json_values(np.asarray(array), name) for name, array in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    names = list(values)
    rows = min(len(v) if isinstance(v, list) else 0 for v in values.values())
    return {"predictions": [{name: values[name][i] for name in names} for i in range(rows)]}


def dumps(body: dict) -> bytes:
    """JSON bytes; NaN and infinities as TF Serving writes them (bare tokens)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


def _json(request: web.Request, body: dict) -> web.Response:
    return compressed(request, web.Response(body=dumps(body), content_type="application/json"))


# ---------------------------------------------------------------------------
# classify / regress: JSON examples -> tf.Example


def _feature(value: Any, name: str) -> feature_pb2.Feature:
    items = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    try:
        if all(isinstance(v, bool) or isinstance(v, int) for v in items) and items:
            feature.int64_list.value.extend(int(v) for v in items)
            return feature
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items) and items:
            feature.float_list.value.extend(float(v) for v in items)
            return feature
    except (OverflowError, ValueError) as error:  # an int past int64, or past a float's range
        raise InvalidInput(f"feature {quote(name)}: {error}") from None
    if all(isinstance(v, str) or _is_b64(v) for v in items):
        feature.bytes_list.value.extend(_b64(v) if _is_b64(v) else v.encode("utf-8") for v in items)
    else:
        raise InvalidInput(f"feature {quote(name)}: values must be all numbers or all strings")
    return feature


def _example(features: Any) -> example_pb2.Example:
    if not isinstance(features, dict):
        raise InvalidInput("each example must be a JSON object of features")
    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].CopyFrom(_feature(value, name))
    return example


def examples_input(body: dict) -> input_pb2.Input:
    """TF Serving's ``Input`` message of a ``:classify`` / ``:regress`` body (``examples`` and ``context``)."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("'examples' must be a non-empty list of JSON objects")
    message = input_pb2.Input()
    if "context" in body:
        listed = message.example_list_with_context
        listed.context.CopyFrom(_example(body["context"]))
    else:
        listed = message.example_list
    for features in examples:
        listed.examples.add().CopyFrom(_example(features))
    return message


def _classify_body(produced) -> dict:
    result = classification_pb2.ClassificationResult()
    result.ParseFromString(produced) if isinstance(produced, (bytes, bytearray)) else result.CopyFrom(produced)
    return {"result": [list(zip([item.label for item in entry.classes], _float32s([item.score for item in entry.classes])))
                       for entry in result.classifications]}


def _regress_body(produced) -> dict:
    result = regression_pb2.RegressionResult()
    result.ParseFromString(produced) if isinstance(produced, (bytes, bytearray)) else result.CopyFrom(produced)
    return {"result": _float32s([entry.value for entry in result.regressions])}


def _float32s(values: list[float]) -> list[float]:
    """Scores and regression values (float fields) written as float32 outputs are: their shortest decimal."""
    return _json_values(np.array(values, dtype=np.float32), "")


# ---------------------------------------------------------------------------
# handlers


class TfRestApi:
    """The ``/v1/models/...`` resources over a ``DataPlane``; model calls on the handler pool."""

    def __init__(self, plane: DataPlane, calls: ModelCalls):
        self._plane = plane
        self._calls = calls

    def routes(self) -> list:
        return [("GET", "/v1/models/{tail:.*}", self.get), ("POST", "/v1/models/{tail:.*}", self.post)]

    async def get(self, request: web.Request) -> web.Response:
        try:
            name, version, label, metadata, verb = _route(request)
            if verb is not None:
                raise InvalidInput(f"GET does not take a verb (:{quote(verb)}); POST :predict, :classify or :regress")
            if metadata:
                return _json(request, self._metadata(name, version, label))
            return _json(request, self._status(name, version, label))
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"GET {request.path}")

    def _status(self, name: str, version: int | None, label: str | None) -> dict:
        entries = []
        for status in self._plane.version_status(name, version, label):
            code = status.error_code.value if status.error_code is not None else _STATE_CODE_OK
            entries.append({"version": str(status.version), "state": status.state,
                            "status": {"error_code": code, "error_message": status.error_message or ""}})
        return {"model_version_status": entries}

    def _metadata(self, name: str, version: int | None, label: str | None) -> dict:
        metadata = self._plane.metadata(name, version, label)
        served = metadata.served
        signature_defs = {}
        for signature_name, signature in metadata.signatures.items():
            entry = {"inputs": {}, "outputs": {}, "method_name": signature.method_name}
            for side, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
                for spec in specs:
                    entry[side][spec.name] = {
                        "dtype": codec.tf_dtype_name(codec.tf_dtype_of(spec.dtype)),
                        "tensor_shape": {"dim": [{"size": str(size), "name": ""}
                                                 for size in codec.shape_for_metadata(spec.shape)],
                                         "unknown_rank": False},
                        "name": spec.name,
                    }
            signature_defs[signature_name] = entry
        return {"model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
                "metadata": {"signature_def": {"signature_def": signature_defs}}}

    async def post(self, request: web.Request) -> web.Response:
        try:
            name, version, label, metadata, verb = _route(request)
            if metadata or verb not in _VERBS:
                raise _NotFound(f"POST {quote(request.path)}: the verb must be one of :{', :'.join(_VERBS)}")
            raw = await read_body(request)
            answer = await self._calls.run(self._answer, name, version, label, verb, raw)
            return compressed(request, web.Response(body=answer, content_type="application/json"))
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            return await answer_error(error, f"POST {request.path}")

    def _answer(self, name, version, label, verb, raw) -> bytes:
        """On a handler thread (the JSON parse of a large body must not hold the event loop)."""
        body = _parse_json(raw)
        signature_name = body.get("signature_name")
        if signature_name is not None and not isinstance(signature_name, str):
            raise InvalidInput("'signature_name' must be a string")
        if verb == "predict":
            return self._predict(name, version, label, signature_name, body)
        return self._delegate(name, version, label, signature_name, body, verb)

    def _predict(self, name, version, label, signature_name, body) -> bytes:
        """On a handler thread: decode, run through the data plane, encode."""
        row_format = "instances" in body

        def decode(served, budget):
            return predict_inputs(body, served, budget), ()

        def encode(result):
            return dumps(predict_body(result.outputs, row_format))

        return self._plane.infer(InferRequest(name, decode, version, label, signature_name,
                                              arrival_s=request_arrival_s()), encode)

    def _delegate(self, name, version, label, signature_name, body, verb) -> bytes:
        served, produced = self._plane.delegate(name, version, label, verb, examples_input(body), signature_name)
        return dumps(_classify_body(produced) if verb == "classify" else _regress_body(produced))


def _parse_json(raw) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


__all__ = ["TfRestApi", "dumps", "examples_input", "predict_body", "predict_inputs"]
