"""What both gRPC servicers share: the caller's deadline and answer compression."""
from __future__ import annotations

import time

import grpc


def deadline_from(context) -> float | None:
    """The caller's gRPC deadline as an absolute ``time.monotonic()`` value, or None."""
    remaining_s = context.time_remaining()
    if remaining_s is None:
        return None
    return time.monotonic() + remaining_s


#: answers at least this big are gzip-compressed (when the client accepts gzip);
#: below it, compressing costs more CPU than the bytes saved on loopback/LAN.
COMPRESS_MIN_BYTES = 4096


def compress_if_large(context, response) -> None:
    """Ask gRPC to gzip ``response`` (a message or its bytes) when it is at least ``COMPRESS_MIN_BYTES``."""
    size = len(response) if isinstance(response, bytes) else response.ByteSize()
    if size >= COMPRESS_MIN_BYTES:
        context.set_compression(grpc.Compression.Gzip)


__all__ = ["COMPRESS_MIN_BYTES", "compress_if_large", "deadline_from"]
