"""`navi bench serve`: load a running TF Serving (or KServe V2) compatible server.

This module builds the request pool (BPR file, generated home workload, or
dense random inputs from the model's metadata), serializes every request once
with navi's generated protobuf modules, and drives the targets with the
multi-process load generator of ``navi.bench.loadgen``. Runs are interleaved
(for each repeat, each load level, each target) so drift on a shared machine
hits every target alike. It also holds the "bare transport" server: a minimal
sync gRPC server answering constant bytes without parsing, the transport
ceiling a Python server is compared with.
"""
from __future__ import annotations

import math
import os
import platform
import struct
import time
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from navi.bench.loadgen import ClientPool, LoadSpec, RunMeasurement
from navi.bench.stats import latency_summary_ms

#: Full gRPC method paths (sent as raw bytes, so no stub is involved).
TF_PREDICT = "/tensorflow.serving.PredictionService/Predict"
TF_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"
KSERVE_METADATA = "/inference.GRPCInferenceService/ModelMetadata"

PROTOCOLS = ("tfserving", "kserve")

# TensorFlow DataType enum values used by TF Serving's TensorProto.
_TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    7: np.dtype(object),  # DT_STRING
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    19: np.dtype(np.float16),
}
_TF_DTYPE_OF = {dtype: code for code, dtype in _TF_DTYPES.items()}
DT_STRING = 7

# KServe V2 datatype names.
_KSERVE_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "INT16": np.dtype(np.int16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    "FP16": np.dtype(np.float16),
    "BYTES": np.dtype(object),
}
_KSERVE_NAME_OF = {dtype: name for name, dtype in _KSERVE_DTYPES.items()}


@dataclass(frozen=True)
class Target:
    """A server to load: a display name and a ``host:port`` address."""

    name: str
    address: str
    #: PID of the server process when known (local), for server CPU per request
    pid: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``host:port`` or ``name=host:port`` (the name defaults to the address)."""
        name, sep, address = text.partition("=")
        if not sep:
            name, address = text, text
        if ":" not in address:
            raise ValueError(f"target {text!r}: expected host:port or name=host:port")
        return cls(name=name.strip(), address=address.strip())


@dataclass
class Workload:
    """A pool of pre-serialized requests and the rows each one carries."""

    description: str
    payloads: list[bytes]
    rows: list[int]
    method: str

    @property
    def mean_request_bytes(self) -> float:
        """Average serialized request size."""
        return float(np.mean([len(p) for p in self.payloads])) if self.payloads else 0.0


# --------------------------------------------------------------------------- #
# generated protobuf modules (built from protos/ into navi._proto at install)


def _tf_protos():
    """navi._proto's TF Serving modules (predict, get_model_metadata)."""
    try:
        from navi._proto.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
    except ImportError as error:  # the build step generates these
        raise RuntimeError(
            "navi._proto is missing: reinstall navi (pip install -e .) to generate the gRPC modules"
        ) from error
    return predict_pb2, get_model_metadata_pb2


def _kserve_protos():
    """navi._proto's KServe V2 module."""
    try:
        from navi._proto.kserve import grpc_predict_v2_pb2
    except ImportError as error:
        raise RuntimeError(
            "navi._proto.kserve is missing: reinstall navi (pip install -e .) to generate it"
        ) from error
    return grpc_predict_v2_pb2


# --------------------------------------------------------------------------- #
# request encoding


def encode_tf_predict(
    model: str,
    inputs: dict[str, np.ndarray | Sequence[bytes]],
    signature_name: str = "",
    version: int | None = None,
    output_filter: Sequence[str] = (),
) -> bytes:
    """Serialize a TF Serving PredictRequest.

    Numeric arrays travel in ``tensor_content``; a list of bytes (or an object
    array) becomes a 1-D DT_STRING tensor in ``string_val``.
    """
    predict_pb2, _ = _tf_protos()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature_name:
        request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        tensor = request.inputs[name]
        if isinstance(value, np.ndarray) and value.dtype != object:
            array = np.ascontiguousarray(value)
            code = _TF_DTYPE_OF.get(array.dtype)
            if code is None:
                raise ValueError(f"input {name!r}: dtype {array.dtype} has no TF Serving equivalent")
            tensor.dtype = code
            for size in array.shape:
                tensor.tensor_shape.dim.add().size = size
            tensor.tensor_content = array.tobytes()
        else:
            strings = [bytes(v) for v in value]
            tensor.dtype = DT_STRING
            tensor.tensor_shape.dim.add().size = len(strings)
            tensor.string_val.extend(strings)
    request.output_filter.extend(output_filter)
    return request.SerializeToString()


