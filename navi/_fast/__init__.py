"""Hot paths: the compiled BPR decoder and Numba dtype kernels.

``BprDecoder`` is the Cython decoder; with ``NAVI_PURE_PYTHON=1`` the
plain-Python reference twin is used instead (tests only: it is orders of
magnitude slower). A missing compiled extension is an install error, reported
here rather than silently served at reference speed.
"""
from __future__ import annotations

import os

from navi._fast import _bpr_ref

PURE_PYTHON = os.environ.get("NAVI_PURE_PYTHON") == "1"

if PURE_PYTHON:
    BprDecoder = _bpr_ref.BprDecoder
else:
    try:
        from navi._fast._bpr import BprDecoder
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise ImportError(
            "navi's compiled decoder navi._fast._bpr is missing: reinstall with "
            "`pip install --no-build-isolation -e .` (needs a C compiler and Cython), "
            "or set NAVI_PURE_PYTHON=1 to run the slow reference decoder"
        ) from exc

__all__ = ["BprDecoder", "PURE_PYTHON"]
