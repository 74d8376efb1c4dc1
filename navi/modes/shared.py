"""What both modes share: writing request rows into a batch buffer, describing an input, the model runner's type."""
from __future__ import annotations

from typing import Callable

import numpy as np

from navi._fast.kernels import cast_into as _kernel_cast_into
from navi.dtypes import feeds
from navi.plugins.base import TensorSpec

STRING = np.dtype(object)

#: runs the model on merged feeds: (feeds, output names) -> outputs (ServedModel._run_model)
RunModel = Callable[[dict, tuple], dict]


def _numpy_cast_into(src: np.ndarray, dst: np.ndarray, row_start: int) -> None:
    """Copy ``src`` into ``dst[row_start:row_start+len(src)]`` converting dtype."""
    dst[row_start : row_start + src.shape[0]] = src


def cast_into(src: np.ndarray, dst: np.ndarray, row_start: int) -> None:
    """Write request rows ``src`` into the batch buffer ``dst`` at ``row_start``.

    Numeric arrays go through the Numba kernel (one pass, converts dtype);
    strings and anything the kernel does not take use numpy assignment.
    """
    if dst.dtype == STRING or src.dtype.kind not in "biuf" or src.ndim != dst.ndim:
        _numpy_cast_into(src, dst, row_start)
        return
    try:
        _kernel_cast_into(np.ascontiguousarray(src), dst, row_start)
    except (TypeError, ValueError):
        # a dtype pair or layout the kernel was not compiled for
        _numpy_cast_into(src, dst, row_start)


#: the one dtype rule (navi.dtypes), under the name the pipeline's callers know
castable = feeds


def describe(spec: TensorSpec) -> str:
    """``name (dtype [dims])`` of an input, for error messages."""
    dims = ", ".join("?" if d < 0 else str(d) for d in spec.shape)
    return f"{spec.name} ({spec.dtype.name} [{dims}])"
