"""The only place where navi errors become gRPC status codes and HTTP statuses.

Servicer methods are wrapped with ``@grpc_errors``: a ``NaviError`` is answered
with its code and message; anything else is a bug or a runtime crash and is
answered INTERNAL, with the traceback logged here (never sent to the client),
at most one per ``TRACEBACK_PERIOD_S`` per method and error type (the rest are
counted in the next one: a client able to trigger a crash must not be able to
fill the log). Every status message is cut to ``MAX_DETAILS_CHARS``: gRPC
carries it in a trailer, and one past the peer's metadata limit (8 KiB by
default) reaches the client as RESOURCE_EXHAUSTED "Stream removed" instead.
"""
from __future__ import annotations

import functools
from concurrent import futures
import logging
from typing import Callable

import grpc

from navi.errors import Code, LogLimiter, NaviError, RequestTooLarge

log = logging.getLogger(__name__)

#: longest status message sent (characters); client strings in it are cut shorter (``errors.quote``)
MAX_DETAILS_CHARS = 1024
#: at most one INTERNAL traceback per method and error type per this many seconds
TRACEBACK_PERIOD_S = 10.0

_tracebacks = LogLimiter(TRACEBACK_PERIOD_S)

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


def bounded_details(details: str) -> str:
    """``details`` cut to ``MAX_DETAILS_CHARS``, saying how long it was."""
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return f"{details[:MAX_DETAILS_CHARS]}... (message of {len(details)} characters cut)"


def status_of(error: BaseException, method_name: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC (code, details) answering ``error`` raised by ``method_name``; logs crashes (rate-limited)."""
    if isinstance(error, futures.CancelledError):
        # the caller went away (or its deadline passed) while queued
        return grpc.StatusCode.CANCELLED, "request cancelled"
    if isinstance(error, NaviError):
        code, details = grpc_code_of(error), error.message
        if code is grpc.StatusCode.INTERNAL:
            _tracebacks.log(log, f"{method_name}:{type(error).__name__}", "%s failed: %s",
                            method_name, bounded_details(details), exc_info=error)
        return code, bounded_details(details)
    _tracebacks.log(log, f"{method_name}:{type(error).__name__}", "%s crashed", method_name, exc_info=error)
    return grpc.StatusCode.INTERNAL, bounded_details(f"internal error: {type(error).__name__}: {error}")


#: HTTP status of each code, as TF Serving's REST API and KServe's V2 HTTP answer them
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.INTERNAL: 500,
}


def http_status_of(error: BaseException, route: str) -> tuple[int, str]:
    """The HTTP (status, message) answering ``error`` raised serving ``route``; logs crashes (rate-limited).

    The same rule as ``status_of``: a ``NaviError`` keeps its message, anything
    else is a 500 whose traceback stays in the log. A request over a size
    bound is 413, every other RESOURCE_EXHAUSTED (overload) 429.
    """
    if isinstance(error, futures.CancelledError):
        return 499, "request cancelled"
    if isinstance(error, NaviError):
        status = 413 if isinstance(error, RequestTooLarge) else HTTP_STATUS.get(error.code, 500)
        if status == 500:
            _tracebacks.log(log, f"{route}:{type(error).__name__}", "%s failed: %s",
                            route, bounded_details(error.message), exc_info=error)
        return status, bounded_details(error.message)
    _tracebacks.log(log, f"{route}:{type(error).__name__}", "%s crashed", route, exc_info=error)
    return 500, bounded_details(f"internal error: {type(error).__name__}: {error}")


def grpc_errors(method: Callable) -> Callable:
    """Decorate a sync servicer method: map exceptions to a gRPC status.

    ``context.abort`` itself raises, which ends the RPC; it is called outside
    the ``except`` blocks' own try so that it is never caught here again.
    """

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:  # noqa: BLE001 - the edge: every error gets a status
            code, details = status_of(error, method.__name__)
        context.abort(code, details)

    return wrapper
