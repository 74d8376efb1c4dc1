"""Writing .npy files row block by row block, for outputs larger than memory.

The header is written first with room reserved for any row count and
rewritten with the final shape on close, so a reader sees a normal .npy file.
Rows may also be written in place by other processes (``NpyRowWriter``) at
the rows the appender ``reserve``d for them: the header's fixed size
puts row ``i`` at a byte offset known before any row is written.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"
# magic (8) + header length (2) + header text: 128 bytes leave room for a
# 20-digit row count and any width, and keep the data 64-byte aligned.
_HEADER_TOTAL = 128


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (
        np.lib.format.dtype_to_descr(dtype), shape,
    )
    room = _HEADER_TOTAL - len(_MAGIC) - 2 - 1
    if len(text) > room:
        raise ValueError(f"npy header for shape {shape} is too long")
    text = text.ljust(room) + "\n"
    return _MAGIC + struct.pack("<H", len(text)) + text.encode("latin1")


class NpyAppender:
    """Appends [n, *row_shape] blocks of one dtype to a .npy file."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        """Write ``block`` (its leading axis is rows) after what is there."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block rows have shape {block.shape[1:]}, expected {self.row_shape}")
        if block.size:
            self._file.write(memoryview(block).cast("B"))
        self.rows += block.shape[0]

    def reserve(self, rows: int) -> int:
        """Count ``rows`` rows that an ``NpyRowWriter`` writes; returns the first one's index."""
        start = self.rows
        self.rows += rows
        return start

    def close(self) -> None:
        """Rewrite the header with the final shape and close the file."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NpyRowWriter:
    """Writes row blocks at given row indexes of a .npy file an ``NpyAppender`` created.

    Positional writes (``pwrite``) on a descriptor of its own, so processes
    writing disjoint rows of one file need no coordination.
    """

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self._row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self._fd = os.open(self.path, os.O_WRONLY)

    def write_at(self, block: np.ndarray, row_start: int) -> None:
        """Write ``block`` (its leading axis is rows) as rows ``row_start``, ``row_start + 1``, ..."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block rows have shape {block.shape[1:]}, expected {self.row_shape}")
        data = memoryview(block).cast("B")
        offset = _HEADER_TOTAL + row_start * self._row_bytes
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        """Close the descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
