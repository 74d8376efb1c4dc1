"""Streaming conversion of BPR records into .npy tensor files (behind `navi convert`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from navi.bprfile import Record
from navi.converter import BprConverter
from navi.errors import DecodeError
from navi.npystream import NpyAppender
from navi.segdense import DenseLayout

# A block is flushed at this many input bytes too, so a few huge BPRs cannot
# pile up in memory.
_CHUNK_BYTES = 64 << 20
# Rows are converted through a buffer of about this size and written from it:
# small enough to stay in cache between the conversion and the write.
_BUFFER_BYTES = 4 << 20


class ConvertError(Exception):
    """A record could not be converted; names its record number."""


@dataclass
class ConvertSummary:
    """What a conversion did."""

    bprs: int = 0
    rows: int = 0
    skipped: int = 0


class _BufferedRows:
    """Converts validated BPRs a few at a time into one reused buffer and appends it to the writers.

    Converting a whole block into arrays of its own would take ~700 MB for 256
    home BPRs, every page of it faulted in fresh and written to memory before
    it reaches the file; a buffer of a few MB is reused from cache.
    """

    def __init__(self, converter: BprConverter, layout: DenseLayout, writers: dict[str, NpyAppender],
                 buffer_bytes: int):
        self._converter = converter
        self._layout = layout
        self._writers = writers
        self._buffer_rows = max(1, buffer_bytes // max(1, layout.row_bytes))
        self._buffer: dict[str, np.ndarray] = layout.allocate(self._buffer_rows)

    def write(self, payloads: list, rows: np.ndarray) -> None:
        """Convert ``payloads`` (``rows`` from ``count_rows``) and append their rows."""
        start = 0
        while start < len(payloads):
            end, taken = start + 1, int(rows[start])
            while end < len(payloads) and taken + int(rows[end]) <= self._buffer_rows:
                taken += int(rows[end])
                end += 1
            if taken > self._buffer_rows:
                # one BPR larger than the buffer: grow to it (count_rows checked
                # its row count against its bytes)
                self._buffer_rows = taken
                self._buffer = self._layout.allocate(taken)
            self._converter.convert_into(payloads[start:end], self._buffer)
            for name, writer in self._writers.items():
                writer.append(self._buffer[name][:taken])
            start = end


def convert_stream(records: Iterable[Record], layout: DenseLayout, out_dir: Path, *, skip_invalid: bool = False,
                   chunk_bprs: int = 256, progress: bool = False,
                   buffer_bytes: int = _BUFFER_BYTES) -> ConvertSummary:
    """Convert ``records`` into ``out_dir``/<tensor>.npy plus batch_ends.npy.

    A bad record raises ConvertError with its number, unless ``skip_invalid``,
    which drops it and counts it in the summary.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    converter = BprConverter(layout)
    writers = {t.name: NpyAppender(out_dir / f"{t.name}.npy", t.dtype, (t.width,)) for t in layout.tensors}
    rows_out = _BufferedRows(converter, layout, writers, buffer_bytes)
    ends = NpyAppender(out_dir / "batch_ends.npy", np.int64)
    summary = ConvertSummary()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, desc="convert")

    def flush(block: list[Record]) -> None:
        if not block:
            return
        payloads = [r.payload for r in block]
        try:
            rows = converter.count_rows(payloads)
        except DecodeError:
            rows = None
        if rows is None:
            # find the bad record(s) one by one
            good, good_rows = [], []
            for record in block:
                try:
                    good_rows.append(int(converter.count_rows([record.payload])[0]))
                    good.append(record)
                except DecodeError as exc:
                    reject(record, str(exc).replace("payload 0: ", ""))
            block, payloads, rows = good, [r.payload for r in good], np.asarray(good_rows, dtype=np.int64)
        if not block:
            return
        rows_out.write(payloads, rows)
        ends.append(summary.rows + np.cumsum(rows))
        summary.rows += int(rows.sum())
        summary.bprs += len(block)

    def reject(record: Record, error: str) -> None:
        if not skip_invalid:
            raise ConvertError(f"record {record.number}: {error}")
        summary.skipped += 1

    try:
        block: list[Record] = []
        block_bytes = 0
        for record in records:
            if bar is not None:
                bar.update(record.size)
            if record.payload is None:
                flush(block)
                block, block_bytes = [], 0
                reject(record, record.error)
                continue
            block.append(record)
            block_bytes += len(record.payload)
            if len(block) >= chunk_bprs or block_bytes >= _CHUNK_BYTES:
                flush(block)
                block, block_bytes = [], 0
        flush(block)
    finally:
        for writer in (*writers.values(), ends):
            writer.close()
        if bar is not None:
            bar.close()
    return summary
