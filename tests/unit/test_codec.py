"""navi.codec: TensorProto / KServe V2 tensors <-> numpy."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.framework import tensor_pb2, types_pb2
from navi.errors import InvalidInput
from navi import codec

NUMERIC = [np.float32, np.float64, np.int32, np.int64, np.bool_, np.int8, np.int16,
           np.uint8, np.uint16, np.uint32, np.uint64, np.float16]

# TF dtype -> the typed field a hand-written client fills
TYPED = {
    np.float32: ("float_val", types_pb2.DT_FLOAT),
    np.float64: ("double_val", types_pb2.DT_DOUBLE),
    np.int32: ("int_val", types_pb2.DT_INT32),
    np.int16: ("int_val", types_pb2.DT_INT16),
    np.int8: ("int_val", types_pb2.DT_INT8),
    np.uint8: ("int_val", types_pb2.DT_UINT8),
    np.uint16: ("int_val", types_pb2.DT_UINT16),
    np.int64: ("int64_val", types_pb2.DT_INT64),
    np.bool_: ("bool_val", types_pb2.DT_BOOL),
    np.uint32: ("uint32_val", types_pb2.DT_UINT32),
    np.uint64: ("uint64_val", types_pb2.DT_UINT64),
}


def _sample(dtype, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_tensor_content_round_trip(dtype):
    array = _sample(dtype)
    proto = codec.ndarray_to_tensor_proto(array)
    assert proto.tensor_content  # numbers travel packed, never as *_val
    back = codec.tensor_proto_to_ndarray(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", list(TYPED), ids=lambda d: np.dtype(d).name)
def test_typed_val_fields(dtype):
    array = _sample(dtype, shape=(2, 5), seed=1)
    field, tf_dtype = TYPED[dtype]
    proto = tensor_pb2.TensorProto(dtype=tf_dtype)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=5)
    getattr(proto, field).extend(array.reshape(-1).tolist())
    back = codec.tensor_proto_to_ndarray(proto, "x")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_half_val_bit_patterns():
    array = np.array([1.5, -2.0, 65504.0, 0.0], dtype=np.float16)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF)
    proto.tensor_shape.dim.add(size=4)
    proto.half_val.extend(array.view(np.uint16).tolist())
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(proto), array)


def test_unpacked_wire_encoding_is_accepted():
    # proto3 parsers must accept repeated scalars sent unpacked (one tag per
    # value); the codec reads the re-serialized (packed) form.
    body = b"\x08\x09"  # dtype = DT_INT64
    body += b"\x12\x04\x12\x02\x08\x03"  # tensor_shape { dim { size: 3 } }
    for value in (1, -1, 2**40):
        body += b"\x50" + _varint(value & (2**64 - 1))  # field 10, wire type 0
    proto = tensor_pb2.TensorProto.FromString(body)
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(proto), [1, -1, 2**40])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=8)))
def test_int64_val_any_values(array):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.int64_val.extend(array.reshape(-1).tolist())
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(proto), array)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=30))
def test_int32_val_negative_values(values):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32)
    proto.tensor_shape.dim.add(size=len(values))
    proto.int_val.extend(values)
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(proto), np.array(values, dtype=np.int32))


def test_single_value_fills_shape_as_tensorflow_does():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(proto), np.full((2, 3), 2.5, np.float32))


def test_strings():
    array = np.array([[b"a", b""], [b"\x00\xff", "h\u00e9".encode()]], dtype=object)
    proto = codec.ndarray_to_tensor_proto(array)
    assert proto.dtype == types_pb2.DT_STRING
    back = codec.tensor_proto_to_ndarray(proto)
    assert back.dtype == object and back.shape == (2, 2)
    assert back.tolist() == array.tolist()
    # numpy unicode arrays are sent as utf-8
    proto = codec.ndarray_to_tensor_proto(np.array(["h\u00e9"]))
    assert list(proto.string_val) == ["h\u00e9".encode()]


def test_scalar():
    proto = codec.ndarray_to_tensor_proto(np.float64(3.25))
    assert len(proto.tensor_shape.dim) == 0
    back = codec.tensor_proto_to_ndarray(proto)
    assert back.shape == () and back == 3.25


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: setattr(p, "tensor_content", b"\x00" * 7), "tensor_content has 7 bytes"),
        (lambda p: p.tensor_shape.dim.add(size=-1), "negative dimension"),
        (lambda p: setattr(p, "dtype", types_pb2.DT_COMPLEX64), "DT_COMPLEX64 is not supported"),
        (lambda p: setattr(p.tensor_shape, "unknown_rank", True), "unknown rank"),
    ],
)
def test_bad_tensors_raise_invalid_input(mutate, message):
    proto = codec.ndarray_to_tensor_proto(np.zeros((2, 2), np.float32))
    mutate(proto)
    with pytest.raises(InvalidInput, match=message):
        codec.tensor_proto_to_ndarray(proto, "x")


def test_wrong_value_count_names_the_input():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1, 2, 3])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidInput, match="'x': float_val holds 3 values"):
        codec.tensor_proto_to_ndarray(proto, "x")


# --- KServe V2 --------------------------------------------------------------

KSERVE_TYPED = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                "FP32", "FP64"]


@pytest.mark.parametrize("datatype", KSERVE_TYPED)
def test_kserve_typed_contents(datatype):
    dtype = codec.KSERVE_TO_NUMPY[datatype]
    array = _sample(dtype, shape=(2, 3), seed=2)
    field = codec._KSERVE_CONTENTS_FIELD[datatype][0]
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[2, 3])
    getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    back = codec.kserve_input_to_ndarray(tensor)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", NUMERIC + [object], ids=lambda d: np.dtype(d).name)
def test_kserve_raw_round_trip(dtype):
    if dtype is object:
        array = np.array([[b"ab", b""], [b"xyz", b"\x00"]], dtype=object)
    else:
        array = _sample(dtype, shape=(2, 2), seed=3)
    response = kserve_pb2.ModelInferResponse()
    codec.fill_kserve_outputs(response, [("y", array)])
    out = response.outputs[0]
    request = kserve_pb2.ModelInferRequest()
    tensor = request.inputs.add(name="y", datatype=out.datatype, shape=out.shape)
    request.raw_input_contents.append(response.raw_output_contents[0])
    back = codec.kserve_request_inputs(request)["y"]
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()
    assert tensor.datatype == codec.kserve_datatype_of(array.dtype)


def test_kserve_raw_bytes_layout():
    raw = codec.bytes_to_raw(np.array([b"ab", b"c"], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack("<I", 5) + b"ab", "claims 5 bytes"),
        (struct.pack("<I", 1) + b"a", "end after 1 of 2"),
        (struct.pack("<I", 0) * 2 + b"z", "trailing"),
    ],
)
def test_kserve_bad_raw_bytes(raw, message):
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[2])
    with pytest.raises(InvalidInput, match=message):
        codec.kserve_input_to_ndarray(tensor, raw)


def test_kserve_raw_count_mismatch():
    request = kserve_pb2.ModelInferRequest()
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidInput, match="raw_input_contents has 1 entries for 2 inputs"):
        codec.kserve_request_inputs(request)


def _infer_request(contents: list[bytes]) -> kserve_pb2.ModelInferRequest:
    request = kserve_pb2.ModelInferRequest(model_name="m", model_version="3", id="r1")
    request.parameters["p"].int64_param = 7
    for index, content in enumerate(contents):
        request.inputs.add(name=f"in{index}", datatype="BYTES", shape=[1])
    request.outputs.add(name="out")
    request.raw_input_contents.extend(contents)
    return request


@given(st.lists(st.binary(max_size=300), max_size=4))
@settings(max_examples=60, deadline=None)
def test_parse_kserve_request_lifts_raw_contents_as_views(contents):
    request = _infer_request(contents)
    raw = request.SerializeToString()
    parsed, lifted = codec.parse_kserve_request(raw)
    if contents:
        assert [bytes(view) for view in lifted] == contents
        assert all(view.obj is raw for view in lifted)  # views of the request, not copies
        assert not parsed.raw_input_contents
    else:
        assert lifted is None
    parsed.raw_input_contents.extend(contents)
    assert parsed == request


def test_parse_kserve_request_keeps_the_order_of_interleaved_records():
    """raw_input_contents records between other fields keep their order (protobuf's)."""
    first = _infer_request([b"a"]).SerializeToString()
    second = kserve_pb2.ModelInferRequest(raw_input_contents=[b"bb"], id="r2").SerializeToString()
    raw = first + second  # concatenated messages merge: repeated fields append, scalars take the last
    parsed, lifted = codec.parse_kserve_request(raw)
    assert [bytes(view) for view in lifted] == [b"a", b"bb"]
    assert parsed.id == "r2" and parsed.model_name == "m"


@pytest.mark.parametrize("raw", [b"\xff", b"\x3a\x05ab", b"\x0a\x02\xff\xfe", b"\x3b"])
def test_parse_kserve_request_malformed(raw):
    """Truncated, non-UTF-8, group or mistyped records: protobuf's error, as InvalidInput."""
    with pytest.raises(InvalidInput, match=r"malformed inference.ModelInferRequest"):
        codec.parse_kserve_request(raw)


def test_parse_kserve_request_leaves_a_mistyped_record_to_protobuf():
    """raw_input_contents sent as a varint is not lifted: protobuf keeps it as an unknown field."""
    raw = _infer_request([b"x"]).SerializeToString() + b"\x38\x01"
    parsed, lifted = codec.parse_kserve_request(raw)
    assert [bytes(view) for view in lifted] == [b"x"]
    assert parsed.SerializeToString() == kserve_pb2.ModelInferRequest.FromString(
        raw.replace(b"\x3a\x01x", b"")).SerializeToString()


def test_kserve_bytes_from_lifted_contents_are_views():
    elements = [b"bpr-one", b"", b"bpr-three"]
    request = _infer_request([codec.bytes_to_raw(np.array(elements, dtype=object))])
    request.inputs[0].shape[:] = [3]
    raw = request.SerializeToString()
    parsed, lifted = codec.parse_kserve_request(raw)
    tensor = codec.kserve_request_inputs(parsed, codec.RequestBudget(), lifted)["in0"]
    assert [bytes(item) for item in tensor] == elements
    assert all(isinstance(item, memoryview) and item.obj is raw for item in tensor)


def test_kserve_unknown_datatype():
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="s", datatype="FP8", shape=[1])
    with pytest.raises(InvalidInput, match="'FP8' is not supported"):
        codec.kserve_input_to_ndarray(tensor)


