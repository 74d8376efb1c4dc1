"""NaviServer: the gRPC server process around a ModelRegistry.

Serves, on one port: TF Serving's PredictionService and ModelService, KServe
V2's GRPCInferenceService, gRPC health checking (per model and overall ""),
and server reflection; plus Prometheus ``/metrics`` on its own HTTP port.

Why the threaded ``grpc.server`` and not ``grpc.aio``: with a bare
PredictionService the sync server answered more requests in every run, on
the large BPR-sized messages that matter most and on tiny ones (figures:
benchmarks/RESULTS.md, "Design measurements"); and our handlers block until
their batch answered (often running it themselves), which in aio would cost
an extra executor hop per request.

Compression: gzip-compressed requests are always accepted (gRPC core
decompresses them). Answers are gzip-compressed when the client accepts gzip
and the answer is at least ``grpcutil.COMPRESS_MIN_BYTES``: small answers (the usual
few floats per row) are cheaper to send than to compress.
"""
from __future__ import annotations

import datetime
import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from navi._proto import POOL, add_file_of
from navi._proto.kserve import grpc_predict_v2_pb2
from navi._proto.tensorflow_serving.apis import (
    model_service_pb2,
    prediction_service_pb2,
)
from navi.errors import ConfigError
from navi.metrics import customop_version
from navi.server.dataplane import DataPlane
from navi.server.health import HealthService
from navi.server.kserve import InferenceServicer
from navi.server.metrics_http import MetricsHTTPServer
from navi.server.tfserving import ModelServicer, PredictionServicer, add_prediction_service
from navi.server.rawrpc import add_raw_service, add_reflection_service
from navi.server.threads import (CONTROL_MAX_WAITING, CONTROL_THREADS, REFLECTION_THREADS, HandlerPool,
                                 handler_wait_bound_s)
from navi.settings import BatchingSettings, ServerSettings

log = logging.getLogger(__name__)

#: health service name that stands for the whole server
OVERALL = ""

SERVICE_NAMES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def _pem_join(*pems: bytes) -> bytes:
    """PEM blocks one after the other (a file without a final newline must not glue
    its END line to the next BEGIN line)."""
    return b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in pems if pem.strip())


def load_tls(ssl_dir: Path) -> tuple[grpc.ServerCredentials, float]:
    """Server credentials from ``ssl_dir`` (server.crt, server.key, server.chain).

    As the original: the server presents ``server.crt`` followed by
    ``server.chain`` (its intermediates), so a client that trusts only the
    root CA can verify it; and the same bundle is the CA that client
    certificates must chain to, so clients authenticate too (mutual TLS).
    Returns the credentials and the server certificate's expiry (epoch seconds).
    """
    paths = {name: Path(ssl_dir) / name for name in ("server.crt", "server.key", "server.chain")}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}", source="--ssl-dir", key=str(ssl_dir))
    cert = paths["server.crt"].read_bytes()
    bundle = _pem_join(cert, paths["server.chain"].read_bytes())
    try:
        expiry_s = certificate_expiry_epoch_s(cert)
    except ValueError as error:
        raise ConfigError(f"not a PEM certificate: {error}", source="--ssl-dir",
                          key=str(paths["server.crt"])) from None
    credentials = grpc.ssl_server_credentials(
        [(paths["server.key"].read_bytes(), bundle)],
        root_certificates=bundle,
        require_client_auth=True,
    )
    return credentials, expiry_s


