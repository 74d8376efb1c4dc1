"""The PredictRequest string scanner: compiled == reference == protobuf's own reading."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navi._fast import _pbscan_ref
from navi._fast._pbscan import split_string_values as cy_split
from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import predict_pb2

ref_split = _pbscan_ref.split_string_values


def rebuilt(raw: bytes, result) -> predict_pb2.PredictRequest:
    """The request protobuf reads from the scanner's output, string values put back."""
    stripped, spans = result
    request = predict_pb2.PredictRequest.FromString(stripped)
    for name, where in spans.items():
        assert not request.inputs[name].string_val, "string values left in the stripped request"
        request.inputs[name].string_val.extend(raw[start:start + length] for start, length in where)
    return request


def check(raw: bytes):
    """Both twins agree and, when they take the message, mean what protobuf means."""
    cy, ref = cy_split(raw), ref_split(raw)
    assert cy == ref
    if cy is not None:
        assert rebuilt(raw, cy) == predict_pb2.PredictRequest.FromString(raw)
    return cy


names = st.text(min_size=0, max_size=8)
strings = st.binary(max_size=40)


@st.composite
def requests(draw):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(names)
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(0, 2**62))
    request.output_filter.extend(draw(st.lists(names, max_size=3)))
    for name in draw(st.lists(names, max_size=4, unique=True)):
        tensor = request.inputs[name]
        kind = draw(st.sampled_from(["string", "float", "int64", "empty_string"]))
        if kind == "float":
            tensor.dtype = types_pb2.DT_FLOAT
            values = draw(st.lists(st.floats(width=32, allow_nan=False), max_size=5))
            tensor.float_val.extend(values)
        elif kind == "int64":
            tensor.dtype = types_pb2.DT_INT64
            tensor.tensor_content = draw(st.binary(max_size=24))
        else:
            tensor.dtype = types_pb2.DT_STRING
            tensor.string_val.extend([] if kind == "empty_string" else draw(st.lists(strings, max_size=5)))
        for size in draw(st.lists(st.integers(-1, 10), max_size=3)):
            tensor.tensor_shape.dim.add(size=size)
    return request.SerializeToString()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_random_requests_split_as_protobuf_reads_them(raw):
    result = check(raw)
    assert result is not None  # protobuf's own encoding is always taken
    request = predict_pb2.PredictRequest.FromString(raw)
    with_strings = {name for name, t in request.inputs.items() if t.string_val}
    assert set(result[1]) == with_strings
    if not with_strings:
        assert result[0] is raw  # nothing to lift: no copy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_truncated_and_flipped_requests_never_mislead(raw, data):
    # any byte string: either both twins refuse it or protobuf reads the same request
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytearray(raw[:cut])
    if mutated and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] ^= 1 << data.draw(st.integers(0, 7))
    mutated = bytes(mutated)
    try:
        predict_pb2.PredictRequest.FromString(mutated)
    except Exception:
        # protobuf refuses it: the scanner may too, and must not crash either way
        assert cy_split(mutated) == ref_split(mutated)
        return
    check(mutated)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    tag = bytes([number << 3 | wire])
    if wire == 2:
        return tag + bytes([len(payload)]) + payload
    return tag + payload


def test_duplicate_map_keys_keep_the_last_entry():
    first = _field(1, 2, b"x") + _field(2, 2, _field(1, 0, b"\x07") + _field(8, 2, b"old"))
    second = _field(1, 2, b"x") + _field(2, 2, _field(1, 0, b"\x07") + _field(8, 2, b"new"))
    raw = _field(2, 2, first) + _field(2, 2, second)
    stripped, spans = check(raw)
    assert [raw[a:a + n] for a, n in spans["x"]] == [b"new"]
    # a later entry without string values replaces one with them
    third = _field(1, 2, b"x") + _field(2, 2, _field(1, 0, b"\x01"))
    assert check(raw + _field(2, 2, third))[1] == {}


@pytest.mark.parametrize("raw", [
    # the same entry field twice: protobuf merges, the scanner leaves it to protobuf
    _field(2, 2, _field(1, 2, b"x") + _field(2, 2, _field(8, 2, b"a")) + _field(2, 2, _field(8, 2, b"b"))),
    # an unknown field inside a map entry
    _field(2, 2, _field(1, 2, b"x") + _field(3, 0, b"\x01") + _field(2, 2, _field(8, 2, b"a"))),
    # a key that is not UTF-8
    _field(2, 2, _field(1, 2, b"\xff") + _field(2, 2, _field(8, 2, b"a"))),
    # a group
    bytes([2 << 3 | 3]),
    # a length past the end
    bytes([2 << 3 | 2, 50]) + b"abc",
    # a varint that never ends
    bytes([2 << 3 | 0]) + b"\xff" * 11,
])
def test_unusual_or_malformed_messages_fall_back(raw):
    assert cy_split(raw) is None and ref_split(raw) is None


def test_unknown_top_level_fields_and_order_are_kept():
    tensor = _field(8, 2, b"bpr-1") + _field(1, 0, b"\x07") + _field(8, 2, b"bpr-2") + _field(99 & 15, 0, b"\x05")
    raw = _field(15, 0, b"\x01") + _field(2, 2, _field(2, 2, tensor) + _field(1, 2, b"examples")) + _field(3, 2, b"out")
    stripped, spans = check(raw)
    assert [raw[a:a + n] for a, n in spans["examples"]] == [b"bpr-1", b"bpr-2"]
    assert len(stripped) < len(raw)


