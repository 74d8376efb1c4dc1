"""The REST surfaces' JSON and binary codecs, and the benchmark's REST encoders that feed them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from navi import codec
from navi.bench.requests import HTTP_PREFIX, encode_tf_rest, encode_v2_http
from navi.errors import InvalidInput
from navi.plugins.base import Signature, TensorSpec
from navi.server import tfrest, v2http


class _Served:
    """What the REST decoders read of a served model: its signature."""

    def __init__(self, *specs: TensorSpec):
        self.signature = Signature(specs, (), "tensorflow/serving/predict", {})


def test_v2_binary_body_from_the_bench_encoder_decodes_to_the_same_arrays():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    strings = [b"", b"\x00bpr", bytes(range(256))]
    payload = encode_v2_http("m", {"x": x, "s": strings})
    (header_length,) = HTTP_PREFIX.unpack_from(payload)
    header, binary = v2http.split_infer_body(payload[HTTP_PREFIX.size:], str(header_length))
    inputs = v2http.infer_inputs(header, binary, codec.RequestBudget())
    np.testing.assert_array_equal(inputs["x"], x)
    assert inputs["s"].tolist() == strings
    assert header["parameters"] == {"binary_data_output": True}


def test_v2_json_data_nested_or_flat_and_its_errors():
    header = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 2**62]]}]}
    (array,) = v2http.infer_inputs(header, memoryview(b""), codec.RequestBudget()).values()
    assert array.dtype == np.int64 and array[1, 1] == 2**62  # int64 keeps every digit
    header["inputs"][0]["data"] = [1, 2, 3]
    with pytest.raises(InvalidInput, match="needs 4"):
        v2http.infer_inputs(header, memoryview(b""), codec.RequestBudget())
    header["inputs"][0]["data"] = [1.5, 2, 3, 4]
    with pytest.raises(InvalidInput, match="fractions"):
        v2http.infer_inputs(header, memoryview(b""), codec.RequestBudget())
    with pytest.raises(InvalidInput, match="binary bytes after"):
        v2http.infer_inputs({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
                            memoryview(b"xx"), codec.RequestBudget())


def test_v2_budget_bounds_decoded_bytes():
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}
    with pytest.raises(Exception, match="max_request_decoded_bytes=8"):
        v2http.infer_inputs(header, memoryview(b""), codec.RequestBudget(8))


def test_tf_rest_body_from_the_bench_encoder_decodes_to_the_same_arrays():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    served = _Served(TensorSpec("x", np.dtype(np.float32), (-1, 3)))
    body = json.loads(encode_tf_rest("m", {"x": x})[HTTP_PREFIX.size:])
    np.testing.assert_array_equal(tfrest.predict_inputs(body, served, codec.RequestBudget())["x"], x)
    served = _Served(TensorSpec("examples", np.dtype(object), (-1,)))
    body = json.loads(encode_tf_rest("m", {"examples": [b"\xff\x00", b"ok"]})[HTTP_PREFIX.size:])
    assert tfrest.predict_inputs(body, served, codec.RequestBudget())["examples"].tolist() == [b"\xff\x00", b"ok"]


def test_tf_rest_row_format_named_and_unnamed():
    served = _Served(TensorSpec("a", np.dtype(np.int64), (-1,)), TensorSpec("b", np.dtype(np.float32), (-1, 2)))
    inputs = tfrest.predict_inputs({"instances": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}]}, served,
                                   codec.RequestBudget())
    assert inputs["a"].tolist() == [1, 2] and inputs["b"].dtype == np.float32
    with pytest.raises(InvalidInput, match="name each one"):
        tfrest.predict_inputs({"instances": [1, 2]}, served, codec.RequestBudget())
    with pytest.raises(InvalidInput, match="instance 1"):
        tfrest.predict_inputs({"instances": [{"a": 1, "b": [1, 2]}, {"a": 2}]}, served, codec.RequestBudget())


def test_tf_rest_answers_shortest_floats_nan_bare_and_b64_strings():
    outputs = {"y": np.array([[0.1, np.nan], [np.inf, -np.inf]], dtype=np.float32)}
    text = tfrest.dumps(tfrest.predict_body(outputs, row_format=True)).decode()
    assert text == '{"predictions":[[0.1,NaN],[Infinity,-Infinity]]}'
    both = {"p": np.array([1, 2**60], dtype=np.int64), "label_bytes": np.array([b"\xff", b"a"], dtype=object)}
    rows = tfrest.predict_body(both, row_format=True)["predictions"]
    assert rows[1] == {"p": 2**60, "label_bytes": {"b64": "YQ=="}}
    assert tfrest.predict_body({"t": np.array([b"caf\xc3\xa9", b"\xff"], dtype=object)}, row_format=False) == {
        "outputs": ["café", {"b64": "/w=="}]}