def tls_context(ssl_dir: Path):
    """The HTTP side's ``ssl.SSLContext`` with ``load_tls``'s settings: ``server.crt`` and
    ``server.chain`` presented, client certificates required and verified against the same bundle."""
    import ssl
    import tempfile

    paths = {name: Path(ssl_dir) / name for name in ("server.crt", "server.key", "server.chain")}
    bundle = _pem_join(paths["server.crt"].read_bytes(), paths["server.chain"].read_bytes())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: the joined bundle goes through a private temporary one
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as chain:
        chain.write(bundle)
        chain.flush()
        context.load_cert_chain(chain.name, str(paths["server.key"]))
    context.load_verify_locations(cadata=bundle.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_expiry_epoch_s(pem: bytes) -> float:
    """The ``notAfter`` time of the first certificate in ``pem``, as epoch seconds."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(pem)
    not_after = certificate.not_valid_after_utc
    return not_after.replace(tzinfo=datetime.timezone.utc).timestamp()


def http2_window_options(stream_window_bytes: int) -> list[tuple[str, int]]:
    """grpc core's options that make it receive ``stream_window_bytes`` of a call's message until
    its handler pool admits it (``ServerSettings.grpc_stream_window_bytes``; 0: grpc's defaults).

    By default grpc core probes the connection's bandwidth-delay product and
    grows every stream's window with it, to megabytes on loopback: a 2.4 MB
    request is then received whole while it waits for a handler thread, and
    a call refused unread (by a full ``HandlerPool``)
    has still cost its receive. With the probe off, a stream's window stays
    at ``lookahead_bytes`` until the message is asked for (when the handler
    pool admits the call: ``navi.server.threads._receiving``), when chttp2
    widens it to the message's size: admitted requests arrive while they
    wait, and the others' senders wait (benchmarks/RESULTS.md, "Receive
    ahead" and "Reliability").
    """
    if stream_window_bytes <= 0:
        return []
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", stream_window_bytes)]


def grpc_connection_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """grpc core's bounds on the gRPC port's connections, the HTTP port's in ``navi.server.connections``.

    Past ``max_connections`` open, grpc core closes a new connection at once
    (the client sees UNAVAILABLE and may try another address). A connection
    that has not sent its HTTP/2 settings (or finished TLS) within
    ``handshake_timeout_s`` is closed: grpc core's own default is 120 s, for
    which a silent connection would hold its place.
    """
    return [("grpc.max_allowed_incoming_connections", settings.max_connections),
            ("grpc.server_handshake_timeout_ms", max(1, round(settings.handshake_timeout_s * 1000)))]


class NaviServer:
    """The gRPC + metrics servers of one navi process.

    ``start()`` binds and starts serving (health NOT_SERVING until the
    registry reports models ready) and returns the bound gRPC port;
    ``stop(grace_s)`` turns health NOT_SERVING, refuses new RPCs and lets
    in-flight ones finish for at most ``grace_s``. The registry's own
    lifecycle (start, stop) belongs to the caller.

    ``fleet`` (a ``navi.server.workers.WorkerLink``) makes this server one
    worker of ``navi serve --workers N``: it binds with SO_REUSEPORT, serves
    no metrics port (the supervisor fetches its exposition), reports its
    readiness and answers health SERVING only while ``fleet.ready``.
    """

    def __init__(self, settings: ServerSettings, registry, metrics, fleet=None):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.fleet = fleet
        self.port: int | None = None
        self.prometheus_port: int | None = None
        self._server: grpc.Server | None = None
        self._health = HealthService(experimental_non_blocking=True)
        self._http = None
        self._rest = None
        self.rest_port: int | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._pools: tuple[futures.ThreadPoolExecutor, ...] = ()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> int:
        """Bind both ports and start serving; returns the bound gRPC port."""
        settings = self.settings
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # never share a port with a stale process (SO_REUSEPORT would); a
            # worker shares the port its supervisor holds (navi.server.workers)
            ("grpc.so_reuseport", 1 if self.fleet is not None else 0),
        ] + http2_window_options(settings.grpc_stream_window_bytes) + grpc_connection_options(settings)
        # model-running RPCs on the handler threads, the rest on a control
        # pool they cannot fill (see navi.server.threads)
        data_pool = HandlerPool(settings.grpc_threads, max(settings.grpc_threads, settings.grpc_max_threads),
                                thread_name_prefix="grpc", max_waiting=settings.grpc_max_waiting_requests,
                                max_wait_s=handler_wait_bound_s(
                                    [model.batching.max_queue_wait_ms for model in settings.models]
                                    or [BatchingSettings().max_queue_wait_ms]),
                                wait_refusal=self.registry.wait_refusal)
        control_pool = HandlerPool(CONTROL_THREADS, CONTROL_THREADS, thread_name_prefix="grpc-control",
                                   max_waiting=CONTROL_MAX_WAITING,
                                   max_waiting_source="health, metadata and status calls: at most {}")
        self.metrics.handler_threads_running.set_function(lambda: data_pool.running)
        self.metrics.requests_in_flight.set_function(lambda: data_pool.holding)
        reflection_pool = HandlerPool(REFLECTION_THREADS, REFLECTION_THREADS, thread_name_prefix="grpc-reflection",
                                      max_waiting=REFLECTION_THREADS,
                                      max_waiting_source="server reflection streams: at most {}")
        self._pools = (data_pool, control_pool, reflection_pool)
        # every pool bounds its queue and refuses past it unread, so grpcio's
        # own cap (``maximum_concurrent_rpcs``, one more lock per call) is not set
        server = grpc.server(control_pool, options=options)
        # every service parses its own requests (navi.server.rawrpc): an
        # undecodable one gets INVALID_ARGUMENT, not grpcio's INTERNAL
        on_data_pool = {method: data_pool for method in ("Predict", "Classify", "Regress", "MultiInference")}
        # one data plane behind every transport: their requests join the same batches
        plane = self.plane = DataPlane(self.registry, self.metrics, settings.request_limits)
        add_prediction_service(PredictionServicer(plane), server, pools=on_data_pool)
        add_raw_service(server, model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
                        ModelServicer(plane))
        add_raw_service(server, grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                        InferenceServicer(plane),
                        pools={"ModelInfer": data_pool}, raw_methods=("ModelInfer",))
        add_raw_service(server, health_pb2.DESCRIPTOR.services_by_name["Health"], self._health)
        # Our services are described in navi._proto.POOL, not the default
        # pool; reflection must answer from it, so health and reflection's own
        # files are added there too.
        from grpc_reflection.v1alpha import reflection_pb2

        add_file_of(health_pb2)
        add_file_of(reflection_pb2)
        add_reflection_service(server, SERVICE_NAMES, POOL, reflection_pool)

        libraries = [path for model in settings.models for path in model.customops_libs]
        if libraries:
            # as the original: the number of the last library loaded
            self.metrics.customop_version.set(customop_version(libraries[-1]))

        address = f"{settings.host}:{settings.port}"
        try:
            if settings.ssl_dir is not None:
                credentials, expiry_s = load_tls(settings.ssl_dir)
                self.metrics.cert_expiry_epoch.set(expiry_s)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:  # newer grpcio raises instead of returning 0
            raise ConfigError(f"cannot bind {address}: {error}", source="--port") from None
        if port == 0:
            raise ConfigError(f"cannot bind {address}", source="--port")

        self.refresh_health()
        self.registry.add_listener(self._on_model_change)
        server.start()
        self._server = server
        self.port = port
        self._report_ready()
        if self.fleet is not None:
            log.info("worker %d gRPC on %s:%d (SO_REUSEPORT)", self.fleet.index, settings.host, port)
            return port

        try:
            self._http = MetricsHTTPServer(self.metrics.registry, settings.prometheus_port, settings.prometheus_host,
                                           idle_timeout_s=settings.handshake_timeout_s).start()
        except OSError as error:
            raise ConfigError(f"cannot serve metrics on {settings.prometheus_host}:{settings.prometheus_port}: "
                              f"{error}", source="--prometheus-port") from None
        self.prometheus_port = self._http.port
        if settings.rest_api_port:
            self._start_rest(plane, data_pool)
        log.info(
            # scripts and tests parse this line: keep its format (the metrics host is a flag)
            "navi gRPC listening on %s:%d (%s), metrics on :%d/metrics",
            settings.host, port, "mutual TLS" if settings.ssl_dir else "plaintext",
            self.prometheus_port,
        )
        return port

    def _start_rest(self, plane: DataPlane, data_pool) -> None:
        """TF Serving REST and KServe V2 HTTP on ``rest_api_port``, model calls on ``data_pool``."""
        from navi.server.http import HttpServer, ModelCalls
        from navi.server.tfrest import TfRestApi
        from navi.server.v2http import V2HttpApi

        settings = self.settings
        calls = ModelCalls(data_pool)
        routes = TfRestApi(plane, calls).routes() + V2HttpApi(plane, calls).routes()
        ssl_context = tls_context(settings.ssl_dir) if settings.ssl_dir is not None else None
        server = HttpServer(settings.host, settings.rest_api_port, routes,
                            max_body_bytes=settings.max_message_bytes, ssl_context=ssl_context,
                            max_connections=settings.max_connections,
                            headers_timeout_s=settings.handshake_timeout_s,
                            idle_timeout_s=settings.http_idle_timeout_s)
        try:
            self.rest_port = server.start()
        except OSError as error:
            raise ConfigError(f"cannot serve REST on port {settings.rest_api_port}: {error}",
                              source="--rest-api-port") from None
        self._rest = server
        log.info("navi REST listening on %s:%d (TF Serving /v1, KServe V2 /v2)", settings.host, self.rest_port)

    def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, refuse new RPCs, finish in-flight ones within ``grace_s``."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        # Tell load balancers first, so they stop routing here while we drain.
        self._health.enter_graceful_shutdown()
        # both sides drain at once: gRPC refuses new calls while HTTP closes its listener
        stopping = self._server.stop(grace_s) if self._server is not None else None
        if self._rest is not None:
            self._rest.stop(grace_s)
            self._rest = None
        if stopping is not None:
            stopping.wait()
        for pool in self._pools:
            pool.shutdown(wait=False)
        if self._http is not None:
            self._http.stop()
        log.info("navi gRPC server stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the gRPC server terminates (or ``timeout_s``); True if it did."""
        if self._server is None:
            return True
        return self._server.wait_for_termination(timeout_s)

    # ----------------------------------------------------------------- health

    def _status_of(self, ready: bool) -> int:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        fleet_ready = self.fleet is None or self.fleet.ready
        return serving if ready and fleet_ready and not self._stopping else not_serving

    def refresh_health(self) -> None:
        """Re-read readiness of every model and of the whole server into the health service."""
        for name in self.registry.model_names():
            self._health.set(name, self._status_of(self.registry.is_ready(name)))
        self._health.set(OVERALL, self._status_of(self.registry.is_ready()))
        self._report_ready()

    def _report_ready(self) -> None:
        # a worker is ready only once it listens (the fleet's health counts on it)
        if self.fleet is not None and self._server is not None and not self._stopping:
            self.fleet.report_ready(self.registry.is_ready())

    def _on_model_change(self, name: str) -> None:
        if self._stopping:
            return
        try:
            self._health.set(name, self._status_of(self.registry.is_ready(name)))
            self._health.set(OVERALL, self._status_of(self.registry.is_ready()))
            self._report_ready()
        except Exception:  # a listener must never break the registry's thread
            log.exception("health update for %s failed", name)