def encode_kserve_infer(
    model: str,
    inputs: dict[str, np.ndarray | Sequence[bytes]],
    version: str = "",
) -> bytes:
    """Serialize a KServe V2 ModelInferRequest with every input in ``raw_input_contents``.

    BYTES elements are each prefixed with their 4-byte little-endian length,
    as the V2 protocol's raw encoding specifies.
    """
    pb2 = _kserve_protos()
    request = pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, value in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        if isinstance(value, np.ndarray) and value.dtype != object:
            array = np.ascontiguousarray(value)
            datatype = _KSERVE_NAME_OF.get(array.dtype)
            if datatype is None:
                raise ValueError(f"input {name!r}: dtype {array.dtype} has no KServe V2 datatype")
            tensor.datatype = datatype
            tensor.shape.extend(array.shape)
            request.raw_input_contents.append(array.tobytes())
        else:
            strings = [bytes(v) for v in value]
            tensor.datatype = "BYTES"
            tensor.shape.append(len(strings))
            request.raw_input_contents.append(b"".join(struct.pack("<I", len(s)) + s for s in strings))
    return request.SerializeToString()


def encode_request(protocol: str, model: str, inputs: dict, signature_name: str = "", version: int | None = None) -> bytes:
    """Serialize one request in the given protocol."""
    if protocol == "kserve":
        return encode_kserve_infer(model, inputs, "" if version is None else str(version))
    return encode_tf_predict(model, inputs, signature_name, version)


def predict_method(protocol: str) -> str:
    """The gRPC method path requests of ``protocol`` go to."""
    return KSERVE_INFER if protocol == "kserve" else TF_PREDICT


# --------------------------------------------------------------------------- #
# talking to a target directly (metadata, probes): a few calls, parsed


@dataclass(frozen=True)
class InputInfo:
    """One model input as the server describes it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def fetch_inputs(address: str, model: str, protocol: str, signature_name: str = "serving_default",
                 timeout_s: float = 10.0) -> list[InputInfo]:
    """Ask a server for a model's inputs (GetModelMetadata or V2 ModelMetadata)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        if protocol == "kserve":
            pb2 = _kserve_protos()
            call = channel.unary_unary(
                KSERVE_METADATA,
                request_serializer=pb2.ModelMetadataRequest.SerializeToString,
                response_deserializer=pb2.ModelMetadataResponse.FromString,
            )
            response = call(pb2.ModelMetadataRequest(name=model), timeout=timeout_s)
            return [
                InputInfo(t.name, _KSERVE_DTYPES.get(t.datatype, np.dtype(np.float32)), tuple(t.shape))
                for t in response.inputs
            ]
        _, meta_pb2 = _tf_protos()
        call = channel.unary_unary(
            TF_METADATA,
            request_serializer=meta_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=meta_pb2.GetModelMetadataResponse.FromString,
        )
        request = meta_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = call(request, timeout=timeout_s)
        signature_map = meta_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = signature_map.signature_def
        if signature_name not in signatures:
            if not signatures:
                raise RuntimeError(f"model {model!r} at {address} reports no signature")
            signature_name = sorted(signatures)[0]
        result = []
        for key, info in sorted(signatures[signature_name].inputs.items()):
            shape = tuple(-1 if d.size < 0 else d.size for d in info.tensor_shape.dim)
            result.append(InputInfo(key, _TF_DTYPES.get(info.dtype, np.dtype(np.float32)), shape))
        return result


def probe_rows(address: str, method: str, payload: bytes, protocol: str, timeout_s: float = 30.0) -> int:
    """Send one request and return the first output's leading dimension (its rows).

    Raises ``RuntimeError`` naming the status when the target refuses it: a
    benchmark against a target that answers errors is pointless.
    """
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 30),
                                                 ("grpc.max_send_message_length", 1 << 30)]) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            raw = call(payload, timeout=timeout_s)
        except grpc.RpcError as error:
            raise RuntimeError(f"{address} answered {error.code().name}: {error.details()}") from error
    if protocol == "kserve":
        response = _kserve_protos().ModelInferResponse.FromString(raw)
        return int(response.outputs[0].shape[0]) if response.outputs and response.outputs[0].shape else 1
    predict_pb2, _ = _tf_protos()
    response = predict_pb2.PredictResponse.FromString(raw)
    for _, tensor in sorted(response.outputs.items()):
        if tensor.tensor_shape.dim:
            return int(tensor.tensor_shape.dim[0].size)
    return 1


