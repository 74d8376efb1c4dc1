"""Numba kernels for the dtype conversions of the data plane.

Each kernel has a plain-Python twin (``*_py``) that the tests compare it with.
Signatures are explicit, so every kernel is compiled when this module is
imported (at start-up or model load), never on a live request; ``cache=True``
keeps later start-ups quick.
"""
from __future__ import annotations

import numba
import numpy as np

# (source dtype, destination dtype) pairs the data plane converts: the same-kind
# pairs requests may send (navi.dtypes.feeds: widening, or the float64 ->
# float32 narrowing TF Serving clients commonly need), and the BPR converter's
# int64 layout tensors into float model inputs (a layout's dtype is the model's
# to choose, not a client's).
CAST_PAIRS = (
    ("float64", "float32"),
    ("float32", "float64"),
    ("float32", "float32"),
    ("float64", "float64"),
    ("int32", "int64"),
    ("int64", "int32"),
    ("int64", "int64"),
    ("int32", "int32"),
    ("int64", "float32"),
    ("int64", "float64"),
)


def _cast_rows_py(src, dst, row_start):
    """Copy the 2-D ``src`` into ``dst[row_start:row_start + len(src)]``, converting dtype."""
    rows, cols = src.shape
    for i in range(rows):
        for j in range(cols):
            dst[row_start + i, j] = src[i, j]


def _signatures():
    sigs = []
    for src, dst in CAST_PAIRS:
        s = numba.from_dtype(np.dtype(src))
        d = numba.from_dtype(np.dtype(dst))
        sigs.append(numba.void(s[:, ::1], d[:, ::1], numba.int64))
        # Request tensors decoded by the server are read-only views of the
        # message bytes (np.frombuffer); without this variant each call misses
        # dispatch (~0.4 ms) and falls back to numpy.
        sigs.append(numba.void(numba.types.Array(s, 2, "C", readonly=True), d[:, ::1], numba.int64))
    return sigs


_cast_rows = numba.njit(_signatures(), nogil=True, cache=True, boundscheck=False)(_cast_rows_py)
_SUPPORTED = {(np.dtype(s), np.dtype(d)) for s, d in CAST_PAIRS}


def cast_into(src: np.ndarray, dst: np.ndarray, row_start: int = 0) -> None:
    """Write ``src`` ([n, ...]) into ``dst[row_start:row_start+n]`` converting dtype.

    Both arrays are viewed as 2-D (rows by the product of the other axes);
    ``dst`` must be C-contiguous. Falls back to numpy assignment for pairs the
    kernels do not cover. Releases the GIL while copying.
    """
    n = src.shape[0]
    if row_start < 0 or row_start + n > dst.shape[0]:
        raise ValueError(f"rows {row_start}..{row_start + n} do not fit in {dst.shape[0]}")
    if n == 0:
        return
    src2 = np.ascontiguousarray(src).reshape(n, -1)
    dst2 = dst.reshape(dst.shape[0], -1)
    if src2.shape[1] != dst2.shape[1]:
        raise ValueError(f"row widths differ: {src2.shape[1]} vs {dst2.shape[1]}")
    if (src2.dtype, dst2.dtype) in _SUPPORTED and dst2.flags.c_contiguous:
        _cast_rows(src2, dst2, row_start)
    else:
        dst2[row_start:row_start + n] = src2