def test_big_endian_and_strided_arrays_are_sent_little_endian():
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    proto = codec.ndarray_to_tensor_proto(array)
    assert proto.tensor_content == np.arange(6, dtype="<i4").tobytes()
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    back = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(strided))
    np.testing.assert_array_equal(back, strided)


def test_our_protos_coexist_with_the_official_ones_in_one_process():
    """navi._proto builds into its own descriptor pool: TensorFlow's files of the
    same names (imported by the tf runtime) no longer clash with ours."""
    import subprocess
    import sys

    script = """
import importlib.util, sys, types
# the official generated modules, without running tensorflow/__init__ (slow)
spec = importlib.util.find_spec("tensorflow")
package = types.ModuleType("tensorflow")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["tensorflow"] = package
from tensorflow_serving.apis import predict_pb2 as official
from tensorflow.core.framework import tensor_pb2
from navi._proto.tensorflow_serving.apis import predict_pb2, get_model_metadata_pb2
ours = predict_pb2.PredictRequest()
ours.model_spec.name = "m"
ours.model_spec.version.value = 7
ours.inputs["x"].float_val.extend([1.5, 2.5])
theirs = official.PredictRequest.FromString(ours.SerializeToString())
assert theirs.model_spec.version.value == 7 and list(theirs.inputs["x"].float_val) == [1.5, 2.5]
any_holder = get_model_metadata_pb2.GetModelMetadataResponse().metadata["signature_def"]
any_holder.Pack(get_model_metadata_pb2.SignatureDefMap())
assert any_holder.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_decoded_tensors_hit_the_compiled_cast_kernel():
    """Decoded numbers are read-only views; the Numba kernel must take them as is
    (a dispatch miss costs ~0.4 ms per tensor and falls back to numpy)."""
    from navi._fast.kernels import _cast_rows

    for dtype, target in ((np.float32, np.float32), (np.float64, np.float32), (np.int32, np.int64)):
        array = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(_sample(dtype, (2, 3))))
        assert not array.flags.writeable
        out = np.zeros((4, 3), dtype=target)
        _cast_rows(array, out, 1)  # raises TypeError if no compiled signature matches
        np.testing.assert_array_equal(out[1:3], array.astype(target))


def _predict_response_message(outputs, name, version, signature_name) -> bytes:
    from navi._proto.tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = name
    if version is not None:
        response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    for output, array in outputs.items():
        codec.ndarray_to_tensor_proto(array, response.outputs[output])
    return response.SerializeToString()


@settings(max_examples=150, deadline=None)
@given(
    array=hnp.arrays(st.sampled_from(NUMERIC), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    name=st.text(max_size=12),
    version=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    signature_name=st.sampled_from(["", "serving_default", "sig"]),
)
def test_written_predict_response_equals_protobufs_bytes(array, name, version, signature_name):
    """The hand-written PredictResponse is the very bytes protobuf would write."""
    outputs = {"out": array}
    written = codec.encode_predict_response(outputs, codec.model_spec_bytes(name, version, signature_name))
    assert written == _predict_response_message(outputs, name, version, signature_name)


def test_written_predict_response_with_several_unusual_outputs():
    from navi._proto.tensorflow_serving.apis import predict_pb2

    outputs = {
        "strings": np.array([b"a", b"", b"xyz"], dtype=object),
        "strided": np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],
        "big_endian": np.arange(4, dtype=">i4"),
        "probabilities": np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2),
    }
    written = predict_pb2.PredictResponse.FromString(
        codec.encode_predict_response(outputs, codec.model_spec_bytes("m", 7, "serving_default")))
    assert written == predict_pb2.PredictResponse.FromString(
        _predict_response_message(outputs, "m", 7, "serving_default"))
    for output, array in outputs.items():
        decoded = codec.tensor_proto_to_ndarray(written.outputs[output], output)
        assert decoded.tolist() == np.asarray(array).tolist()