# --------------------------------------------------------------------------- #
# workloads


def read_bpr_file(path: Path) -> list[bytes]:
    """Read serialized BPRs: base64 lines, or u32 little-endian length-prefixed records.

    The format is detected as ``navi convert`` does (``navi.bprfile``); a
    record that cannot be read stops the benchmark with its number.
    """
    from navi import bprfile

    records = []
    with open(path, "rb") as stream:
        for record in bprfile.iter_records(stream):
            if record.payload is None:
                raise ValueError(f"{path}: record {record.number}: {record.error}")
            records.append(record.payload)
    if not records:
        raise ValueError(f"{path}: no BPR records")
    return records


def _group(records: Sequence[bytes], per_request: int, max_requests: int) -> list[list[bytes]]:
    """Group records into requests of ``per_request`` (cycling through the records)."""
    n_requests = max(1, min(max_requests, math.ceil(len(records) / per_request)))
    return [[records[(r * per_request + i) % len(records)] for i in range(per_request)] for r in range(n_requests)]


def bpr_workload(
    records: Sequence[bytes],
    protocol: str,
    model: str,
    input_name: str = "examples",
    bprs_per_request: int = 1,
    rows_per_record: Sequence[int] | None = None,
    signature_name: str = "",
    distinct_requests: int = 64,
) -> Workload:
    """Requests carrying serialized BPRs in one string tensor named ``input_name``.

    ``rows_per_record`` gives each record's candidate count when known
    (otherwise rows are left 0 for ``run_serve_bench`` to probe).
    """
    groups = _group(list(records), bprs_per_request, distinct_requests)
    index_groups = _group(list(range(len(records))), bprs_per_request, distinct_requests)
    payloads = [encode_request(protocol, model, {input_name: g}, signature_name) for g in groups]
    if rows_per_record is not None:
        rows = [int(sum(rows_per_record[i] for i in ig)) for ig in index_groups]
    else:
        rows = [0] * len(payloads)
    return Workload(
        description=f"BPR x{bprs_per_request} per request",
        payloads=payloads,
        rows=rows,
        method=predict_method(protocol),
    )


def home_workload(
    protocol: str,
    model: str,
    candidates: int = 100,
    bprs_per_request: int = 1,
    input_name: str = "examples",
    spec_dir: Path | None = None,
    seed: int = 0,
    distinct_requests: int = 8,
    signature_name: str = "",
) -> Workload:
    """A generated home-recap workload (``navi.workload.make_bprs``).

    The layout comes from ``spec_dir`` (a model version directory holding the
    segdense spec files) or, without one, from the example layout files
    ``navi.workload`` generates.
    """
    import tempfile

    from navi import segdense, workload

    with tempfile.TemporaryDirectory(prefix="navi-bench-") as tmp:
        if spec_dir is None:
            workload.home_layout_files(Path(tmp), seed=seed)
            spec_dir = Path(tmp)
        found = segdense.find_spec_files(Path(spec_dir))
        if found is None:
            raise ValueError(f"{spec_dir}: no segdense spec files (spec + all_config.json)")
        layout = segdense.load_layout(*found)
    records = workload.make_bprs(layout, distinct_requests * bprs_per_request, candidates, seed)
    groups = _group(records, bprs_per_request, distinct_requests)
    payloads = [encode_request(protocol, model, {input_name: g}, signature_name) for g in groups]
    return Workload(
        description=f"home BPR, {candidates} candidates x{bprs_per_request} per request",
        payloads=payloads,
        rows=[candidates * bprs_per_request] * len(payloads),
        method=predict_method(protocol),
    )


