"""Streaming conversion of BPR records into .npy tensor files (behind `navi convert`)."""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from navi.bprfile import Record
from navi.converter import BprConverter
from navi.errors import DecodeError
from navi.npystream import NpyAppender, NpyRowWriter
from navi.segdense import DenseLayout

# A block is flushed at this many input bytes too, so a few huge BPRs cannot
# pile up in memory.
_CHUNK_BYTES = 64 << 20
# Rows are converted through a buffer of about this size and written from it:
# small enough to stay in cache between the conversion and the write.
_BUFFER_BYTES = 4 << 20
#: the running candidate totals, one per converted BPR
BATCH_ENDS = "batch_ends"
#: suffix of a file being written; renamed away when the conversion completes
PARTIAL_SUFFIX = ".partial"


class ConvertError(Exception):
    """A record could not be converted; names its record number."""


@dataclass
class ConvertSummary:
    """What a conversion did."""

    bprs: int = 0
    rows: int = 0
    skipped: int = 0


class _BufferedRows:
    """Converts validated BPRs a few at a time into one reused buffer and hands it to ``sink``.

    Converting a whole block into arrays of its own would take ~700 MB for 256
    home BPRs, every page of it faulted in fresh and written to memory before
    it reaches the file; a buffer of a few MB is reused from cache.
    ``sink(buffer, rows, row_start)`` writes the buffer's first ``rows`` rows
    as output rows ``row_start``...
    """

    def __init__(self, converter: BprConverter, layout: DenseLayout,
                 sink: Callable[[dict[str, np.ndarray], int, int], None], buffer_bytes: int):
        self._converter = converter
        self._layout = layout
        self._sink = sink
        self._buffer_rows = max(1, buffer_bytes // max(1, layout.row_bytes))
        self._buffer: dict[str, np.ndarray] = layout.allocate(self._buffer_rows)

    def write(self, payloads: list, rows: np.ndarray, row_start: int) -> None:
        """Convert ``payloads`` (``rows`` from ``count_rows``) into output rows from ``row_start``."""
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
            self._sink(self._buffer, taken, row_start)
            row_start += taken
            start = end


# One per worker process of a parallel conversion, set by _start_worker.
_worker_rows: _BufferedRows | None = None


def _start_worker(layout: DenseLayout, paths: dict[str, Path], buffer_bytes: int) -> None:
    """Process-pool initializer: the worker's converter, buffer and file descriptors, built once."""
    global _worker_rows
    writers = {t.name: NpyRowWriter(paths[t.name], t.dtype, (t.width,)) for t in layout.tensors}

    def write_in_place(buffer: dict[str, np.ndarray], rows: int, row_start: int) -> None:
        for name, writer in writers.items():
            writer.write_at(buffer[name][:rows], row_start)

    _worker_rows = _BufferedRows(BprConverter(layout), layout, write_in_place, buffer_bytes)


def _convert_block(payloads: list[bytes], rows: np.ndarray, row_start: int) -> None:
    """A worker's task: convert one validated block into its reserved rows."""
    _worker_rows.write(payloads, rows, row_start)


class _ParallelRows:
    """Hands validated blocks to ``jobs`` worker processes that write their rows in place.

    At most ``2 * jobs`` blocks are in flight, so each worker has its next
    block queued while memory stays bounded; a worker's error is raised here
    when its block is waited for.
    """

    def __init__(self, layout: DenseLayout, paths: dict[str, Path], jobs: int, buffer_bytes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter, safe whatever threads the parent runs
        self._pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(layout, paths, buffer_bytes))
        self._in_flight: deque = deque()
        self._max_in_flight = 2 * jobs

    def write(self, payloads: list, rows: np.ndarray, row_start: int) -> None:
        while len(self._in_flight) >= self._max_in_flight:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(_convert_block, payloads, rows, row_start))

    def finish(self) -> None:
        """Wait for every block; raises the first worker error."""
        try:
            while self._in_flight:
                self._in_flight.popleft().result()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers, dropping blocks not started."""
        for future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def output_paths(layout: DenseLayout, out_dir: Path) -> dict[str, Path]:
    """Tensor name (and ``batch_ends``) -> its .npy path in ``out_dir``."""
    names = [t.name for t in layout.tensors] + [BATCH_ENDS]
    return {name: Path(out_dir) / f"{name}.npy" for name in names}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def convert_stream(records: Iterable[Record], layout: DenseLayout, out_dir: Path, *, skip_invalid: bool = False,
                   chunk_bprs: int = 256, progress: bool = False,
                   buffer_bytes: int = _BUFFER_BYTES, jobs: int = 1) -> ConvertSummary:
    """Convert ``records`` into ``out_dir``/<tensor>.npy plus batch_ends.npy.

    A bad record raises ConvertError with its number, unless ``skip_invalid``,
    which drops it and counts it in the summary. With ``jobs`` > 1 the blocks
    are converted on that many worker processes, each writing its rows in
    place: the files are byte for byte those of ``jobs=1``. Reading and
    validating (``count_rows``, which fixes every block's place) stay here.

    Every file is written as ``<name>.npy.partial`` and renamed when all are
    complete, batch_ends.npy last: a directory holding batch_ends.npy holds a
    complete conversion. On any error the partial files are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = output_paths(layout, out_dir)
    partial = {name: _partial(path) for name, path in final.items()}
    converter = BprConverter(layout)
    writers = {t.name: NpyAppender(partial[t.name], t.dtype, (t.width,)) for t in layout.tensors}
    ends = NpyAppender(partial[BATCH_ENDS], np.int64)
    if jobs > 1:
        rows_out = _ParallelRows(layout, {t.name: partial[t.name] for t in layout.tensors}, jobs, buffer_bytes)
    else:
        def append(buffer: dict[str, np.ndarray], rows: int, row_start: int) -> None:
            for name, writer in writers.items():
                writer.append(buffer[name][:rows])

        rows_out = _BufferedRows(converter, layout, append, buffer_bytes)
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
        block_rows = int(rows.sum())
        if jobs > 1:
            for writer in writers.values():
                writer.reserve(block_rows)
        rows_out.write(payloads, rows, summary.rows)
        ends.append(summary.rows + np.cumsum(rows))
        summary.rows += block_rows
        summary.bprs += len(block)

    def reject(record: Record, error: str) -> None:
        if not skip_invalid:
            raise ConvertError(f"record {record.number}: {error}")
        summary.skipped += 1

    complete = False
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
        if jobs > 1:
            rows_out.finish()
        for writer in (*writers.values(), ends):
            writer.close()
        complete = True
    finally:
        if not complete:
            if jobs > 1:
                rows_out.close()
            for writer in (*writers.values(), ends):
                writer.close()
        if bar is not None:
            bar.close()
        if complete:
            _publish(partial, final)
        else:
            for path in partial.values():
                path.unlink(missing_ok=True)
    return summary


def _publish(partial: dict[str, Path], final: dict[str, Path]) -> None:
    """Rename the complete files into place; batch_ends.npy goes first out and last in."""
    final[BATCH_ENDS].unlink(missing_ok=True)
    for name, path in partial.items():
        if name != BATCH_ENDS:
            os.replace(path, final[name])
    os.replace(partial[BATCH_ENDS], final[BATCH_ENDS])
