"""navi.tally: lock-free metric families, checked against prometheus-client's own."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from navi.tally import TallyCounter, TallyGauge, TallyHistogram, render_text

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry, render=generate_latest) -> dict:
    """{(sample name, sorted labels): value}, without prometheus-client's *_created samples.

    The parser names a counter's sample ``<name>_total`` whether or not the
    text had the suffix, so ours (no suffix) and prometheus-client's compare.
    """
    text = render(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]),
                          st.floats(0, 100, allow_nan=False) | st.sampled_from(BUCKETS)), max_size=40))
def test_exposition_equals_prometheus_clients_own(updates):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = (TallyCounter("c", "doc", ("m",), registry=ours),
             TallyGauge("g", "doc", ("m",), registry=ours),
             TallyHistogram("h", "doc", ("m",), buckets=BUCKETS, registry=ours),
             TallyHistogram("plain", "doc", buckets=BUCKETS, registry=ours))
    client = (Counter("c", "doc", ("m",), registry=theirs),
              Gauge("g", "doc", ("m",), registry=theirs),
              Histogram("h", "doc", ("m",), buckets=BUCKETS, registry=theirs),
              Histogram("plain", "doc", buckets=BUCKETS, registry=theirs))
    for (counter, gauge, histogram, plain) in (tally, client):
        for model, value in updates:
            counter.labels(model).inc(value)
            gauge.labels(model).inc(value)
            gauge.labels(model).dec(1)
            histogram.labels(model).observe(value)
            plain.observe(value)
    ours_samples, theirs_samples = _samples(ours, render_text), _samples(theirs)
    assert ours_samples.keys() == theirs_samples.keys()
    for key, value in theirs_samples.items():
        assert ours_samples[key] == pytest.approx(value), key


def test_no_update_is_lost_across_threads():
    registry = CollectorRegistry()
    counter = TallyCounter("c", "doc", registry=registry)
    histogram = TallyHistogram("h", "doc", ("m",), buckets=BUCKETS, registry=registry)
    child = histogram.labels("x")
    per_thread, threads = 20_000, 8
    start = threading.Barrier(threads)

    def work():
        start.wait()
        for _ in range(per_thread):
            counter.inc()
            child.observe(0.05)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert registry.get_sample_value("c") == per_thread * threads
    assert registry.get_sample_value("h_bucket", {"m": "x", "le": "0.1"}) == per_thread * threads
    assert registry.get_sample_value("h_bucket", {"m": "x", "le": "0.01"}) == 0
    assert registry.get_sample_value("h_count", {"m": "x"}) == per_thread * threads


def test_misuse_is_refused():
    registry = CollectorRegistry()
    counter = TallyCounter("c", "doc", ("m",), registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError, match="finite bucket"):
        TallyHistogram("h", "doc", buckets=(float("inf"),))
    with pytest.raises(ValueError, match="Duplicated"):
        TallyCounter("c", "doc", registry=registry)


def test_counters_keep_their_declared_name_in_the_text():
    """As the original Navi: ``# TYPE :navi:num_requests counter`` then ``:navi:num_requests N``."""
    registry = CollectorRegistry()
    bare = TallyCounter(":navi:num_requests", "doc", registry=registry)
    by_model = TallyCounter(":navi:num_requests_by_model", "doc", ("model_name",), registry=registry)
    own = TallyCounter(":navi:rows_total", "doc", registry=registry)
    client = Counter(":navi:loads", "doc", registry=registry)
    bare.inc(3)
    by_model.labels("m").inc()
    own.inc(2)
    client.inc()
    lines = render_text(registry).decode().splitlines()
    assert "# TYPE :navi:num_requests counter" in lines
    assert ":navi:num_requests 3.0" in lines
    assert "# TYPE :navi:num_requests_by_model counter" in lines
    assert ':navi:num_requests_by_model{model_name="m"} 1.0' in lines
    assert "# TYPE :navi:rows_total counter" in lines and ":navi:rows_total 2.0" in lines
    # prometheus-client's own counters are written as prometheus-client writes them
    assert "# TYPE :navi:loads_total counter" in lines and ":navi:loads_total 1.0" in lines
    families = {f.name: f for f in text_string_to_metric_families("\n".join(lines) + "\n")}
    assert families[":navi:num_requests"].type == "counter"
    assert families[":navi:rows"].type == "counter"


def test_nan_is_counted_in_the_inf_bucket():
    """As Prometheus' Go client (and the original's Rust one): NaN goes to +Inf, not to the first bucket."""
    registry = CollectorRegistry()
    histogram = TallyHistogram("h", "help", buckets=(0, 10), registry=registry)
    for value in (float("nan"), -1.0, 5.0):
        histogram.observe(value)
    buckets = {sample.labels["le"]: sample.value for family in text_string_to_metric_families(render_text(registry).decode())
               for sample in family.samples if sample.name == "h_bucket"}
    assert buckets == {"0.0": 1, "10.0": 2, "+Inf": 3}
