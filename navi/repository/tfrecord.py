"""TFRecord framing, read and written without TensorFlow.

Each record is ``u64 length | u32 masked_crc32c(length) | data |
u32 masked_crc32c(data)``, little-endian. Both checksums are verified, so a
truncated or corrupt warmup file fails the load with a clear message instead
of feeding garbage to the model.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Iterator

import numba
import numpy as np


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[i] = crc
    return table


_TABLE = _crc32c_table()


@numba.njit(cache=True, nogil=True)
def _crc32c_kernel(data: np.ndarray, table: np.ndarray) -> np.uint32:
    crc = np.uint32(0xFFFFFFFF)
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    return int(_crc32c_kernel(np.frombuffer(data, dtype=np.uint8), _TABLE))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """The file is not well-formed TFRecord data."""


def read_records(path: Path, limit: int | None = None) -> Iterator[bytes]:
    """Yield the records of the TFRecord file at ``path`` (at most ``limit``)."""
    with open(path, "rb") as f:
        count = 0
        while limit is None or count < limit:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: truncated header of record {count}")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(f"{path}: bad length checksum of record {count}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: record {count} is truncated")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}: bad data checksum of record {count}")
            yield data
            count += 1


def write_records(path: Path, records: Iterable[bytes]) -> None:
    """Write ``records`` to ``path`` as a TFRecord file."""
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length)
            f.write(struct.pack("<I", masked_crc32c(length)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))
