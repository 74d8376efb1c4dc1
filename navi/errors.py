"""Error types shared by every layer, with a transport-neutral status code.

The gRPC edge (``navi.server.status``) is the only place these codes become
``grpc.StatusCode`` values; everything below it raises ``NaviError`` subclasses.
"""
from __future__ import annotations

import enum
import logging
import threading
import time

#: longest client-supplied string echoed whole in an error message (characters)
ECHO_MAX_CHARS = 80


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


def quote(value: object, max_chars: int = ECHO_MAX_CHARS) -> str:
    """``repr`` of a client-supplied value for an error message, at most about ``max_chars`` long.

    Every string a client sends (a model name, a label, an input name) is
    echoed through this: a 4,000-character name must not make a status
    message past gRPC's metadata limit (the client would then see
    RESOURCE_EXHAUSTED "Stream removed" instead of the error).
    """
    text = value if isinstance(value, (str, bytes)) else str(value)
    if len(text) <= max_chars:
        return repr(text)
    return f"{text[:max_chars]!r}... ({len(text)} characters)"


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


class RequestTooLarge(NaviError):
    """One request exceeds a per-request bound (rows, decoded bytes); the message names the flag."""

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


class LogLimiter:
    """At most one log record per ``period_s`` per kind; the records held back are counted.

    For tracebacks of unexpected errors: a client that can trigger one could
    otherwise fill the disk with them. ``log(logger, kind, msg, *args,
    exc_info=..., level=ERROR)`` logs the first of each kind, then one per
    period, each saying how many of that kind were suppressed since the last.
    """

    def __init__(self, period_s: float = 10.0, clock=time.monotonic):
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}  # kind -> (last logged at, suppressed since)

    def log(self, logger: logging.Logger, kind: str, msg: str, *args, exc_info=None,
            level: int = logging.ERROR) -> bool:
        """Log ``msg`` for ``kind`` unless one was logged less than ``period_s`` ago; True if logged."""
        now_s = self._clock()
        with self._lock:
            last_s, suppressed = self._state.get(kind, (None, 0))
            if last_s is not None and now_s - last_s < self._period_s:
                self._state[kind] = (last_s, suppressed + 1)
                return False
            if len(self._state) > 1000:  # kinds are code paths; bound them anyway
                self._state.clear()
            self._state[kind] = (now_s, 0)
        if suppressed:
            msg = f"{msg} ({suppressed} more like it in the last {self._period_s:g} s not logged)"
        logger.log(level, msg, *args, exc_info=exc_info)
        return True
