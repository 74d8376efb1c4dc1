"""The one typed settings object of a navi process.

Built once (``navi.cli.serve`` layers flags over an optional YAML/TOML config
file) and passed down by constructor; no module reads settings from globals.
All models are frozen: a running server never mutates its configuration, and
META.json overrides are applied by building new objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchingSettings(_Frozen):
    """Server-side dynamic batching of one (model, version) queue."""

    max_batch_size: int = Field(16, ge=1, description="requests per batch")
    max_batch_rows: int = Field(0, ge=0, description="rows per batch; 0 = no row limit")
    batch_timeout_ms: float = Field(
        2.0, ge=0, description="longest a batch's first request waits for company"
    )
    batch_drop_ms: float = Field(
        90.0, ge=0, description="a request that waited longer is shed; 0 = never"
    )
    max_queue_wait_ms: float = Field(
        100.0, ge=0, description="a new request is refused at once when its wait since it arrived "
        "plus its estimated wait for a batch slot (the running batches' recent run time and the "
        "batches queued ahead) would pass this, unless it joins the next batch taken; 0 = no such bound"
    )
    max_queued_requests: int = Field(
        10_000, ge=1, description="requests waiting per queue before new ones are refused"
    )
    num_batch_threads: int = Field(2, ge=1, description="batches run concurrently per model")
    eager_when_idle: bool = Field(
        True, description="run a request at once when no batch of its queue is running"
    )
    inline_when_idle: bool = Field(
        True,
        description="with eager_when_idle, a request arriving at an idle queue runs on the "
        "caller's thread: no hand-off to a batch thread and back",
    )


def parse_bool(value: Any) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); ``ValueError`` otherwise.

    The one boolean parser of navi: the original's flags and the runtimes'
    string options (``onnx_use_parallel_mode=...``) both arrive as strings.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_feature_ids(value: Any) -> tuple[int, ...]:
    """Feature ids from ``"1,-2"``, ``["1,2", "3"]`` (repeated flags) or ``[1, 2]``: int64, in order.

    The original's ``--onnx-report-*-feature-ids`` are comma-separated and
    repeatable; empty items are skipped, as there. ValueError names a bad item.
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, int)) else list(value)
    ids = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"feature id {item!r} is not an integer")
        parts = [item] if isinstance(item, int) else str(item).split(",")
        for part in parts:
            if isinstance(part, str):
                part = part.strip()
                if not part:
                    continue
                try:
                    part = int(part)
                except ValueError:
                    raise ValueError(f"feature id {part!r} is not an integer") from None
            if not -(2**63) <= part < 2**63:
                raise ValueError(f"feature id {part} is not an int64")
            ids.append(part)
    return tuple(ids)


FeatureIds = Annotated[tuple[int, ...], BeforeValidator(parse_feature_ids)]


