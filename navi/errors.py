"""Error types shared by every layer, with a transport-neutral status code.

The gRPC edge (``navi.server.status``) is the only place these codes become
``grpc.StatusCode`` values; everything below it raises ``NaviError`` subclasses.
"""
from __future__ import annotations

import enum


class Code(enum.Enum):
    """Transport-neutral status codes (names follow gRPC / TF Serving)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class NaviError(Exception):
    """Base class: an error with a status code and a message meant for the caller."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(NaviError):
    """The request is malformed: missing or extra input, wrong dtype or shape."""

    code = Code.INVALID_ARGUMENT


class DecodeError(InvalidInput):
    """A serialized BatchPredictionRequest could not be decoded.

    ``offset`` is the byte offset in the payload where decoding failed and
    ``what`` names what was being read there.
    """

    def __init__(self, message: str, offset: int = -1, what: str = ""):
        detail = message
        if what:
            detail = f"{message} while reading {what}"
        if offset >= 0:
            detail = f"{detail} at byte {offset}"
        super().__init__(detail)
        self.offset = offset
        self.what = what
        self.reason = message


class ModelNotFound(NaviError):
    """No model of that name is configured."""

    code = Code.NOT_FOUND


class ModelVersionNotFound(NaviError):
    """The model exists but the requested version or label is not loaded."""

    code = Code.NOT_FOUND


class ModelNotReady(NaviError):
    """The model is configured but no version has finished loading yet."""

    code = Code.UNAVAILABLE


class Overloaded(NaviError):
    """The request was shed: queue full, or it waited past the drop limit."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(NaviError):
    """The caller's deadline passed before the request could run."""

    code = Code.DEADLINE_EXCEEDED


class Unimplemented(NaviError):
    """The RPC or feature is not supported by this model or runtime."""

    code = Code.UNIMPLEMENTED


class RuntimeFailure(NaviError):
    """The runtime failed while running a batch."""

    code = Code.INTERNAL


class ConfigError(Exception):
    """A configuration problem that stops start-up; names the file and key."""

    def __init__(self, message: str, source: str = "", key: str = ""):
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.key = key
        self.reason = message
