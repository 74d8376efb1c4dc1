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
    assert (np.dtype(np.int8), np.dtype(np.int16)) not in kernels._SUPPORTED


def test_compiled_pairs_are_the_rules_pairs_and_the_bpr_layouts():
    """Every pair the one rule (navi.dtypes.feeds) allows between the dtypes clients send has a
    kernel, and every compiled pair is reachable: allowed by the rule, or the BPR converter's
    int64 layout tensors into a float model input."""
    from navi.dtypes import feeds

    served = [np.dtype(t) for t in ("float32", "float64", "int32", "int64")]
    for src in served:
        for dst in served:
            if feeds(src, dst):
                assert (src, dst) in kernels._SUPPORTED, (src, dst)
    for src, dst in kernels._SUPPORTED:
        assert feeds(src, dst) or (src == np.int64 and dst.kind == "f"), (src, dst)
