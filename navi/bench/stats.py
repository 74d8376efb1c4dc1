"""Small statistics used by every benchmark: percentiles and repeat summaries.

Percentiles use linear interpolation between closest ranks (numpy's default
``method="linear"``), written out here so the maths is explicit and tested
against numpy on known samples.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

#: (JSON key, percentile) pairs reported for every latency distribution.
LATENCY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples`` by linear interpolation.

    Equals ``numpy.percentile(samples, q)``; NaN for an empty sample.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    values = np.sort(np.asarray(samples, dtype=np.float64), axis=None)
    n = values.size
    if n == 0:
        return math.nan
    # position of the percentile on the 0..n-1 rank axis
    rank = (n - 1) * q / 100.0
    low = int(math.floor(rank))
    high = min(low + 1, n - 1)
    fraction = rank - low
    return float(values[low] + (values[high] - values[low]) * fraction)


def latency_summary_ms(latencies_s: Iterable[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean (milliseconds) and count of latencies given in seconds."""
    values_ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    summary: dict[str, float] = {}
    for key, q in LATENCY_PERCENTILES:
        summary[key] = percentile(values_ms, q)
    summary["max"] = float(values_ms.max()) if values_ms.size else math.nan
    summary["mean"] = float(values_ms.mean()) if values_ms.size else math.nan
    summary["count"] = int(values_ms.size)
    return summary


def repeat_summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the per-repeat figures of one measurement."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "repeats": 0}
    return {
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
        "repeats": int(array.size),
    }


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined (zero or NaN denominator)."""
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator
