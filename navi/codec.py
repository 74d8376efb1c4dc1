"""Tensor messages <-> numpy arrays, for the TF Serving and KServe V2 APIs.

Numbers never become Python objects on the way in or out: ``tensor_content``
and KServe ``raw_*_contents`` are wrapped with ``np.frombuffer``; the typed
repeated fields (``float_val``, ``int64_contents``, ...) are read from the
message's packed wire bytes (one C-level serialization, then a frombuffer view
or a vectorized varint decode) instead of iterating the protobuf container,
which would create one Python number per element. Strings are the exception:
they are bytes objects in an object array, as every runtime expects them.

Every problem with a client's tensor raises ``navi.errors.InvalidInput`` naming
the tensor, so the server answers INVALID_ARGUMENT.
"""
from __future__ import annotations

import functools
import math
import struct
from typing import Iterable, Sequence

import numpy as np
from google.protobuf.message import DecodeError as DecodeProtoError

from navi._fast import split_length_prefixed, split_string_values, top_level_records, top_level_spans
from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.framework import tensor_pb2, types_pb2
from navi._proto.tensorflow_serving.apis import model_pb2, predict_pb2
from navi.errors import InvalidInput, RequestTooLarge, quote

# ---------------------------------------------------------------------------
# dtype tables

_LITTLE_ENDIAN_HOST = np.little_endian

#: TF DataType -> numpy dtype (strings are object arrays of bytes)
TF_TO_NUMPY: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_STRING: np.dtype(object),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_HALF: np.dtype(np.float16),
}
_NUMPY_TO_TF: dict[np.dtype, int] = {v: k for k, v in TF_TO_NUMPY.items()}
# wire byte order (little-endian) of each numeric TF dtype, built once: the
# per-request path only looks it up
_TF_WIRE_DTYPE: dict[int, np.dtype] = {
    k: v.newbyteorder("<") for k, v in TF_TO_NUMPY.items() if v != np.dtype(object)
}

# Typed field of each TF dtype: (field number in TensorProto, wire kind).
# "f4"/"f8" are fixed-width little-endian; "varint" are (zigzag-free) varints.
_TF_TYPED_FIELD: dict[int, tuple[str, int, str]] = {
    types_pb2.DT_FLOAT: ("float_val", 5, "f4"),
    types_pb2.DT_DOUBLE: ("double_val", 6, "f8"),
    types_pb2.DT_INT32: ("int_val", 7, "varint"),
    types_pb2.DT_INT16: ("int_val", 7, "varint"),
    types_pb2.DT_INT8: ("int_val", 7, "varint"),
    types_pb2.DT_UINT8: ("int_val", 7, "varint"),
    types_pb2.DT_UINT16: ("int_val", 7, "varint"),
    types_pb2.DT_INT64: ("int64_val", 10, "varint"),
    types_pb2.DT_BOOL: ("bool_val", 11, "varint"),
    types_pb2.DT_HALF: ("half_val", 13, "varint"),
    types_pb2.DT_UINT32: ("uint32_val", 16, "varint"),
    types_pb2.DT_UINT64: ("uint64_val", 17, "varint"),
}

#: KServe V2 datatype string -> numpy dtype
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_KSERVE: dict[np.dtype, str] = {v: k for k, v in KSERVE_TO_NUMPY.items()}

# KServe InferTensorContents field of each datatype: (name, number, wire kind).
_KSERVE_CONTENTS_FIELD: dict[str, tuple[str, int, str]] = {
    "BOOL": ("bool_contents", 1, "varint"),
    "INT8": ("int_contents", 2, "varint"),
    "INT16": ("int_contents", 2, "varint"),
    "INT32": ("int_contents", 2, "varint"),
    "INT64": ("int64_contents", 3, "varint"),
    "UINT8": ("uint_contents", 4, "varint"),
    "UINT16": ("uint_contents", 4, "varint"),
    "UINT32": ("uint_contents", 4, "varint"),
    "UINT64": ("uint64_contents", 5, "varint"),
    "FP32": ("fp32_contents", 6, "f4"),
    "FP64": ("fp64_contents", 7, "f8"),
}


