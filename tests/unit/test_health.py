"""The health service's Watch bookkeeping: bounded, and nothing kept for names nobody watches."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from navi.server.health import MAX_WATCHES, HealthService


class _Aborted(Exception):
    pass


class _Call:
    """What Watch uses of grpcio's servicer context: close callbacks and abort."""

    def __init__(self):
        self.on_close = []
        self.status = None

    def add_callback(self, callback):
        self.on_close.append(callback)
        return True

    def abort(self, code, details):
        self.status = (code, details)
        raise _Aborted(details)

    def close(self):
        for callback in self.on_close:
            callback()


def _watch(service: HealthService, name: str):
    call, sent = _Call(), []
    service.Watch(health_pb2.HealthCheckRequest(service=name), call, sent.append)
    return call, sent


def test_watching_many_names_then_closing_leaves_nothing_behind():
    service = HealthService(experimental_non_blocking=True)
    service.set("dense", health_pb2.HealthCheckResponse.SERVING)
    calls = [_watch(service, f"random-{i}")[0] for i in range(500)]
    kept, sent = _watch(service, "dense")
    assert sent == [health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)]
    for call in calls:
        call.close()
    assert set(service._send_response_callbacks) == {"dense"}
    kept.close()
    assert service._send_response_callbacks == {}
    assert sent[-1] is None  # the stream was told to end


def test_watches_past_the_bound_are_refused_until_one_closes():
    service = HealthService(experimental_non_blocking=True)
    calls = [_watch(service, "")[0] for _ in range(MAX_WATCHES)]
    with pytest.raises(_Aborted):
        _watch(service, "")
    calls.pop().close()
    calls[0].close()
    calls[0].close()  # a second close of the same stream frees nothing more
    _watch(service, "")
    _watch(service, "")
    refused = _Call()
    with pytest.raises(_Aborted):
        service.Watch(health_pb2.HealthCheckRequest(service=""), refused, lambda response: None)
    assert refused.status[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
