"""Every Prometheus metric of a navi process, declared once.

The original Navi's metrics keep its names, types and units exactly, so
existing dashboards and alerts work unchanged (its ``metrics.rs``):

* counters, exposed WITHOUT a ``_total`` suffix: ``:navi:num_requests``,
  ``:navi:num_requests_failed``, ``:navi:num_requests_dropped``,
  ``:navi:num_batches_dropped``, ``:navi:num_batch_prediction``; by
  ``model_name``: ``:navi:num_predictions`` (requests answered),
  ``:navi:prediction_score_sum`` (sum of each answer's first score),
  ``:navi:new_model_snapshot``, ``:navi:num_requests_by_model``,
  ``:navi:num_requests_failed_by_model``, ``:navi:num_requests_dropped_by_model``,
  ``:navi:num_batches_dropped_by_model``, ``:navi:inference_failed_requests_by_model``,
  ``:navi:num_prediction_by_model`` (requests put into batches),
  ``:navi:num_batch_prediction_by_model``;
* gauges: ``:navi:batch_size`` and, by model, ``:navi:batch_size_by_model``
  (as the original: each batch ADDS its request count and nothing subtracts,
  so ``rate(:navi:batch_size) / rate(:navi:num_batch_prediction)`` is the
  mean batch size), ``:navi:navi_version`` (major*1e6 + minor*1e3 + patch),
  ``:navi:customop_version``, ``:navi:mpsc_channel_size`` (requests waiting
  for a batch), ``:navi:blocking_request_num`` (batches waiting for or
  running on a batch thread), ``:navi:cert_expiry_epoch``, and by model
  ``:navi:model_snapshot_version``;
* histograms by model, in the original's units and buckets:
  ``:navi:response_time`` and ``:navi:model_inference_time`` in
  MILLISECONDS, ``:navi:converter_time`` in MICROSECONDS per row converted.

navi's own additions follow Prometheus' naming (unit and ``_total``
suffixes). One ``Metrics`` object is built per process (or per test server)
around its own registry and passed down. Series updated per request or per
batch are ``navi.tally`` families (no lock per update); the rest are
prometheus-client's own. ``navi.tally.render_text`` writes the exposition.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from navi import __version__
from navi.tally import TallyCounter, TallyGauge, TallyHistogram

log = logging.getLogger(__name__)

#: the original's buckets of :navi:response_time (milliseconds)
RESPONSE_TIME_BUCKETS_MS = (
    0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190,
    200, 250, 300, 500, 1000,
)
#: the original's buckets of :navi:model_inference_time (milliseconds)
MODEL_INFERENCE_TIME_BUCKETS_MS = (
    0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 100, 110, 120,
    130, 140, 150, 160, 170, 180, 190, 200, 250, 300, 500, 1000,
)
#: the original's buckets of :navi:converter_time (microseconds per row)
CONVERTER_TIME_BUCKETS_US = (
    0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500, 6000, 6500, 7000, 20000,
)
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: buckets of the feature value histograms (the original's), also the BPR decoder's
FEATURE_VALUE_BUCKETS = (
    0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180,
    190, 200, 250, 300, 500, 1000, 10000, 100000,
)


def version_number(version: str) -> int | None:
    """``MAJOR.MINOR.PATCH`` as major*1,000,000 + minor*1,000 + patch (the original's
    :navi:navi_version); None when ``version`` is not three integers."""
    parts = version.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    major, minor, patch = (int(part) for part in parts)
    return major * 1_000_000 + minor * 1_000 + patch


def customop_version(library: Path) -> int:
    """The original's :navi:customop_version of a custom-op library: the last four
    hex digits of the SHA-256 of its bytes, as a number (0 to 65535)."""
    digest = hashlib.sha256(Path(library).read_bytes()).hexdigest()
    return int(digest[-4:], 16)


class Metrics:
    """The metric objects of one process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        by_model = ("model_name",)

        # ---- the original's counters (exposed without _total)
        self.num_requests = TallyCounter(":navi:num_requests", "Number of Requests Received", registry=r)
        self.num_requests_failed = TallyCounter(
            ":navi:num_requests_failed", "Number of Requests answered with an error", registry=r
        )
        self.num_requests_dropped = TallyCounter(
            ":navi:num_requests_dropped", "Number of Requests shed under load", registry=r
        )
        self.num_batches_dropped = TallyCounter(
            ":navi:num_batches_dropped", "Number of Batches in which every request was shed", registry=r
        )
        self.num_batch_prediction = TallyCounter(
            ":navi:num_batch_prediction", "Number of batch prediction", registry=r
        )
        self.num_predictions = TallyCounter(
            ":navi:num_predictions", "Number of predictions made by model (requests answered)",
            by_model, registry=r,
        )
        self.prediction_score_sum = TallyCounter(
            ":navi:prediction_score_sum",
            "Sum of prediction score made by model (first value of each answer's first output; "
            "negative or non-finite scores are not added)",
            by_model, registry=r,
        )
        self.new_model_snapshot = TallyCounter(
            ":navi:new_model_snapshot", "Load a new version of model snapshot", by_model, registry=r
        )
        self.num_requests_by_model = TallyCounter(
            ":navi:num_requests_by_model", "Number of Requests Received by model", by_model, registry=r
        )
        self.num_requests_failed_by_model = TallyCounter(
            ":navi:num_requests_failed_by_model", "Number of Requests answered with an error by model",
            by_model, registry=r,
        )
        self.num_requests_dropped_by_model = TallyCounter(
            ":navi:num_requests_dropped_by_model", "Number of Requests shed under load by model",
            by_model, registry=r,
        )
        self.num_batches_dropped_by_model = TallyCounter(
            ":navi:num_batches_dropped_by_model", "Number of Batches dropped by model", by_model,
            registry=r,
        )
        self.inference_failed_requests_by_model = TallyCounter(
            ":navi:inference_failed_requests_by_model",
            "Number of requests in batches the runtime failed to run, by model", by_model, registry=r,
        )
        self.num_prediction_by_model = TallyCounter(
            ":navi:num_prediction_by_model", "Number of requests put into batches by model",
            by_model, registry=r,
        )
        self.num_batch_prediction_by_model = TallyCounter(
            ":navi:num_batch_prediction_by_model", "Number of batch prediction by model", by_model,
            registry=r,
        )

        # ---- the original's gauges
        self.batch_size = TallyGauge(
            ":navi:batch_size", "Requests batched so far (each batch adds its size, as the original)",
            registry=r,
        )
        self.batch_size_by_model = TallyGauge(
            ":navi:batch_size_by_model",
            "Requests batched so far by model (each batch adds its size, as the original)",
            by_model, registry=r,
        )
        self.mpsc_channel_size = TallyGauge(
            ":navi:mpsc_channel_size", "Requests waiting for their batch", registry=r
        )
        self.blocking_request_num = TallyGauge(
            ":navi:blocking_request_num", "Batches waiting for or running on a batch thread",
            registry=r,
        )
        self.navi_version = Gauge(":navi:navi_version", "navi's current version", registry=r)
        number = version_number(__version__)
        if number is None:
            log.warning("version %s is not MAJOR.MINOR.PATCH: :navi:navi_version stays 0", __version__)
        else:
            self.navi_version.set(number)
        self.customop_version = Gauge(
            ":navi:customop_version", "The hashed Custom OP Version (last library loaded)", registry=r
        )
        self.cert_expiry_epoch = Gauge(
            ":navi:cert_expiry_epoch", "Expiry of the TLS server certificate (epoch seconds)",
            registry=r,
        )
        self.model_snapshot_version = Gauge(
            ":navi:model_snapshot_version", "Record model snapshot version", by_model, registry=r
        )

        # ---- the original's histograms, in its units and buckets
        self.response_time = TallyHistogram(
            ":navi:response_time", "Response Time in ms", by_model,
            buckets=RESPONSE_TIME_BUCKETS_MS, registry=r,
        )
        self.model_inference_time = TallyHistogram(
            ":navi:model_inference_time", "Model inference time in ms (one batch)", by_model,
            buckets=MODEL_INFERENCE_TIME_BUCKETS_MS, registry=r,
        )
        self.converter_time = TallyHistogram(
            ":navi:converter_time", "converter time in microseconds (per row of a batch)", by_model,
            buckets=CONVERTER_TIME_BUCKETS_US, registry=r,
        )

        # ---- navi's own, named the Prometheus way
        self.build_info = Gauge(":navi:build_info", "navi release running (always 1)", ("version",),
                                registry=r)
        self.build_info.labels(__version__).set(1)
        self.predicted_rows = TallyCounter(
            ":navi:predicted_rows_total", "Rows (candidates) in answered requests, by model", by_model,
            registry=r,
        )
        self.batch_requests = TallyHistogram(
            ":navi:batch_requests", "Requests per batch, by model", by_model, buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.batch_rows = TallyHistogram(
            ":navi:batch_rows", "Rows per batch, by model", by_model, buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = TallyHistogram(
            ":navi:queue_wait_seconds", "Seconds a request waited for its batch to start", by_model,
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        # read from the handler pool when scraped (ServingServer.start wires them)
        self.handler_threads_running = Gauge(
            ":navi:handler_threads_running", "Request handler threads running now (at most --grpc-threads)",
            registry=r,
        )
        self.requests_in_flight = Gauge(
            ":navi:requests_in_flight",
            "Requests held by handler threads, running or asleep in a batch (at most --grpc-max-threads)",
            registry=r,
        )
        self.model_load_seconds = Histogram(
            ":navi:model_load_seconds", "Seconds to load and warm up a version", by_model,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.model_load_failures = Counter(
            ":navi:model_load_failures", "Versions that failed to load or warm up", by_model,
            registry=r,
        )
        self.modelsync_failures = Counter(
            ":navi:modelsync_failures", "Failed runs of --modelsync-cli", registry=r
        )
        # counted by the BPR decoder, added once per batch (navi.pipeline)
        self.feature_id_discrete = TallyHistogram(
            ":navi:feature_id:discrete", "Values of reported discrete features", ("feature_id",),
            buckets=FEATURE_VALUE_BUCKETS, registry=r,
        )
        self.feature_id_continuous = TallyHistogram(
            ":navi:feature_id:continuous", "Values of reported continuous features",
            ("feature_id",), buckets=FEATURE_VALUE_BUCKETS, registry=r,
        )