def tf_dtype_of(dtype: np.dtype) -> int:
    """The TF ``DataType`` enum value for a numpy dtype (strings: DT_STRING)."""
    found = _NUMPY_TO_TF.get(dtype)  # the common case: a native-order numeric dtype
    if found is not None:
        return found
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _NUMPY_TO_TF[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"dtype {dtype} has no TensorFlow equivalent") from None


def kserve_datatype_of(dtype: np.dtype) -> str:
    """The KServe V2 datatype string for a numpy dtype (strings: BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NUMPY_TO_KSERVE[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"dtype {dtype} has no KServe V2 equivalent") from None


def tf_dtype_name(dtype_enum: int) -> str:
    """``DT_FLOAT``-style name of a TF DataType value (for messages)."""
    try:
        return types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"DataType({dtype_enum})"


# ---------------------------------------------------------------------------
# wire-level helpers for packed repeated scalars


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """One varint at ``pos`` of ``buf``: (value, position after it)."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise InvalidInput("truncated varint in tensor message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise InvalidInput("varint longer than 10 bytes in tensor message")


def _packed_payload(serialized: bytes, field_number: int) -> memoryview:
    """The payload of packed repeated field ``field_number`` in a serialized message.

    Only the message's top-level fields are walked (a handful for a tensor),
    never its elements. upb serializes proto3 repeated scalars packed and as one
    record, so the field is one length-delimited record, or absent (empty).
    """
    view = memoryview(serialized)
    pos = 0
    end = len(serialized)
    found = None
    while pos < end:
        tag, pos = _read_varint(serialized, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = _read_varint(serialized, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _read_varint(serialized, pos)
            if number == field_number:
                found = view[pos : pos + length]
            pos += length
        else:
            raise InvalidInput(f"unexpected wire type {wire_type} in tensor message")
    return found if found is not None else view[0:0]


def _decode_varints(payload: memoryview) -> np.ndarray:
    """Vectorized decode of concatenated varints into uint64 (two's complement kept)."""
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    is_last = raw < 0x80
    if not is_last[-1]:
        raise InvalidInput("truncated varint in packed tensor values")
    # index of each byte's varint, and the byte's position inside it
    group = np.concatenate(([0], np.cumsum(is_last[:-1], dtype=np.int64)))
    starts = np.flatnonzero(np.concatenate(([True], is_last[:-1])))
    position = np.arange(raw.size, dtype=np.int64) - starts[group]
    if position.max(initial=0) > 9:
        raise InvalidInput("varint longer than 10 bytes in packed tensor values")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(parts, starts)


def _packed_array(message, field_number: int, kind: str, dtype: np.dtype) -> np.ndarray:
    """The packed repeated scalar field ``field_number`` of ``message`` as a numpy array."""
    payload = _packed_payload(message.SerializeToString(), field_number)
    if kind == "f4":
        return np.frombuffer(payload, dtype="<f4").astype(dtype, copy=False)
    if kind == "f8":
        return np.frombuffer(payload, dtype="<f8").astype(dtype, copy=False)
    values = _decode_varints(payload)
    if dtype == np.bool_:
        return values != 0
    if dtype == np.float16:
        # half_val carries the IEEE half bit pattern in the low 16 bits
        return values.astype(np.uint16).view(np.float16)
    if dtype.kind == "i":
        # negative int32/int64 are sign-extended 64-bit varints
        return values.view(np.int64).astype(dtype, copy=False)
    return values.astype(dtype, copy=False)


# ---------------------------------------------------------------------------
# TF Serving TensorProto


#: largest element count of one tensor: numpy's (and every runtime's) int64 sizes
MAX_ELEMENTS = 2**63 - 1
#: bytes counted per element of a string tensor (its object array's pointer)
_STRING_ELEMENT_BYTES = 8


class RequestBudget:
    """What one request may still decode, in bytes: every tensor is charged before it is allocated.

    ``max_decoded_bytes`` (``ServerSettings.max_request_decoded_bytes``; None
    = no bound) counts each tensor at its decoded size, a value broadcast to a
    shape at the expanded size: one 155 KB string sent with shape [2000] costs
    310 MB once the model's inputs are built from it.
    """

    __slots__ = ("limit", "used")

    def __init__(self, max_decoded_bytes: int | None = None):
        self.limit = max_decoded_bytes
        self.used = 0

    def charge(self, nbytes: int, name: str) -> None:
        """Count ``nbytes`` for input ``name``; ``RequestTooLarge`` past the bound."""
        self.used += nbytes
        if self.limit is not None and self.used > self.limit:
            raise RequestTooLarge(
                f"input {quote(name)}: the request decodes to {self.used} bytes or more, over "
                f"max_request_decoded_bytes={self.limit} (raise it with --max-request-decoded-bytes)"
            )


def element_count(shape: Sequence[int], name: str) -> int:
    """The number of elements of ``shape``; ``InvalidInput`` for a negative dim or an int64 overflow.

    Checked before anything of that shape is allocated or broadcast (numpy
    itself fails with "iterator is too large" or MemoryError: INTERNAL).
    """
    count = 1
    for size in shape:
        if size < 0:
            raise InvalidInput(f"input {quote(name)}: shape {list(shape)[:8]} has a negative dimension")
        count *= size
    if count > MAX_ELEMENTS:
        raise InvalidInput(
            f"input {quote(name)}: shape {list(shape)[:8]} has {count} elements, more than an int64 holds"
        )
    return count


def _shape_of(proto: tensor_pb2.TensorProto, name: str) -> tuple[tuple[int, ...], int]:
    """(shape, element count) of a TensorProto, checked."""
    tensor_shape = proto.tensor_shape
    if tensor_shape.unknown_rank:
        raise InvalidInput(f"input {quote(name)}: tensor_shape has unknown rank")
    shape = tuple([dim.size for dim in tensor_shape.dim])
    count = math.prod(shape)
    if 0 <= count <= MAX_ELEMENTS and min(shape, default=0) >= 0:
        return shape, count  # the usual shape, checked in C
    return shape, element_count(shape, name)


def _check_fill(given: int, count: int, shape: tuple[int, ...], name: str, what: str) -> None:
    """``given`` values may fill ``count`` elements: as many, or one broadcast (TensorFlow's fill)."""
    if given == count or (given == 1 and count > 1):
        return
    raise InvalidInput(
        f"input {quote(name)}: {what} holds {given} values but tensor_shape "
        f"{list(shape)[:8]} needs {count}"
    )


def _fit_values(values: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    count = math.prod(shape)
    _check_fill(values.size, count, shape, name, what)
    if values.size == count:
        return values.reshape(shape)
    # TensorFlow fills a tensor from one value (tf.make_tensor_proto of a scalar
    # with a shape); accept the same, counted at its expanded size (RequestBudget).
    return np.broadcast_to(values, shape)


def tensor_proto_to_ndarray(
    proto: tensor_pb2.TensorProto, name: str = "", strings: Sequence | None = None,
    budget: RequestBudget | None = None,
) -> np.ndarray:
    """Decode a TF ``TensorProto`` into a numpy array.

    Numbers come from ``tensor_content`` (a zero-copy view of the message
    bytes) or from the typed ``*_val`` field of the dtype; DT_STRING gives an
    object array of ``bytes``, or of the given ``strings`` when the values were
    lifted out of the message before parsing (``parse_predict_request``).
    The shape is checked before anything is allocated: ``InvalidInput`` on an
    unsupported dtype, a negative dimension, an element count past int64 or a
    value count that does not match the shape; ``RequestTooLarge`` when
    ``budget`` has no room for the decoded (broadcast: expanded) tensor.
    """
    tf_dtype = proto.dtype
    dtype = TF_TO_NUMPY.get(tf_dtype)
    if dtype is None:
        raise InvalidInput(
            f"input {quote(name)}: dtype {tf_dtype_name(tf_dtype)} is not supported "
            "(float, double, int8/16/32/64, uint8/16/32/64, half, bool, string)"
        )
    shape, count = _shape_of(proto, name)
    if budget is None:
        budget = RequestBudget()
    if tf_dtype == types_pb2.DT_STRING:
        values = list(proto.string_val) if strings is None else strings
        _check_fill(len(values), count, shape, name, "string_val")
        value_bytes = sum(map(len, values)) if len(values) == count else len(values[0]) * count
        budget.charge(count * _STRING_ELEMENT_BYTES + value_bytes, name)
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return _fit_values(array, shape, name, "string_val")
    content = proto.tensor_content
    if content:
        expected = count * dtype.itemsize
        if len(content) != expected:
            raise InvalidInput(
                f"input {quote(name)}: tensor_content has {len(content)} bytes but "
                f"{tf_dtype_name(tf_dtype)}{list(shape)[:8]} needs {expected}"
            )
        budget.charge(expected, name)
        return np.frombuffer(content, dtype=_TF_WIRE_DTYPE[tf_dtype]).reshape(shape)
    field_name, number, kind = _TF_TYPED_FIELD[tf_dtype]
    values = _packed_array(proto, number, kind, dtype)
    _check_fill(values.size, count, shape, name, field_name)
    budget.charge(count * dtype.itemsize, name)
    return _fit_values(values, shape, name, field_name)


def parse_message(message_type, raw, received_bytes: int | None = None):
    """``raw`` parsed as ``message_type``; ``InvalidInput`` naming the type when it is not one.

    ``received_bytes``: the size to name in the error when ``raw`` is what is
    left of a larger request (default ``len(raw)``).
    """
    try:
        return message_type.FromString(raw)
    except (DecodeProtoError, UnicodeDecodeError, ValueError) as error:
        detail = str(error) or type(error).__name__
        size = len(raw) if received_bytes is None else received_bytes
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.full_name} ({size} bytes): {detail}") from None


def parse_predict_request(raw: bytes) -> tuple[predict_pb2.PredictRequest, dict[str, list[memoryview]]]:
    """Parse a serialized ``PredictRequest``, leaving its string values in ``raw``.

    Returns the request without the ``string_val`` of its inputs and, per
    input that had them, those values as memoryviews of ``raw`` (no copy: a
    1.5 MB BPR is not copied into the message and again into a ``bytes``).
    Messages the scanner does not take are parsed whole (no views). Raises
    ``InvalidInput`` when ``raw`` is not a PredictRequest.
    """
    split = split_string_values(raw)
    try:
        if split is None:
            return predict_pb2.PredictRequest.FromString(raw), {}
        stripped, spans = split
        request = predict_pb2.PredictRequest.FromString(stripped)
    except (DecodeProtoError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"malformed PredictRequest ({len(raw)} bytes): {exc}") from None
    if not spans:
        return request, {}
    view = memoryview(raw)
    return request, {name: [view[start:start + length] for start, length in where]
                     for name, where in spans.items()}


def _top_level_spans(raw, wanted: tuple[int, ...], what: str) -> dict[int, tuple[int, int]]:
    """Where the last occurrence of each length-delimited top-level field in ``wanted`` lies (a peek, no parse).

    Only the message's top-level records are walked (``_fast.top_level_spans``),
    so finding the model a request names costs the same whatever the size of
    its tensors. ``InvalidInput`` when the records do not add up to the message.
    """
    try:
        return top_level_spans(raw, wanted)
    except ValueError as error:
        reason, offset = error.args
        raise InvalidInput(f"malformed {what} ({len(raw)} bytes): {reason} (at byte {offset})") from None


def _utf8(raw, span: tuple[int, int] | None, what: str) -> str:
    if span is None:
        return ""
    try:
        return str(raw[span[0]:span[1]], "utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"malformed ModelInferRequest: {what} is not UTF-8") from None


def peek_kserve_model(raw) -> tuple[str, str]:
    """(model_name, model_version) of a serialized ``ModelInferRequest``, without parsing its tensors."""
    spans = _top_level_spans(raw, (1, 2), "ModelInferRequest")
    return _utf8(raw, spans.get(1), "model_name"), _utf8(raw, spans.get(2), "model_version")


def peek_predict_model_spec(raw) -> model_pb2.ModelSpec:
    """The ``ModelSpec`` of a serialized ``PredictRequest``, without parsing its tensors."""
    span = _top_level_spans(raw, (1,), "PredictRequest").get(1)
    try:
        return model_pb2.ModelSpec.FromString(raw[span[0]:span[1]] if span is not None else b"")
    except (DecodeProtoError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"malformed PredictRequest.model_spec: {exc}") from None


def _as_bytes_list(array: np.ndarray) -> list[bytes]:
    flat = array.reshape(-1)
    out = []
    for item in flat.tolist():
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            out.append(bytes(item))
    return out


def ndarray_to_tensor_proto(
    array: np.ndarray, proto: tensor_pb2.TensorProto | None = None
) -> tensor_pb2.TensorProto:
    """Encode a numpy array as a TF ``TensorProto`` (numbers in ``tensor_content``).

    Fills ``proto`` in place when given (e.g. ``response.outputs[name]``,
    avoiding a copy of the message) and returns it.
    """
    if proto is None:
        proto = tensor_pb2.TensorProto()
    array = np.asarray(array)
    proto.dtype = tf_dtype_of(array.dtype)
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend(_as_bytes_list(array))
    elif _LITTLE_ENDIAN_HOST and array.dtype.isnative and array.flags.c_contiguous:
        proto.tensor_content = array.tobytes()
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


# ---------------------------------------------------------------------------
# PredictResponse, written straight to bytes
#
# A PredictResponse of a few numeric outputs is short and always laid out the
# same way; building it as a protobuf message (response, model_spec, one map
# entry and a shape message per output) took ~10 us per request, writing the
# bytes takes ~4. Field numbers are TF Serving's: PredictResponse {outputs = 1
# (map<string, TensorProto>), model_spec = 2}; ModelSpec {name = 1, version =
# 2 (Int64Value {value = 1}), signature_name = 3}; TensorProto {dtype = 1,
# tensor_shape = 2, tensor_content = 4}; TensorShapeProto {dim = 2 (Dim
# {size = 1})}. Fields are written in number order and zero values are left
# out, as protobuf itself serializes them; tests compare the two byte for byte.

_ONE_BYTE_VARINTS = [bytes([n]) for n in range(128)]


def encode_varint(value: int) -> bytes:
    """Protobuf varint bytes of ``value`` (a negative int64 as its ten-byte two's complement)."""
    if 0 <= value < 128:
        return _ONE_BYTE_VARINTS[value]
    value &= (1 << 64) - 1  # negative int64: ten bytes, two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    return tag + encode_varint(len(body)) + body


@functools.lru_cache(maxsize=1024)
def model_spec_bytes(name: str, version: int | None, signature_name: str) -> bytes:
    """A serialized ``ModelSpec`` naming the model version that answered (cached: few distinct)."""
    body = b""
    if name:
        body += _field(b"\x0a", name.encode())
    if version is not None:
        body += _field(b"\x12", b"\x08" + encode_varint(version) if version else b"")
    if signature_name:
        body += _field(b"\x1a", signature_name.encode())
    return body


@functools.lru_cache(maxsize=4096)
def _output_head(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The bytes of a ``PredictResponse.outputs`` entry before its ``tensor_content`` value.

    Every length in them follows from the name, dtype and shape, so an
    entry is this head and the array's bytes (cached: an answer's outputs
    keep their dtypes and a few row counts). None for what is not written by
    hand: strings, dtypes without a TF number type, non-native byte order.
    """
    tf_dtype = _NUMPY_TO_TF.get(dtype)
    if tf_dtype is None or tf_dtype == types_pb2.DT_STRING or not _LITTLE_ENDIAN_HOST:
        return None
    content_bytes = math.prod(shape) * dtype.itemsize
    tensor_head = b"\x08" + encode_varint(tf_dtype)
    if shape:  # a scalar has no tensor_shape at all
        tensor_head += _field(b"\x12", b"".join(
            [_field(b"\x12", b"\x08" + encode_varint(size) if size else b"") for size in shape]))
    if content_bytes:
        tensor_head += b"\x22" + encode_varint(content_bytes)
    tensor_bytes = len(tensor_head) + content_bytes
    key = _field(b"\x0a", name.encode())
    value_head = b"\x12" + encode_varint(tensor_bytes)
    entry_bytes = len(key) + len(value_head) + tensor_bytes
    return b"\x0a" + encode_varint(entry_bytes) + key + value_head + tensor_head


def encode_predict_response(outputs: dict, model_spec: bytes) -> bytes:
    """A serialized ``PredictResponse`` of ``outputs`` {name: array} and a ``model_spec_bytes``."""
    parts = []
    for name, array in outputs.items():
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        head = _output_head(name, array.dtype, array.shape) if array.flags.c_contiguous else None
        if head is not None:
            parts.append(head)
            parts.append(array.tobytes())
        else:
            tensor = ndarray_to_tensor_proto(array).SerializeToString()
            parts.append(_field(b"\x0a", _field(b"\x0a", name.encode()) + _field(b"\x12", tensor)))
    parts.append(_field(b"\x12", model_spec))
    return b"".join(parts)


# ---------------------------------------------------------------------------
# KServe V2


def _bytes_from_raw(raw, count: int, name: str) -> np.ndarray:
    """Split KServe raw BYTES contents: each element has a 4-byte LE length prefix.

    The split runs in ``navi._fast`` (one C loop; ``_pbscan_ref`` is its
    plain-Python twin): no Python-level step per element, and each element is
    a view of ``raw``, as Predict's string values are (the BPR decoder reads
    views in place; the dense path makes them bytes for the framework).
    """
    try:
        items = split_length_prefixed(raw, count)
    except ValueError as error:
        raise InvalidInput(f"input {quote(name)}: {error}") from None
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def bytes_to_raw(array: np.ndarray) -> bytes:
    """Encode an array of byte strings as KServe raw BYTES (4-byte LE length prefixes)."""
    items = _as_bytes_list(np.asarray(array, dtype=object))
    parts = []
    for item in items:
        parts.append(struct.pack("<I", len(item)))
        parts.append(item)
    return b"".join(parts)


def kserve_raw_to_ndarray(raw, datatype: str, shape: tuple[int, ...], name: str,
                          budget: RequestBudget) -> np.ndarray:
    """One tensor from its raw bytes (V2 gRPC ``raw_input_contents``, V2 HTTP binary data).

    Numbers are a little-endian view of ``raw``; BYTES elements are split.
    The shape is checked and ``budget`` charged before anything is allocated.
    """
    dtype = KSERVE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"input {quote(name)}: datatype {quote(datatype)} is not supported ({', '.join(KSERVE_TO_NUMPY)})"
        )
    count = element_count(shape, name)
    if dtype == object:
        budget.charge(count * _STRING_ELEMENT_BYTES + len(raw), name)
        return _bytes_from_raw(raw, count, name).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {quote(name)}: raw contents have {len(raw)} bytes but "
            f"{datatype}{list(shape)[:8]} needs {count * dtype.itemsize}"
        )
    budget.charge(len(raw), name)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def kserve_raw_of(array: np.ndarray) -> bytes:
    """An output's raw bytes (V2 gRPC ``raw_output_contents``, V2 HTTP binary data)."""
    if kserve_datatype_of(array.dtype) == "BYTES":
        return bytes_to_raw(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def kserve_input_to_ndarray(
    tensor: kserve_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None = None,
    budget: RequestBudget | None = None,
) -> np.ndarray:
    """Decode one KServe V2 input tensor, from ``raw`` when given else from ``contents``.

    The shape is checked (and ``budget`` charged) before anything is allocated.
    """
    name = tensor.name
    dtype = KSERVE_TO_NUMPY.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input {quote(name)}: datatype {quote(tensor.datatype)} is not supported "
            f"({', '.join(KSERVE_TO_NUMPY)})"
        )
    shape = tuple(int(size) for size in tensor.shape)
    count = element_count(shape, name)
    if budget is None:
        budget = RequestBudget()
    if raw is not None:
        return kserve_raw_to_ndarray(raw, tensor.datatype, shape, name, budget)
    if dtype == object:
        field = "bytes_contents"
        given = len(tensor.contents.bytes_contents)
    elif tensor.datatype == "FP16":
        raise InvalidInput(f"input {quote(name)}: FP16 must be sent in raw_input_contents")
    else:
        field, number, kind = _KSERVE_CONTENTS_FIELD[tensor.datatype]
        given = None
    if given is not None and given != count:
        raise InvalidInput(
            f"input {quote(name)}: contents.{field} holds {given} values but shape "
            f"{list(shape)[:8]} needs {count}"
        )
    if dtype == object:
        budget.charge(count * _STRING_ELEMENT_BYTES + sum(map(len, tensor.contents.bytes_contents)), name)
        values = np.empty(count, dtype=object)
        values[:] = list(tensor.contents.bytes_contents)
        return values.reshape(shape)
    values = _packed_array(tensor.contents, number, kind, dtype)
    if values.size != count:
        raise InvalidInput(
            f"input {quote(name)}: contents.{field} holds {values.size} values but shape "
            f"{list(shape)[:8]} needs {count}"
        )
    budget.charge(values.nbytes, name)
    return values.reshape(shape)


#: ModelInferRequest.raw_input_contents
_RAW_INPUT_CONTENTS_FIELD = 7


def parse_kserve_request(raw) -> tuple[kserve_pb2.ModelInferRequest, list[memoryview] | None]:
    """Parse a serialized ``ModelInferRequest``, leaving its ``raw_input_contents`` in ``raw``.

    Returns the request without them and, when it had any, those contents as
    memoryviews of ``raw`` in order (None: use the request's own field). As
    ``parse_predict_request`` does for string values: protobuf parses only
    the small rest, and a 1.3 MB BYTES tensor of BPRs (or 2.5 MB of dense
    numbers) is neither copied into the message nor out of it again. The
    walk is per top-level record (a few per input), not per element. A
    message whose records do not add up is parsed whole, so its error is
    protobuf's. ``InvalidInput`` when ``raw`` is not a ModelInferRequest.
    """
    view = memoryview(raw)
    try:
        records = top_level_records(raw, _RAW_INPUT_CONTENTS_FIELD)
    except ValueError:
        records = []  # the records do not add up: protobuf words the error
    contents: list[memoryview] | None = []
    pieces: list[memoryview] = []
    kept_from = 0
    for start, value_start, value_end in records:
        pieces.append(view[kept_from:start])
        contents.append(view[value_start:value_end])
        kept_from = value_end
    if not contents:
        contents, stripped = None, raw
    else:
        pieces.append(view[kept_from:])
        stripped = b"".join(pieces)
    return parse_message(kserve_pb2.ModelInferRequest, stripped, len(raw)), contents


def kserve_request_inputs(request: kserve_pb2.ModelInferRequest,
                          budget: RequestBudget | None = None,
                          raw_contents: Sequence | None = None) -> dict[str, np.ndarray]:
    """All inputs of a ModelInferRequest by name (raw or typed contents).

    ``raw_contents`` replaces the request's ``raw_input_contents`` (the views
    ``parse_kserve_request`` lifted out of it).
    """
    if raw_contents is None:
        raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} inputs"
        )
    if budget is None:
        budget = RequestBudget()
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input {quote(tensor.name)} given twice")
        raw = raw_contents[index] if raw_contents else None
        inputs[tensor.name] = kserve_input_to_ndarray(tensor, raw, budget)
    return inputs


def fill_kserve_outputs(
    response: kserve_pb2.ModelInferResponse, outputs: Iterable[tuple[str, np.ndarray]]
) -> None:
    """Append outputs to a ModelInferResponse, numbers and strings in ``raw_output_contents``."""
    for name, array in outputs:
        array = np.asarray(array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = kserve_datatype_of(array.dtype)
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(kserve_raw_of(array))


def shape_for_metadata(shape: Sequence[int]) -> list[int]:
    """A signature shape with unknown dimensions as -1 (both APIs' convention)."""
    return [int(size) if size is not None and size >= 0 else -1 for size in shape]
