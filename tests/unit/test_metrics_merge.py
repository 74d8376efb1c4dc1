"""Merging workers' expositions: sums, kept totals of exited workers, gauge rules."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from navi.metrics import Metrics
from navi.server.metrics_merge import GAUGE_MERGE, MERGE_RULES, MetricsMerger, parse_exposition, sample_value
from navi.tally import render_text


def exposition(requests: int, in_flight: int, snapshot: int, latencies_ms=()) -> str:
    metrics = Metrics()
    metrics.num_requests.inc(requests)
    metrics.num_requests_by_model.labels("home").inc(requests)
    metrics.requests_in_flight.set(in_flight)
    metrics.model_snapshot_version.labels("home").set(snapshot)
    metrics.batch_size.inc(requests)
    for latency in latencies_ms:
        metrics.response_time.labels("home").observe(latency)
    metrics.model_load_failures.labels("home").inc()
    return render_text(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_and_histograms_are_summed_gauges_follow_their_rule():
    merged = samples(MetricsMerger().merge([
        exposition(3, in_flight=2, snapshot=5, latencies_ms=[12, 300]),
        exposition(4, in_flight=1, snapshot=4, latencies_ms=[3]),
    ]))
    home = (("model_name", "home"),)
    assert merged[(":navi:num_requests_total", ())] == 7
    assert merged[(":navi:num_requests_by_model_total", home)] == 7
    assert merged[(":navi:response_time_count", home)] == 3
    assert merged[(":navi:response_time_sum", home)] == 315
    assert merged[(":navi:response_time_bucket", (("le", "20.0"),) + home)] == 2
    assert merged[(":navi:model_load_failures_total", home)] == 2
    assert merged[(":navi:requests_in_flight", ())] == 3  # now: summed
    assert merged[(":navi:model_snapshot_version", home)] == 4  # the version every worker reached
    assert merged[(":navi:batch_size", ())] == 7
    assert merged[(":navi:navi_version", ())] > 0  # the same everywhere: not doubled
    one = samples(exposition(1, 0, 1))
    assert merged[(":navi:navi_version", ())] == one[(":navi:navi_version", ())]


def test_an_exited_workers_totals_are_kept_and_its_gauges_dropped():
    merger = MetricsMerger()
    dead = exposition(5, in_flight=3, snapshot=2, latencies_ms=[7])
    before = samples(merger.merge([dead, exposition(2, 1, 2)]))
    merger.retire(dead)
    # the restarted worker starts from zero
    after = samples(merger.merge([exposition(0, 0, 2), exposition(2, 1, 2)]))
    assert before[(":navi:num_requests_total", ())] == after[(":navi:num_requests_total", ())] == 7
    assert after[(":navi:response_time_count", (("model_name", "home"),))] == 1
    assert after[(":navi:batch_size", ())] == 7  # the original's adding gauge counts like a counter
    assert after[(":navi:requests_in_flight", ())] == 1  # the dead worker holds nothing now


def test_a_label_only_an_exited_worker_had_stays():
    merger = MetricsMerger()
    metrics = Metrics()
    metrics.num_predictions.labels("gone").inc(9)
    merger.retire(render_text(metrics.registry).decode())
    text = merger.merge([exposition(1, 0, 1)])
    assert sample_value(text, ":navi:num_predictions", [("model_name", "gone")]) == 9
    assert "# TYPE :navi:num_predictions counter" in text


def test_every_gauge_of_a_worker_has_a_declared_rule():
    families = parse_exposition(render_text(Metrics().registry).decode())
    gauges = {name for name, family in families.items() if family.type == "gauge" and not name.endswith("_created")}
    assert gauges == set(GAUGE_MERGE), "declare how a new gauge merges in navi.server.metrics_merge.GAUGE_MERGE"
    assert set(GAUGE_MERGE.values()) <= set(MERGE_RULES)


def test_parse_rejects_a_line_without_a_value():
    with pytest.raises(ValueError):
        parse_exposition("# TYPE x gauge\nx\n")
