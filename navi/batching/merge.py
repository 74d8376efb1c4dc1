"""Cut a batch's outputs back into each request's rows."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def split_rows(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Split every output along its first axis by ``rows`` (one dict per request).

    Each piece is a view into the batch output, not a copy. Raises ValueError
    when an output's first axis does not equal ``sum(rows)``.
    """
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {tuple(array.shape)}; expected first axis {total}"
            )
    if len(rows) == 1:
        return [dict(outputs)]
    # plain ints: for the few requests of a batch this beats a numpy cumsum
    pieces = []
    start = 0
    for count in rows:
        end = start + count
        pieces.append({name: array[start:end] for name, array in outputs.items()})
        start = end
    return pieces
