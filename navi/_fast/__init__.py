"""Hot paths: the compiled BPR decoder, the PredictRequest string scanner and top-level peek,
the KServe BYTES splitter and Numba dtype kernels.

``BprDecoder`` is the Cython decoder and ``split_string_values`` the Cython
scanner; with ``NAVI_PURE_PYTHON=1`` the plain-Python reference twins are used instead (tests only: it is orders of
magnitude slower). A missing compiled extension is an install error, reported
here rather than silently served at reference speed.
"""
from __future__ import annotations

import os

from navi._fast import _bpr_ref, _pbscan_ref

PURE_PYTHON = os.environ.get("NAVI_PURE_PYTHON") == "1"

if PURE_PYTHON:
    BprDecoder = _bpr_ref.BprDecoder
    split_string_values = _pbscan_ref.split_string_values
    split_length_prefixed = _pbscan_ref.split_length_prefixed
    top_level_records = _pbscan_ref.top_level_records
    top_level_spans = _pbscan_ref.top_level_spans
else:
    try:
        from navi._fast._bpr import BprDecoder
        from navi._fast._pbscan import (split_length_prefixed, split_string_values, top_level_records,
                                        top_level_spans)
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise ImportError(
            "navi's compiled hot paths (navi._fast._bpr, _pbscan) are missing: reinstall with "
            "`pip install --no-build-isolation -e .` (needs a C compiler and Cython), "
            "or set NAVI_PURE_PYTHON=1 to run the slow reference decoder"
        ) from exc

__all__ = ["BprDecoder", "PURE_PYTHON", "split_length_prefixed", "split_string_values", "top_level_records",
           "top_level_spans"]