def random_inputs(inputs: Sequence[InputInfo], batch_rows: int, rng: np.random.Generator) -> dict:
    """Random arrays matching the model's inputs, ``batch_rows`` on the batch axis."""
    result: dict[str, np.ndarray | list[bytes]] = {}
    for info in inputs:
        shape = info.shape or (-1,)
        # the leading -1 is the batch; any other unknown dimension gets 1
        shape = tuple(batch_rows if (i == 0 and d < 0) else (1 if d < 0 else d) for i, d in enumerate(shape))
        if info.dtype == object:
            result[info.name] = [b"x%d" % i for i in range(int(np.prod(shape)))]
        elif info.dtype.kind == "f":
            result[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            result[info.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            result[info.name] = rng.integers(0, 10, size=shape).astype(info.dtype)
    return result


def dense_workload(
    protocol: str,
    model: str,
    inputs: Sequence[InputInfo],
    batch_rows: int = 1,
    seed: int = 0,
    distinct_requests: int = 16,
    signature_name: str = "",
) -> Workload:
    """Dense random requests shaped after the model's metadata."""
    rng = np.random.default_rng(seed)
    payloads = [
        encode_request(protocol, model, random_inputs(inputs, batch_rows, rng), signature_name)
        for _ in range(distinct_requests)
    ]
    return Workload(
        description=f"dense random, {batch_rows} rows per request",
        payloads=payloads,
        rows=[batch_rows] * len(payloads),
        method=predict_method(protocol),
    )


# --------------------------------------------------------------------------- #
# the bare transport server


def constant_predict_response(rows: int = 1, model: str = "bare") -> bytes:
    """Serialized PredictResponse with one float output of ``rows`` x 1 zeros."""
    predict_pb2, _ = _tf_protos()
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model
    tensor = response.outputs["output_0"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = rows
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_content = np.zeros((rows, 1), np.float32).tobytes()
    return response.SerializeToString()


def start_bare_server(port: int, response: bytes = b"", threads: int = 16, host: str = "127.0.0.1"):
    """Start a sync gRPC server answering every unary method with ``response``.

    Nothing is parsed: the request arrives as bytes and the constant bytes go
    back, so it measures what gRPC in Python costs and nothing else. Returns
    the started ``grpc.Server`` and its bound port (``port`` 0 picks one).
    """
    import grpc

    def handle(request: bytes, context) -> bytes:
        return response

    handler = grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=None)

    class AnyMethod(grpc.GenericRpcHandler):
        def service(self, handler_call_details):
            return handler

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        handlers=[AnyMethod()],
        options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)],
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for servers the benchmarks start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(address: str, timeout_s: float = 120.0, health_service: str | None = "",
                       process=None) -> None:
    """Block until a server at ``address`` is up.

    With ``health_service`` (a string; "" = the whole server) the gRPC health
    service must answer SERVING; with None, an open channel is enough (the
    bare server has no health service). ``process``, when given, is a
    ``subprocess.Popen`` whose early exit aborts the wait.
    """
    import grpc

    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process for {address} exited with code {process.returncode}")
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
                if health_service is None:
                    return
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=health_service), timeout=2.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.FutureTimeoutError:
                last_error = "not accepting connections"
            except grpc.RpcError as error:
                last_error = error.code().name
        time.sleep(0.25)
    raise TimeoutError(f"{address} not serving after {timeout_s:.0f} s ({last_error})")


def launch_server(command: Sequence[str], address: str, timeout_s: float = 180.0, health_service: str | None = "",
                  log_path: Path | None = None):
    """Start a server subprocess and wait until it serves; returns the ``subprocess.Popen``.

    Its output goes to ``log_path`` (or is discarded). The caller stops it
    (``stop_server``).
    """
    import subprocess

    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(address, timeout_s, health_service, process)
    except BaseException:
        stop_server(process)
        raise
    return process


