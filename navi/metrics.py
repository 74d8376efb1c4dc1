"""Every Prometheus metric of a navi process, declared once.

Names keep the original Navi's (``:navi:...``) so existing dashboards work;
histograms added by us use the same prefix. One ``Metrics`` object is built
per process (or per test server) around its own registry and passed down.
Series updated per request or per batch are ``navi.tally`` families (no lock
per update); the rest are prometheus-client's own.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from navi import __version__
from navi.tally import TallyCounter, TallyGauge, TallyHistogram

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: buckets of the feature value histograms (the original's), also the BPR decoder's
FEATURE_VALUE_BUCKETS = (
    0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180,
    190, 200, 250, 300, 500, 1000, 10000, 100000,
)


class Metrics:
    """The metric objects of one process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        by_model = ("model_name",)

        self.num_requests = TallyCounter(":navi:num_requests", "Predict requests received", registry=r)
        self.num_requests_by_model = TallyCounter(
            ":navi:num_requests_by_model", "Predict requests by model", by_model, registry=r
        )
        self.num_requests_failed = TallyCounter(
            ":navi:num_requests_failed", "Requests answered with an error", registry=r
        )
        self.num_requests_failed_by_model = TallyCounter(
            ":navi:num_requests_failed_by_model", "Failed requests by model", by_model, registry=r
        )
        self.num_requests_dropped = TallyCounter(
            ":navi:num_requests_dropped", "Requests shed under load", registry=r
        )
        self.num_requests_dropped_by_model = TallyCounter(
            ":navi:num_requests_dropped_by_model", "Shed requests by model", by_model, registry=r
        )
        self.num_predictions = TallyCounter(":navi:num_predictions", "Rows predicted", registry=r)
        self.num_prediction_by_model = TallyCounter(
            ":navi:num_prediction_by_model", "Rows predicted by model", by_model, registry=r
        )
        self.num_batch_prediction = TallyCounter(
            ":navi:num_batch_prediction", "Batches run", registry=r
        )
        self.num_batch_prediction_by_model = TallyCounter(
            ":navi:num_batch_prediction_by_model", "Batches run by model", by_model, registry=r
        )
        self.num_batches_dropped = TallyCounter(
            ":navi:num_batches_dropped", "Batches in which every request was shed", registry=r
        )
        self.num_batches_dropped_by_model = TallyCounter(
            ":navi:num_batches_dropped_by_model", "Dropped batches by model", by_model, registry=r
        )
        self.batch_size = TallyHistogram(
            ":navi:batch_size", "Requests per batch", buckets=_ROW_BUCKETS, registry=r
        )
        self.batch_size_by_model = TallyHistogram(
            ":navi:batch_size_by_model", "Requests per batch by model", by_model,
            buckets=_ROW_BUCKETS, registry=r,
        )
        self.batch_rows = TallyHistogram(
            ":navi:batch_rows", "Rows per batch by model", by_model, buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.response_time = TallyHistogram(
            ":navi:response_time", "Seconds from request arrival to answer", by_model,
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.queue_wait_time = TallyHistogram(
            ":navi:queue_wait_time", "Seconds a request waited for its batch to start", by_model,
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.model_inference_time = TallyHistogram(
            ":navi:model_inference_time", "Seconds the runtime spent on one batch", by_model,
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.converter_time = TallyHistogram(
            ":navi:converter_time", "Microseconds of BPR conversion per row", by_model,
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r,
        )
        self.blocking_request_num = TallyGauge(
            ":navi:blocking_request_num", "Requests waiting in batch queues", registry=r
        )
        self.mpsc_channel_size = TallyGauge(
            ":navi:mpsc_channel_size", "Requests queued for batching, by model", by_model,
            registry=r,
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
        self.new_model_snapshot = Counter(
            ":navi:new_model_snapshot", "Model versions loaded", by_model, registry=r
        )
        self.model_snapshot_version = Gauge(
            ":navi:model_snapshot_version", "Newest serving version", by_model, registry=r
        )
        self.model_load_time = Histogram(
            ":navi:model_load_time", "Seconds to load and warm up a version", by_model,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.model_load_failures = Counter(
            ":navi:model_load_failures", "Versions that failed to load or warm up", by_model,
            registry=r,
        )
        self.modelsync_failures = Counter(
            ":navi:modelsync_failures", "Failed runs of --modelsync-cli", registry=r
        )
        self.navi_version = Gauge(
            ":navi:navi_version", "navi release running", ("version",), registry=r
        )
        self.navi_version.labels(__version__).set(1)
        self.cert_expiry_epoch = Gauge(
            ":navi:cert_expiry_epoch", "Expiry of the TLS server certificate (epoch s)",
            registry=r,
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
