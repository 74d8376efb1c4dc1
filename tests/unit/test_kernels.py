"""Numba cast kernels against their plain-Python twin."""
from __future__ import annotations

import numpy as np
import pytest

from navi._fast import kernels


@pytest.mark.parametrize("src, dst", kernels.CAST_PAIRS)
def test_cast_into_matches_python_twin(src, dst):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((5, 3)) * 1000).astype(src)
    jitted = np.zeros((9, 3), dtype=dst)
    plain = np.zeros((9, 3), dtype=dst)
    kernels.cast_into(data, jitted, 2)
    kernels._cast_rows_py(data, plain, 2)
    np.testing.assert_array_equal(jitted, plain)
    np.testing.assert_array_equal(jitted[2:7], data.astype(dst))


def test_cast_into_reshapes_and_checks_bounds():
    dst = np.zeros((4, 2, 2), dtype=np.float32)
    kernels.cast_into(np.ones((2, 2, 2), dtype=np.float64), dst, 1)
    assert dst[1:3].sum() == 8 and dst[0].sum() == 0
    with pytest.raises(ValueError, match="do not fit"):
        kernels.cast_into(np.ones((2, 2, 2)), dst, 3)
    with pytest.raises(ValueError, match="widths differ"):
        kernels.cast_into(np.ones((1, 3)), dst, 0)


def test_unsupported_pair_falls_back_to_numpy():
    dst = np.zeros((2, 2), dtype=np.int16)
    kernels.cast_into(np.full((2, 2), 3, dtype=np.int8), dst)
    assert dst.tolist() == [[3, 3], [3, 3]]
    assert not kernels.can_cast(np.int8, np.int16) and kernels.can_cast(np.float64, np.float32)
