"""BprConverter: serialized BatchPredictionRequests -> the dense tensors of a layout.

The data plane calls ``count_rows`` on each request as it arrives (validation
and row count, so a malformed request fails alone with INVALID_ARGUMENT) and
``convert_into`` once per batch, straight into the batch's preallocated
arrays. Both run the compiled decoder without the GIL.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from navi._fast import BprDecoder
from navi.segdense import DenseLayout

# A candidate is at least one byte on the wire but tens of KB dense: this bound
# keeps a small malicious request from forcing a huge allocation.
DEFAULT_MAX_ROWS_PER_REQUEST = 10_000


class BprConverter:
    """Decodes BPR payloads into ``layout``'s tensors (continuous, binary, ...)."""

    def __init__(self, layout: DenseLayout, max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST,
                 report_continuous_ids: Sequence[int] = (), report_discrete_ids: Sequence[int] = (),
                 report_bounds: Sequence[float] = ()):
        """``report_*_ids``: features whose values each conversion can count
        (``new_feature_counts``) into buckets with upper bounds ``report_bounds``."""
        self.layout = layout
        self.max_rows_per_request = max_rows_per_request
        self._decoder = BprDecoder(layout, report_continuous_ids, report_discrete_ids, report_bounds)
        self._report_shape = (self._decoder.n_report_rows, len(self._decoder.report_bounds_tuple) + 1)
        self._embedding_names = [t.name for t in layout.tensors[3:]]

    @property
    def reported_feature_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(continuous ids, discrete ids) reported, sorted: the rows of ``new_feature_counts``, in order."""
        return self._decoder.reported_continuous_ids, self._decoder.reported_discrete_ids

    def new_feature_counts(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Zeroed (counts, sums) for one ``convert_into`` to count into; None when nothing is reported.

        counts: int64 [reported ids, buckets + 1] (the last column +Inf),
        sums: float64 [reported ids]; rows as ``reported_feature_ids``.
        """
        if not self._report_shape[0]:
            return None
        return np.zeros(self._report_shape, dtype=np.int64), np.zeros(self._report_shape[0], dtype=np.float64)

    def count_rows(self, payloads: Sequence[bytes]) -> np.ndarray:
        """Validate each payload; return its candidate count (int64 array).

        Raises navi.errors.DecodeError naming the payload, byte offset and
        what was being read.
        """
        return self._decoder.count_rows(payloads, self.max_rows_per_request)

    def convert_into(self, payloads: Sequence[bytes], out: dict[str, np.ndarray], row_start: int = 0,
                     feature_counts: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        """Write the payloads' rows into ``out`` from ``row_start``; returns rows written.

        ``out`` maps every layout tensor name to a C-contiguous [rows, width]
        array (``layout.allocate`` makes them); every cell of the written rows
        is set, so the arrays need no initialisation. ``feature_counts``
        (from ``new_feature_counts``): the reported features' values are
        counted into it in the same pass; after an error, discard it.
        """
        counts, sums = feature_counts if feature_counts is not None else (None, None)
        return self._decoder.decode_into(
            payloads,
            out["continuous"],
            out["binary"],
            out["discrete"],
            [out[name] for name in self._embedding_names],
            row_start,
            counts,
            sums,
        )

    def convert(self, payloads: Sequence[bytes], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Decode ``payloads`` into freshly allocated arrays (one row per candidate)."""
        if rows is None:
            rows = self.count_rows(payloads)
        out = self.layout.allocate(int(np.sum(rows)))
        self.convert_into(payloads, out)
        return out
