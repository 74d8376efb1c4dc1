"""The only place where navi errors become gRPC status codes.

Servicer methods are wrapped with ``@grpc_errors``: a ``NaviError`` is answered
with its code and message; anything else is a bug or a runtime crash and is
answered INTERNAL, with the traceback logged here (never sent to the client).
"""
from __future__ import annotations

import functools
from concurrent import futures
import logging
from typing import Callable

import grpc

from navi.errors import Code, NaviError

log = logging.getLogger(__name__)

GRPC_CODE: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}

# TF Serving's StatusProto uses tensorflow.error.Code, numbered as gRPC codes.
TF_ERROR_CODE: dict[Code, int] = {code: GRPC_CODE[code].value[0] for code in Code}


def grpc_code_of(error: NaviError) -> grpc.StatusCode:
    """The gRPC status code answering ``error``."""
    return GRPC_CODE.get(error.code, grpc.StatusCode.INTERNAL)


def grpc_errors(method: Callable) -> Callable:
    """Decorate a sync servicer method: map exceptions to a gRPC status.

    ``context.abort`` itself raises, which ends the RPC; it is called outside
    the ``except`` blocks' own try so that it is never caught here again.
    """

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except futures.CancelledError:
            # the caller went away (or its deadline passed) while queued
            code, details = grpc.StatusCode.CANCELLED, "request cancelled"
        except NaviError as error:
            code, details = grpc_code_of(error), error.message
            if code is grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", method.__name__, details, exc_info=error)
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            log.exception("%s crashed", method.__name__)
            code, details = grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"
        context.abort(code, details)

    return wrapper
