"""Ray Data entry point: serialized BPRs in a column -> the spec's dense tensors.

Use it with ``Dataset.map_batches``; as a callable class Ray builds it once per
actor, so the spec is parsed and the decoder built once, not per batch::

    ds.map_batches(BprToTensors, fn_constructor_kwargs={"model_dir": "/models/home/1"},
                   batch_format="numpy", batch_size=16, concurrency=8)

Batch format ``numpy``: the decoder writes into C-contiguous numpy arrays, and
Ray turns a 2-D numpy column into a fixed-shape tensor column (one
``[width]`` row per candidate) without a Python object per row or per value;
a BPR column arrives as an object array of ``bytes`` holding the payloads'
exact bytes. Each output row is one candidate, so a batch of B BPRs becomes
sum(candidates) rows: ``candidate`` numbers them within their BPR, and the
``keep`` columns (e.g. a request id) are repeated for each. The tensors are
those of ``navi convert`` for the same BPRs, value for value.

This module imports nothing from Ray: a worker that runs it needs numpy and
navi only.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from navi.converter import BprConverter
from navi.errors import ConfigError, DecodeError
from navi.segdense import DenseLayout, parse_layout, resolve_layout

#: output column numbering each candidate within its BPR (0, 1, ...)
CANDIDATE_COLUMN = "candidate"
ENCODINGS = ("raw", "base64")


def layout_of(model_dir: str | Path | None = None, spec: Any = None, all_config: Any = None) -> DenseLayout:
    """A layout from a version directory, from spec/all_config paths, or from their parsed JSON.

    Pass the parsed JSON (``json.load`` on the driver) when the workers cannot
    read the driver's paths.
    """
    if isinstance(spec, dict) or isinstance(all_config, dict):
        if not (isinstance(spec, dict) and isinstance(all_config, dict)):
            raise ConfigError("spec and all_config go together, both parsed or both paths")
        return parse_layout(spec, all_config)
    return resolve_layout(Path(model_dir) if model_dir is not None else None,
                          Path(spec) if spec is not None else None,
                          Path(all_config) if all_config is not None else None)


class BprToTensors:
    """``map_batches`` transform: the BPRs of ``column`` -> one column per tensor, one row per candidate.

    ``encoding``: ``raw`` (binary column of serialized BPRs) or ``base64``
    (text lines, e.g. from ``ray.data.read_text``). A payload that does not
    decode raises ValueError naming its row in the batch, as ``navi convert``
    stops on a bad record.
    """

    def __init__(self, model_dir: str | Path | None = None, *, spec: Any = None, all_config: Any = None,
                 column: str = "bpr", encoding: str = "raw", keep: Iterable[str] = ()):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
        self.layout = layout_of(model_dir, spec, all_config)
        self.column = column
        self.encoding = encoding
        self.keep = tuple(keep)
        clash = {CANDIDATE_COLUMN, *self.layout.widths} & set(self.keep)
        if clash:
            raise ValueError(f"keep columns {sorted(clash)} would overwrite output columns")
        self._converter = BprConverter(self.layout)

    def _payloads(self, values: np.ndarray) -> list[bytes]:
        if values.dtype.kind == "S":
            # numpy drops a fixed-width bytes value's trailing NULs, and a BPR ends with one
            raise TypeError(f"column {self.column!r} is fixed-width bytes ({values.dtype}), which loses "
                            "trailing zero bytes; give it as a binary (object) column")
        if self.encoding == "raw":
            return [bytes(v) for v in values]
        payloads = []
        for index, value in enumerate(values):
            try:
                payloads.append(base64.b64decode(value.strip(), validate=True))
            except (binascii.Error, ValueError, TypeError) as exc:
                raise ValueError(f"row {index} of column {self.column!r}: not valid base64 ({exc})") from None
        return payloads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Convert one batch (``batch_format="numpy"``)."""
        payloads = self._payloads(np.asarray(batch[self.column]))
        try:
            rows = self._converter.count_rows(payloads)
        except DecodeError as exc:  # it names the payload: its row in this batch
            raise ValueError(f"column {self.column!r}: {exc}") from None
        out = self._converter.convert(payloads, rows)
        total = int(rows.sum())
        starts = np.repeat(np.cumsum(rows) - rows, rows)
        out[CANDIDATE_COLUMN] = np.arange(total, dtype=np.int64) - starts
        for name in self.keep:
            out[name] = np.repeat(np.asarray(batch[name]), rows, axis=0)
        return out
