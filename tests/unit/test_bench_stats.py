"""Percentile maths and repeat summaries of navi.bench.stats, checked against numpy."""
import math

import numpy as np
import pytest

from navi.bench import stats


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(q, n):
    samples = np.random.default_rng(n).exponential(2.0, size=n)
    assert stats.percentile(samples, q) == pytest.approx(np.percentile(samples, q), rel=1e-12, abs=1e-12)


def test_percentile_known_values():
    samples = [1.0, 2.0, 3.0, 4.0]
    assert stats.percentile(samples, 50) == 2.5
    assert stats.percentile(samples, 0) == 1.0
    assert stats.percentile(samples, 100) == 4.0
    # rank (4-1)*0.9 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert stats.percentile(samples, 90) == pytest.approx(3.7)


def test_percentile_ignores_input_order_and_handles_empty():
    assert stats.percentile([5, 1, 4, 2, 3], 50) == 3.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_latency_summary_in_milliseconds():
    latencies_s = np.arange(1, 1001) / 1000.0  # 1..1000 ms
    summary = stats.latency_summary_ms(latencies_s)
    values_ms = latencies_s * 1000
    for key, q in stats.LATENCY_PERCENTILES:
        assert summary[key] == pytest.approx(np.percentile(values_ms, q))
    assert summary["max"] == pytest.approx(1000.0)
    assert summary["count"] == 1000
    assert summary["p999"] == pytest.approx(999.001)


def test_repeat_summary_and_ratio():
    summary = stats.repeat_summary([3.0, 1.0, 2.0])
    assert summary == {"median": 2.0, "min": 1.0, "max": 3.0, "repeats": 3}
    assert stats.repeat_summary([])["repeats"] == 0
    assert stats.ratio(3.0, 2.0) == 1.5
    assert math.isnan(stats.ratio(1.0, 0.0))
