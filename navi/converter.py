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

    def __init__(self, layout: DenseLayout, max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST):
        self.layout = layout
        self.max_rows_per_request = max_rows_per_request
        self._decoder = BprDecoder(layout)
        self._embedding_names = [t.name for t in layout.tensors[3:]]

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Names of every output tensor, in layout order."""
        return tuple(t.name for t in self.layout.tensors)

    def count_rows(self, payloads: Sequence[bytes]) -> np.ndarray:
        """Validate each payload; return its candidate count (int64 array).

        Raises navi.errors.DecodeError naming the payload, byte offset and
        what was being read.
        """
        return self._decoder.count_rows(payloads, self.max_rows_per_request)

    def convert_into(self, payloads: Sequence[bytes], out: dict[str, np.ndarray], row_start: int = 0) -> int:
        """Write the payloads' rows into ``out`` from ``row_start``; returns rows written.

        ``out`` maps every layout tensor name to a C-contiguous [rows, width]
        array (``layout.allocate`` makes them); every cell of the written rows
        is set, so the arrays need no initialisation.
        """
        return self._decoder.decode_into(
            payloads,
            out["continuous"],
            out["binary"],
            out["discrete"],
            [out[name] for name in self._embedding_names],
            row_start,
        )

    def convert(self, payloads: Sequence[bytes], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Decode ``payloads`` into freshly allocated arrays (one row per candidate)."""
        if rows is None:
            rows = self.count_rows(payloads)
        out = self.layout.allocate(int(np.sum(rows)))
        self.convert_into(payloads, out)
        return out