def stop_server(process, grace_s: float = 15.0) -> None:
    """SIGTERM a server subprocess, SIGKILL it if it outlives ``grace_s``."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- #
# running a benchmark


@dataclass
class ServeBenchConfig:
    """Everything one `navi bench serve` invocation runs."""

    targets: list[Target]
    protocol: str = "tfserving"
    concurrencies: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    duration_s: float | None = 10.0
    requests: int | None = None
    warmup_s: float = 2.0
    repeats: int = 1
    client_processes: int | None = None
    channels_per_process: int = 1
    timeout_s: float = 30.0


def machine_info() -> dict[str, object]:
    """Cores, CPU model, platform and Python, recorded with every result."""
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a local process has used, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # fields after the ")" start at field 3 (state): utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / ticks


def run_record(target: Target, spec: LoadSpec, repeat: int, measurement: RunMeasurement,
                server_cpu_s: float | None) -> dict[str, object]:
    """The JSON record of one run."""
    record: dict[str, object] = {
        "target": target.name,
        "address": target.address,
        "mode": spec.mode,
        "repeat": repeat,
    }
    if spec.mode == "closed":
        record["concurrency"] = int(spec.level)
    else:
        record["rate"] = float(spec.level)
    ok = int(measurement.latencies_s.size)
    record.update(
        {
            "requests": measurement.requests,
            "ok": ok,
            "elapsed_s": measurement.elapsed_s,
            "requests_per_s": measurement.requests_per_s,
            "rows_per_s": measurement.rows_per_s,
            "latency_ms": latency_summary_ms(measurement.latencies_s),
            "errors": dict(sorted(measurement.errors.items())),
            "client_processes": measurement.client_processes,
            "client_cpu_s": measurement.client_cpu_s,
            "client_cpu_s_per_request": (
                measurement.client_cpu_s / measurement.total_requests if measurement.total_requests else math.nan
            ),
            # share of the client processes' time spent on CPU (warm-up included); near 1 means
            # the client, not the server, may have set the pace
            "client_cpu_utilization": (
                measurement.client_cpu_s / ((measurement.elapsed_s + spec.warmup_s) * measurement.client_processes)
                if measurement.elapsed_s > 0 else math.nan
            ),
            "server_cpu_s_per_request": (
                server_cpu_s / measurement.total_requests
                if server_cpu_s is not None and measurement.total_requests
                else None
            ),
        }
    )
    if spec.mode == "open":
        record["scheduled"] = measurement.scheduled
    return record


def check_reachable(target: Target, timeout_s: float = 10.0) -> None:
    """Raise ``RuntimeError`` naming the target when no gRPC connection opens within ``timeout_s``.

    Without it, a closed loop against a dead address spins through instant
    UNAVAILABLE failures for the whole run.
    """
    import grpc

    with grpc.insecure_channel(target.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"target {target.name} ({target.address}) accepts no gRPC connection "
                               f"within {timeout_s:.0f} s") from None


def load_specs(config: ServeBenchConfig) -> list[LoadSpec]:
    """The load levels of a run, closed loop first, in the order given."""
    common = dict(warmup_s=config.warmup_s, duration_s=config.duration_s, requests=config.requests,
                  timeout_s=config.timeout_s)
    specs = [LoadSpec("closed", float(c), **common) for c in config.concurrencies]
    specs += [LoadSpec("open", float(r), **common) for r in config.rates]
    if not specs:
        raise ValueError("give at least one --concurrency or --rate")
    return specs


def run_serve_bench(
    config: ServeBenchConfig,
    workload: Workload,
    on_event: Callable[[str, dict], None] | None = None,
    pool: ClientPool | None = None,
) -> dict[str, object]:
    """Run every (repeat, load, target) combination, interleaved; return the result document.

    ``on_event(kind, data)`` receives "start" (before each run, with the run's
    labels and a ``progress`` callable returning completed requests), "poll"
    and "done" (with the run record) for live display. Rows per request that
    the workload does not know are probed from the first target's answer.
    """
    if not config.targets:
        raise ValueError("give at least one --target")
    specs = load_specs(config)
    emit = on_event or (lambda kind, data: None)
    for target in config.targets:
        check_reachable(target, timeout_s=min(10.0, config.timeout_s))
    if any(r <= 0 for r in workload.rows):
        probed = probe_rows(config.targets[0].address, workload.method, workload.payloads[0], config.protocol,
                            config.timeout_s)
        # payloads built from the same number of records carry similar rows
        workload.rows = [r if r > 0 else probed for r in workload.rows]
    own_pool = pool is None
    pool = pool or ClientPool(config.client_processes, config.channels_per_process)
    started = datetime.now(timezone.utc)
    runs: list[dict[str, object]] = []
    try:
        workload_id = pool.load_workload(workload.payloads, workload.rows)
        total = config.repeats * len(specs) * len(config.targets)
        for repeat in range(config.repeats):
            for spec in specs:
                for target in config.targets:
                    before = pool.completed()
                    labels = {"index": len(runs), "total": total, "target": target.name, "mode": spec.mode,
                              "level": spec.level, "repeat": repeat,
                              "progress": lambda b=before: pool.completed() - b}
                    emit("start", labels)
                    cpu_before = process_cpu_s(target.pid) if target.pid else None
                    measurement = pool.run(target.address, workload.method, workload_id, spec,
                                           poll=lambda l=labels: emit("poll", l))
                    cpu_after = process_cpu_s(target.pid) if target.pid else None
                    server_cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
                    record = run_record(target, spec, repeat, measurement, server_cpu)
                    runs.append(record)
                    emit("done", record)
    finally:
        if own_pool:
            pool.close()
    return {
        "schema": "navi.bench.serve/1",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "workload": {
            "description": workload.description,
            "distinct_requests": len(workload.payloads),
            "mean_request_bytes": workload.mean_request_bytes,
            "rows_per_request": float(np.mean(workload.rows)) if workload.rows else 0.0,
            "method": workload.method,
        },
        "settings": {
            "protocol": config.protocol,
            "duration_s": config.duration_s,
            "requests": config.requests,
            "warmup_s": config.warmup_s,
            "repeats": config.repeats,
            "client_processes": pool.processes,
            "channels_per_process": config.channels_per_process,
        },
        "targets": [{"name": t.name, "address": t.address} for t in config.targets],
        "runs": runs,
    }


# --------------------------------------------------------------------------- #
# the serving suite behind benchmarks/RESULTS.md (issue 3, section 8)


def latest_version_dir(model_dir: Path) -> Path:
    """The newest version directory of a model (numeric names compared as numbers)."""
    versions = [p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ValueError(f"{model_dir}: no version directories")
    return max(versions, key=lambda p: int(p.name))


def run_serve_suite(
    models_dir: Path,
    work_dir: Path,
    phases: Sequence[str] = ("heavy", "small", "tiny"),
    concurrencies: Sequence[int] = (1, 4, 16),
    tiny_concurrencies: Sequence[int] = (1, 8, 32),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    repeats: int = 1,
    client_processes: int | None = None,
    candidates: int = 100,
    ceiling_min_time_s: float = 1.0,
    ceiling_repeats: int = 3,
    heavy_rounds: int = 3,
    server_args: Sequence[str] = (),
    log: Callable[[str], None] = lambda text: None,
    on_event: Callable[[str, dict], None] | None = None,
) -> dict[str, object]:
    """navi against the bare transport server, next to the in-process ceiling, in one run.

    ``models_dir`` holds the demo models (``home``, ``dense``); the heavy home
    model is built into ``work_dir/models`` once (``navi.demo``). Phases:
    "heavy" and "small" send 100-candidate BPR requests to the heavy / small
    home model, "tiny" sends one-row dense requests to the dense model. The
    ceiling (converter + ONNX Runtime with the server's threads: intra-op 1,
    two batches in flight) is measured before the servers start. The heavy
    phase runs in ``heavy_rounds`` rounds with the ceiling measured again
    (at its best batch size) between them, so each round's serving figure is
    compared with the ceiling of the same minutes: the machine's speed drifts
    more over a suite than the ratio being judged. Server logs go to
    ``work_dir``. Returns the suite document with ``criteria`` filled in.
    """
    import sys

    from navi import demo
    from navi.bench import runtime
    from navi.settings import default_grpc_threads

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    heavy_dir = demo.ensure_heavy_model(work_dir / "models")
    small_dir = Path(models_dir) / "home"
    dense_dir = Path(models_dir) / "dense"
    navi_port, bare_port = free_port(), free_port()
    # both servers get navi's default handler thread count: the bare server,
    # too, answers more with fewer threads, and the ceiling must be its best
    threads = str(default_grpc_threads())
    navi_cmd = [sys.executable, "-m", "navi.cli.main", "serve", "--port", str(navi_port), "--host", "127.0.0.1",
                "--prometheus-port", "0", "--grpc-threads", threads,
                "--model-dir", str(heavy_dir), "--model-dir", str(small_dir), "--model-dir", str(dense_dir),
                "--input", "examples", "--input", "examples", "--input", "", "--output", "", *server_args]
    bare_cmd = [sys.executable, "-m", "navi.cli.main", "bench", "bare-server", "--port", str(bare_port),
                "--rows", "1", "--threads", threads]
    document: dict = {"schema": "navi.bench.serve-suite/1", "machine": machine_info(),
                      "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "commands": {"navi": navi_cmd, "bare": bare_cmd}, "phases": {}, "ceilings": {}}

    def run_ceiling(model_dir: Path, bprs_per_batch: Sequence[int]) -> tuple[dict, dict]:
        """(best convert+run result, whole runtime-bench document) of the in-process loop."""
        result = runtime.run_runtime_bench(runtimes=[], home=True, home_model_dir=model_dir,
                                           home_bprs_per_batch=tuple(bprs_per_batch), candidates=candidates,
                                           threads=1, callers=2, repeats=ceiling_repeats,
                                           min_time_s=ceiling_min_time_s)
        best = max((r for r in result["results"] if r["case"] == "home convert+run"),
                   key=lambda r: r["rows_per_s"]["median"])
        return best, result

    def measure_ceilings(when: str) -> None:
        for phase, model_dir in (("heavy", heavy_dir), ("small", small_dir)):
            if phase not in phases:
                continue
            if when == "after" and phase == "heavy" and "heavy_rounds" in document:
                continue  # measured after every heavy round already, at its best batch size
            log(f"in-process ceiling {when}, {phase} model (converter + ONNX Runtime, intra-op 1, 2 batches in flight)")
            best, result = run_ceiling(model_dir, (1, 4, 16))
            if when == "before":
                document["ceilings"][phase] = {"rows_per_s": best["rows_per_s"]["median"],
                                               "batch_rows": best["batch_rows"], "results": result["results"]}
            else:
                # The machine's speed drifts over the minutes the servers run: the
                # ceiling is measured on both sides of them and the higher one counts.
                ceiling = document["ceilings"][phase]
                ceiling["rows_per_s_before"] = ceiling["rows_per_s"]
                ceiling["rows_per_s_after"] = best["rows_per_s"]["median"]
                ceiling["rows_per_s"] = max(ceiling["rows_per_s_before"], ceiling["rows_per_s_after"])

    def paired_heavy_rounds(config: ServeBenchConfig, workload: Workload, pool: ClientPool) -> tuple[dict, list]:
        """The heavy phase in rounds, the ceiling (its best batch size) measured between them."""
        bprs = max(1, round(document["ceilings"]["heavy"]["batch_rows"] / candidates))
        ceilings = [document["ceilings"]["heavy"]["rows_per_s"]]
        merged: dict | None = None
        rounds = []
        for round_index in range(heavy_rounds):
            result = run_serve_bench(config, workload, on_event=on_event, pool=pool)
            for run in result["runs"]:
                run["repeat"] = round_index
            if merged is None:
                merged = result
            else:
                merged["runs"].extend(result["runs"])
                merged["finished_at"] = result["finished_at"]
            log(f"in-process ceiling after heavy round {round_index + 1}/{heavy_rounds} ({bprs} BPR per batch)")
            ceilings.append(run_ceiling(heavy_dir, (bprs,))[0]["rows_per_s"]["median"])
            navi_runs = [r for r in result["runs"] if r["target"] == "navi"]
            best = max(navi_runs, key=lambda r: r["rows_per_s"] or 0)
            rounds.append({"ceiling_before": ceilings[-2], "ceiling_after": ceilings[-1],
                           "navi_rows_per_s": best["rows_per_s"], "concurrency": best.get("concurrency")})
        return merged, rounds

    measure_ceilings("before")

    log("starting navi and the bare server")
    navi_proc = launch_server(navi_cmd, f"127.0.0.1:{navi_port}", health_service="",
                              log_path=work_dir / "navi-serve.log")
    try:
        bare_proc = launch_server(bare_cmd, f"127.0.0.1:{bare_port}", health_service=None,
                                  log_path=work_dir / "bare-server.log")
    except BaseException:
        stop_server(navi_proc)
        raise
    # bare first: ratios then read "navi / bare" (req/s < 1 and p50 > 1 mean navi is slower)
    targets = [Target("bare", f"127.0.0.1:{bare_port}", bare_proc.pid),
               Target("navi", f"127.0.0.1:{navi_port}", navi_proc.pid)]
    try:
        with ClientPool(client_processes) as pool:
            for phase in phases:
                if phase == "tiny":
                    inputs = fetch_inputs(f"127.0.0.1:{navi_port}", "dense", "tfserving")
                    workload = dense_workload("tfserving", "dense", inputs, batch_rows=1)
                    levels = list(tiny_concurrencies)
                else:
                    model_dir = heavy_dir if phase == "heavy" else small_dir
                    workload = home_workload("tfserving", model_dir.name, candidates=candidates,
                                             spec_dir=latest_version_dir(model_dir))
                    levels = list(concurrencies)
                log(f"phase {phase}: {workload.description}, {workload.mean_request_bytes / 1024:,.0f} KiB per request")
                if phase == "heavy" and heavy_rounds > 1:
                    document["phases"][phase], document["heavy_rounds"] = paired_heavy_rounds(
                        ServeBenchConfig(targets=targets, concurrencies=levels, duration_s=duration_s,
                                         warmup_s=warmup_s, repeats=1, client_processes=pool.processes),
                        workload, pool)
                    continue
                config = ServeBenchConfig(targets=targets, concurrencies=levels, duration_s=duration_s,
                                          warmup_s=warmup_s, repeats=repeats, client_processes=pool.processes)
                document["phases"][phase] = run_serve_bench(config, workload, on_event=on_event, pool=pool)
    finally:
        stop_server(navi_proc)
        stop_server(bare_proc)
    measure_ceilings("after")
    document["criteria"] = suite_criteria(document)
    return document


def suite_criteria(document: dict) -> dict:
    """The issue's "done when" ratios from a suite document (with their wording)."""
    from navi.bench.report import summarize_runs

    def rows(phase: str, target: str) -> list[dict]:
        result = document["phases"].get(phase) or {}
        return [r for r in summarize_runs(result.get("runs", [])) if r["target"] == target]

    out: dict = {"lines": []}
    heavy = rows("heavy", "navi")
    paired = document.get("heavy_rounds")
    if paired:
        # each round against the mean of the ceilings measured just before and after it
        arounds = [(r["ceiling_before"] + r["ceiling_after"]) / 2 for r in paired]
        ratios = [r["navi_rows_per_s"] / around for r, around in zip(paired, arounds)]
        out["heavy_vs_ceiling"] = float(np.median(ratios))
        out["heavy_vs_ceiling_min"] = min(ratios)
        each = "; ".join(f"{r['navi_rows_per_s']:,.0f} rows/s at c={r['concurrency']} vs {around:,.0f} = {ratio:.2f}x"
                         for r, around, ratio in zip(paired, arounds, ratios))
        out["lines"].append(f"(a) heavy BPR serving vs the in-process ceiling measured on both sides of each round: "
                            f"median {out['heavy_vs_ceiling']:.2f}x, min {out['heavy_vs_ceiling_min']:.2f}x "
                            f"over {len(paired)} rounds ({each}) (target >= 0.8x)")
    elif heavy and "heavy" in document.get("ceilings", {}):
        best = max(heavy, key=lambda r: r["rows_per_s"] or 0)
        measured = document["ceilings"]["heavy"]
        ceiling = measured["rows_per_s"]
        out["heavy_vs_ceiling"] = best["rows_per_s"] / ceiling
        sides = ""
        if "rows_per_s_after" in measured:
            sides = (f" (the higher of {measured['rows_per_s_before']:,.0f} before and "
                     f"{measured['rows_per_s_after']:,.0f} after the server runs)")
        out["lines"].append(f"(a) heavy BPR serving {best['rows_per_s']:,.0f} rows/s at c={best['concurrency']} "
                            f"= {out['heavy_vs_ceiling']:.2f}x the in-process ceiling {ceiling:,.0f} rows/s"
                            f"{sides} (target >= 0.8x)")
    small, small_bare = rows("small", "navi"), rows("small", "bare")
    if small and small_bare:
        best = max(small, key=lambda r: r["requests_per_s"] or 0)
        best_bare = max(small_bare, key=lambda r: r["requests_per_s"] or 0)
        out["small_vs_bare"] = best["requests_per_s"] / best_bare["requests_per_s"]
        out["lines"].append(f"(b) small BPR serving {best['requests_per_s']:,.0f} req/s (c={best['concurrency']}) "
                            f"vs bare {best_bare['requests_per_s']:,.0f} req/s (c={best_bare['concurrency']}) "
                            f"= {out['small_vs_bare']:.2f}x (target >= 0.8x)")
    tiny, tiny_bare = rows("tiny", "navi"), rows("tiny", "bare")
    if tiny and tiny_bare:
        ratios = {}
        for row in tiny:
            bare = next((b for b in tiny_bare if b["concurrency"] == row["concurrency"]), None)
            if bare:
                ratios[row["concurrency"]] = row["latency_ms"]["p50"] / bare["latency_ms"]["p50"]
        out["tiny_p50_vs_bare"] = ratios
        text = ", ".join(f"c={c}: {r:.2f}x" for c, r in ratios.items())
        out["lines"].append(f"(c) tiny requests p50 vs bare: {text} (target <= 1.5x)")
    return out
