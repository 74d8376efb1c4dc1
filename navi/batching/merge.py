"""Cut a batch's outputs back into each request's rows."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def row_offsets(rows: Sequence[int]) -> np.ndarray:
    """Start offsets of each request in the batch, plus the total at the end."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.asarray(rows, dtype=np.int64), out=offsets[1:])
    return offsets


def split_rows(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Split every output along its first axis by ``rows`` (one dict per request).

    Each piece is a view into the batch output, not a copy. Raises ValueError
    when an output's first axis does not equal ``sum(rows)``.
    """
    offsets = row_offsets(rows)
    total = int(offsets[-1])
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {tuple(array.shape)}; expected first axis {total}"
            )
    return [
        {name: array[offsets[i] : offsets[i + 1]] for name, array in outputs.items()}
        for i in range(len(rows))
    ]
