"""Per-request bounds and error text: shapes checked before allocation, echoed strings cut, tracebacks rate-limited."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from navi import codec
from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.framework import tensor_pb2, types_pb2
from navi.errors import InvalidInput, LogLimiter, ModelNotFound, RequestTooLarge, quote
from navi.server.status import MAX_DETAILS_CHARS, status_of


def _tensor(dims, dtype=types_pb2.DT_FLOAT, floats=(), strings=(), content=b""):
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend(floats)
    proto.string_val.extend(strings)
    return proto


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**62, 4), (3, -1), (2**31,) * 3])
def test_element_count_refuses_negative_and_int64_overflow(shape):
    with pytest.raises(InvalidInput):
        codec.element_count(shape, "x")


def test_broadcast_is_charged_at_its_expanded_size():
    budget = codec.RequestBudget(1000)
    array = codec.tensor_proto_to_ndarray(_tensor([10, 20], floats=[1.5]), "x", budget=budget)
    assert array.shape == (10, 20) and budget.used == 800
    with pytest.raises(RequestTooLarge, match="--max-request-decoded-bytes"):
        codec.tensor_proto_to_ndarray(_tensor([2**45, 16], floats=[1.5]), "x", budget=budget)


def test_string_broadcast_is_charged_before_it_is_allocated():
    budget = codec.RequestBudget(10_000)
    with pytest.raises(RequestTooLarge):
        codec.tensor_proto_to_ndarray(_tensor([2**45], types_pb2.DT_STRING, strings=[b"abc"]), "s", budget=budget)
    # 2 elements x (8 + 100 bytes): within the bound, and TensorFlow's fill
    array = codec.tensor_proto_to_ndarray(_tensor([2], types_pb2.DT_STRING, strings=[b"a" * 100]), "s",
                                          budget=codec.RequestBudget(216))
    assert array.tolist() == [b"a" * 100] * 2


def test_budget_counts_the_whole_request():
    request = kserve_pb2.ModelInferRequest()
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[4])
        request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    assert set(codec.kserve_request_inputs(request, codec.RequestBudget(32))) == {"a", "b"}
    with pytest.raises(RequestTooLarge, match="'b'"):
        codec.kserve_request_inputs(request, codec.RequestBudget(31))


def test_kserve_bytes_count_from_the_client_allocates_nothing_first():
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[2**40])
    with pytest.raises(InvalidInput, match="end after 1 of"):
        codec.kserve_input_to_ndarray(tensor, b"\x01\0\0\0z")


def test_peek_finds_the_model_without_parsing_tensors():
    request = kserve_pb2.ModelInferRequest(model_name="dense", model_version="7", raw_input_contents=[b"\0" * 1000])
    assert codec.peek_kserve_model(request.SerializeToString()) == ("dense", "7")
    with pytest.raises(InvalidInput, match="malformed"):
        codec.peek_kserve_model(request.SerializeToString()[:-1])


def test_quote_cuts_long_client_strings():
    assert quote("home") == "'home'"
    text = quote("m" * 4000)
    assert len(text) < 120 and "4000 characters" in text


def test_status_details_are_bounded():
    code, details = status_of(ModelNotFound("x" * 30_000), "Predict")
    assert len(details) < MAX_DETAILS_CHARS + 100 and "30000 characters" in details


class _Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self):
        return self.now_s


def test_log_limiter_logs_one_per_period_per_kind_and_counts_the_rest(caplog):
    clock = _Clock()
    limiter = LogLimiter(10.0, clock=clock)
    logger = logging.getLogger("test.limiter")
    with caplog.at_level(logging.ERROR, logger="test.limiter"):
        assert limiter.log(logger, "a", "crash a")
        assert not limiter.log(logger, "a", "crash a")
        assert not limiter.log(logger, "a", "crash a")
        assert limiter.log(logger, "b", "crash b")  # another kind has its own period
        clock.now_s = 10.0
        assert limiter.log(logger, "a", "crash a")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["crash a", "crash b", "crash a (2 more like it in the last 10 s not logged)"]