def parse_workers(value: Any) -> Any:
    """``"auto"`` -> the usable cores; anything else is left to the int field's own check."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return usable_cores()
    return value


Workers = Annotated[int, BeforeValidator(parse_workers)]

#: how ``--workers`` processes are placed on CPUs: "none" (the OS places them) or "split"
#: (each keeps to a share of its own, ``navi.server.workers.worker_cpu_set``)
WorkerCpus = Literal["none", "split"]
WORKER_CPU_MODES: tuple[str, ...] = get_args(WorkerCpus)


class ModelSettings(_Frozen):
    """One served model: a directory of versions and how to run it."""

    name: str
    model_dir: Path
    runtime: str = "onnx"
    inputs: tuple[str, ...] = Field(
        ("examples",),
        description="dense mode: the model's input names, empty or examples = detect from the model; "
        "BPR mode: its first name is the client's tensor unless bpr_input_name is set (the "
        "original's --input)",
    )
    bpr_input_name: str = Field(
        "", description="BPR mode: the name of the client's tensor of serialized BPRs; empty = "
        "the first of inputs, else examples"
    )
    outputs: tuple[str, ...] = Field(
        ("output_0",), description="output tensor names; empty = all of the model's"
    )
    batching: BatchingSettings = BatchingSettings()
    intra_op_parallelism: int = Field(1, ge=0)
    inter_op_parallelism: int = Field(1, ge=0)
    serving_signature: str = "serving_default"
    max_warmup_records: int = Field(500, ge=0)
    converter: Literal["auto", "home", "none"] = Field(
        "auto", description="BPR converter: home = always, none = never, auto = by inputs"
    )
    runtime_options: dict[str, str] = Field(
        default_factory=dict, description="runtime-specific options, e.g. onnx EP settings"
    )
    report_continuous_feature_ids: FeatureIds = Field(
        (), description="BPR models: feature ids whose values in continuousFeatures go to the "
        ":navi:feature_id:continuous histogram"
    )
    report_discrete_feature_ids: FeatureIds = Field(
        (), description="BPR models: feature ids whose values in discreteFeatures (and, as the "
        "original, in continuousFeatures) go to the :navi:feature_id:discrete histogram"
    )
    customops_libs: tuple[Path, ...] = Field(
        (), description="shared libraries of custom ops, loaded into the model's runtime "
        "(ONNX Runtime or TensorFlow) before it loads"
    )
    shared_weights_dir: Path | None = Field(
        None, description="where the model's large read-only weights are extracted once and mapped "
        "by every process serving it (ONNX; see navi.plugins.onnx_shared); None = each process "
        "holds its own copy. `navi serve --workers N` (N > 1) sets a private directory of the fleet"
    )


    @property
    def request_tensor_name(self) -> str:
        """BPR mode's client-facing tensor: ``bpr_input_name``, else ``--input``'s first name, else examples.

        ``--input`` keeps the original's two meanings (model inputs in dense
        mode, this name in BPR mode); ``bpr_input_name`` says the second
        one by its own name.
        """
        return self.bpr_input_name or (self.inputs[0] if self.inputs else "examples")


class RequestLimits(_Frozen):
    """What one request may cost, checked before anything of its size is allocated."""

    max_request_rows: int = Field(
        10_000, ge=1, description="rows one request may carry (BPR: records in its batch requests)"
    )
    max_request_decoded_bytes: int = Field(
        128 * 1024 * 1024, ge=1,
        description="bytes one request's tensors may decode to, a broadcast value at its expanded size",
    )


class ServerSettings(_Frozen):
    """Process-wide settings of `navi serve`."""

    host: str = "0.0.0.0"
    port: int = Field(8500, ge=0, le=65535)
    prometheus_port: int = Field(9000, ge=0, le=65535, description="0 = pick a free port")
    rest_api_port: int = Field(
        8501, ge=0, le=65535,
        description="HTTP port of TF Serving's REST API and KServe V2 HTTP (TF Serving's flag); 0 = off",
    )
    prometheus_host: str = Field(
        "0.0.0.0", description="address the /metrics endpoint binds (127.0.0.1: this host only)"
    )
    models: tuple[ModelSettings, ...] = ()
    model_check_interval_s: float = Field(300.0, gt=0)
    meta_json_dir: Path | None = None
    modelsync_cli: str | None = None
    version_settle_s: float = Field(
        2.0, ge=0, description="a version directory is loaded once its files stood still this long "
        "(see navi.repository.layout); 0 = at first sight"
    )
    modelsync_timeout_s: float = Field(
        60.0, gt=0, description="a --modelsync-cli run still going after this long is killed "
        "(with every process it started) and counted as failed; serving goes on"
    )
    versions_per_model: int = Field(1, ge=1)
    max_concurrent_loads: int = Field(1, ge=1)
    ssl_dir: Path | None = None
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(10.0, ge=0)
    workers: Workers = Field(
        1, ge=1, le=256,
        description="server processes sharing the gRPC port (SO_REUSEPORT) under one supervisor; "
        "1 = one process, no supervisor; \"auto\" = the usable cores",
    )
    share_weights: bool = Field(
        True, description="with workers > 1, every model whose shared_weights_dir is unset gets the "
        "fleet's cache: large read-only weights mapped from one file by all workers (ONNX)"
    )
    worker_cpus: WorkerCpus = Field(
        "none", description="with workers > 1: \"split\" keeps each worker's threads on a slice of its "
        "own of the CPUs navi may use (worker i of N: the i-th of N equal parts; one CPU each, in "
        "turn, when there are more workers than CPUs); \"none\" lets the OS place them",
    )
    grpc_threads: int = Field(
        default_factory=lambda data: default_grpc_threads(data.get("workers", 1)),
        ge=1,
        description="gRPC handler threads running at once, per process; default: the usable cores "
        "divided by the workers, 2 to 8",
    )
    max_request_rows: int = Field(
        10_000, ge=1, description="rows one request may carry; past it RESOURCE_EXHAUSTED"
    )
    max_request_decoded_bytes: int = Field(
        128 * 1024 * 1024, ge=1,
        description="bytes one request's tensors may decode to (a value broadcast to a shape counts "
        "at its expanded size); past it RESOURCE_EXHAUSTED",
    )
    max_connections: int = Field(
        10_000, ge=1,
        description="open connections per process on each of the gRPC and HTTP ports; past it a new one "
        "is closed at once (gRPC clients see UNAVAILABLE, HTTP clients 503)",
    )
    handshake_timeout_s: float = Field(
        10.0, gt=0,
        description="a new connection is closed unless its handshake (TLS; gRPC's HTTP/2 settings) ends "
        "within this long; on the HTTP port, also every request whose headers take longer from its first byte, "
        "and on the metrics port a connection silent this long",
    )
    http_idle_timeout_s: float = Field(
        75.0, gt=0,
        description="an HTTP connection with no request for this long is closed, and a request body with no "
        "byte for this long is answered 408 (above a load balancer's usual 60 s idle timeout)",
    )
    grpc_max_waiting_requests: int = Field(
        256, ge=1,
        description="requests waiting for a handler thread before new ones are refused "
        "RESOURCE_EXHAUSTED without being parsed",
    )
    grpc_stream_window_bytes: int = Field(
        65536, ge=0,
        description="bytes of a request gRPC receives before the call is admitted to a handler "
        "thread's queue (the HTTP/2 stream window; admission widens it to the whole message); 0 = grpc core's "
        "default, a window grown by bandwidth probing to megabytes",
    )
    grpc_max_threads: int = Field(
        64,
        ge=1,
        description="handler threads holding requests, counting those asleep waiting for a batch "
        "(requests in flight; at least grpc_threads)",
    )

    @property
    def request_limits(self) -> RequestLimits:
        """The per-request bounds, as the servicers take them."""
        return RequestLimits(max_request_rows=self.max_request_rows,
                             max_request_decoded_bytes=self.max_request_decoded_bytes)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_grpc_threads(workers: int = 1) -> int:
    """Handler threads of ``navi serve`` when not configured: the usable cores over
    ``workers`` (each worker process has its own), 2 to 8.

    Every handler thread runs Python under one GIL, so threads beyond the
    cores only add GIL hand-offs and context switches: fewer threads
    answered more tiny requests at less CPU each (benchmarks/RESULTS.md,
    "Design measurements"). Threads asleep while their request waits in a
    batch do not count: up to
    ``grpc_max_threads`` hold requests (``navi.server.threads.HandlerPool``).
    """
    return max(2, min(8, usable_cores() // max(1, workers)))