# --------------------------------------------------------------------------- KServe BYTES elements

from navi._fast._pbscan import split_length_prefixed as cy_split_bytes  # noqa: E402


def _outcome(function, raw, count):
    try:
        return function(raw, count)
    except ValueError as error:
        return ("ValueError", str(error))


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.binary(max_size=40), max_size=12), count_delta=st.integers(-2, 2),
       cut=st.integers(0, 6), extra=st.binary(max_size=3))
def test_bytes_split_twins_agree(items, count_delta, cut, extra):
    raw = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    raw = raw[:max(0, len(raw) - cut)] + extra
    count = max(0, len(items) + count_delta)
    for source in (raw, memoryview(raw), bytearray(raw)):
        assert _outcome(cy_split_bytes, source, count) == _outcome(_pbscan_ref.split_length_prefixed, raw, count)
    if not cut and not extra and count == len(items):
        assert cy_split_bytes(raw, count) == items


def test_bytes_split_never_trusts_the_count():
    # a count of 2**40 over 8 bytes fails at the third element, allocating nothing of its size
    raw = (0).to_bytes(4, "little") * 2
    for function in (cy_split_bytes, _pbscan_ref.split_length_prefixed):
        with pytest.raises(ValueError, match="end after 2 of 1099511627776"):
            function(raw, 2**40)


# --------------------------------------------------------------------------- top-level peek

from navi._fast._pbscan import top_level_spans as cy_spans  # noqa: E402


def _spans_outcome(function, raw, numbers):
    try:
        return function(raw, numbers)
    except ValueError as error:
        return ("ValueError", error.args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_top_level_spans_twins_agree_and_find_what_protobuf_reads(raw, data):
    numbers = (1, 2, 3)
    found = cy_spans(raw, numbers)
    assert found == _pbscan_ref.top_level_spans(raw, numbers)
    request = predict_pb2.PredictRequest.FromString(raw)
    if 1 in found:
        start, end = found[1]
        assert type(request.model_spec).FromString(raw[start:end]) == request.model_spec
    else:
        assert not request.HasField("model_spec")
    # damaged bytes: the same spans or the same reason and offset from both, never a crash
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytearray(raw[:cut])
    if mutated and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] ^= 1 << data.draw(st.integers(0, 7))
    for source in (bytes(mutated), memoryview(bytes(mutated))):
        assert _spans_outcome(cy_spans, source, numbers) == _spans_outcome(_pbscan_ref.top_level_spans,
                                                                          bytes(mutated), numbers)


@pytest.mark.parametrize("raw, reason", [
    (bytes([2 << 3 | 3]), "wire type 3 at the top level"),
    (bytes([2 << 3 | 2, 50]) + b"abc", "field 2 runs past the message's end"),
    (bytes([2 << 3 | 0]) + b"\xff" * 11, "truncated or overlong varint"),
    (bytes([1 << 3 | 1]) + b"1234567", "field 1 runs past the message's end"),
])
def test_top_level_spans_name_what_is_wrong(raw, reason):
    for function in (cy_spans, _pbscan_ref.top_level_spans):
        with pytest.raises(ValueError) as caught:
            function(raw, (1,))
        assert caught.value.args[0] == reason


def test_top_level_spans_keep_the_last_occurrence():
    raw = _field(1, 2, b"first") + _field(3, 0, b"\x01") + _field(1, 2, b"last")
    for function in (cy_spans, _pbscan_ref.top_level_spans):
        assert function(raw, (1,)) == {1: (len(raw) - 4, len(raw))}
        assert function(b"", (1,)) == {}


from navi._fast._pbscan import top_level_records as cy_records  # noqa: E402
from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2  # noqa: E402

RAW_INPUT_CONTENTS = 7


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=5), st.text(max_size=20), st.data())
def test_top_level_records_twins_agree_and_find_every_raw_input_content(contents, name, data):
    request = kserve_pb2.ModelInferRequest(model_name=name, raw_input_contents=contents)
    for _ in contents:
        request.inputs.add(name="x", datatype="BYTES", shape=[1])
    raw = request.SerializeToString()
    records = cy_records(raw, RAW_INPUT_CONTENTS)
    assert records == _pbscan_ref.top_level_records(raw, RAW_INPUT_CONTENTS)
    assert [raw[start:end] for _, start, end in records] == list(request.raw_input_contents)
    # each record starts at its tag: what lies between records is the rest of the message
    rest = b"".join(raw[prev_end:record_start] for prev_end, (record_start, _, _)
                    in zip([0] + [end for _, _, end in records], records)) + raw[records[-1][2] if records else 0:]
    assert kserve_pb2.ModelInferRequest.FromString(rest) == kserve_pb2.ModelInferRequest(
        model_name=name, inputs=request.inputs)
    cut = data.draw(st.integers(0, len(raw)))
    assert _spans_outcome(cy_records, raw[:cut], RAW_INPUT_CONTENTS) == _spans_outcome(
        _pbscan_ref.top_level_records, raw[:cut], RAW_INPUT_CONTENTS)
