"""Reading files of serialized BatchPredictionRequests.

Two formats, as users have them: base64 text, one BPR per line (the
original's format), and raw records, each a u32 little-endian length then that
many bytes. ``auto`` tells them apart by the first four bytes: a raw file
starts with a length whose high byte is below any base64 character.
"""
from __future__ import annotations

import base64
import binascii
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterator

FORMATS = ("auto", "base64", "raw")
# Largest raw record accepted; a corrupt length must not become a huge read.
MAX_RECORD_BYTES = 1 << 30


@dataclass
class Record:
    """One input record: its 1-based number, its bytes, or the error that spoiled it."""

    number: int
    payload: bytes | None
    error: str = ""
    size: int = 0  # bytes the record took in the file


def open_input(path: str) -> BinaryIO:
    """A binary stream for ``path`` (``-`` = stdin)."""
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def detect_format(stream: BinaryIO) -> str:
    """'raw' or 'base64', judged from the first bytes (the stream is not consumed)."""
    head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
    if len(head) < 4:
        return "base64"
    return "raw" if head[3] < 0x2B else "base64"


def iter_records(stream: BinaryIO, fmt: str = "auto") -> Iterator[Record]:
    """Yield every record of ``stream``; a bad one is yielded with ``error`` set."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(stream)
    if fmt == "raw":
        yield from _iter_raw(stream)
    else:
        yield from _iter_base64(stream)


def _iter_base64(stream: BinaryIO) -> Iterator[Record]:
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            yield Record(number, base64.b64decode(text, validate=True), size=len(line))
        except (binascii.Error, ValueError) as exc:
            yield Record(number, None, f"not valid base64 ({exc})", size=len(line))


def _iter_raw(stream: BinaryIO) -> Iterator[Record]:
    number = 0
    while True:
        header = stream.read(4)
        if not header:
            return
        number += 1
        if len(header) < 4:
            yield Record(number, None, "truncated length prefix", size=len(header))
            return
        (length,) = struct.unpack("<I", header)
        if length > MAX_RECORD_BYTES:
            # The framing is lost: nothing after this point can be trusted.
            yield Record(number, None, f"record length {length} exceeds {MAX_RECORD_BYTES}", size=4)
            return
        payload = stream.read(length)
        if len(payload) < length:
            yield Record(number, None, f"truncated: {len(payload)} of {length} bytes", size=4 + len(payload))
            return
        yield Record(number, payload, size=4 + length)


def write_raw(stream: BinaryIO, payloads) -> None:
    """Write payloads as u32-LE length-prefixed records."""
    for payload in payloads:
        stream.write(struct.pack("<I", len(payload)))
        stream.write(payload)


def write_base64(stream: BinaryIO, payloads) -> None:
    """Write payloads as base64 lines."""
    for payload in payloads:
        stream.write(base64.b64encode(payload) + b"\n")
