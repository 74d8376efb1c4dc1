"""Wire fuzzing of every RPC of a running navi daemon.

``requests(seed)`` yields hostile requests without end: for every method of
every service navi serves (TF Serving PredictionService and ModelService,
KServe V2, gRPC health), mutations of a valid seed request. Half are
*structured* (the message is parsed, a field is given a contradictory or
absurd value, and it is serialized again: shape vs value count,
``tensor_content`` length vs dtype, dims whose product overflows int64,
negative dims, unknown dtypes, empty / unicode / ``../`` / 5,000-character
model names, absurd versions, 1,000 inputs, one value broadcast to a huge
shape, KServe BYTES lengths past the content, plus a random field of the
message set to an edge value) and half are *byte-level* (random bytes,
truncation, bit flips, a length-delimited field declared longer than the
message, splices of two seeds).

``fuzz(address, pid, count, seed)`` sends them from a few client threads,
each with a deadline, and checks every answer: a gRPC status with a message,
never UNKNOWN or INTERNAL (a client's mistake), never CANCELLED, never later
than the deadline. Before and after, it sends a fixed set of valid requests
and compares the daemon's answers byte for byte; it reads the daemon's RSS
after a warm-up and at the end. ``benchmarks/wire_fuzz.py`` runs it at
scale, ``tests/integration/test_wire_fuzz.py`` a CI-sized run.
"""
from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from navi._proto.kserve import grpc_predict_v2_pb2 as kserve_pb2
from navi._proto.tensorflow.core.example import example_pb2
from navi._proto.tensorflow.core.framework import types_pb2
from navi._proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)
from navi.codec import encode_varint

PREDICTION = "/tensorflow.serving.PredictionService/"
MODEL_SERVICE = "/tensorflow.serving.ModelService/"
KSERVE = "/inference.GRPCInferenceService/"
HEALTH = "/grpc.health.v1.Health/"

#: statuses that say "the server failed", never right for a client's mistake
FORBIDDEN_CODES = ("UNKNOWN", "INTERNAL", "CANCELLED", "DATA_LOSS")

#: names a client may send for a model
HOSTILE_NAMES = ("", "../dense", "../../etc/passwd", "dense/../home", "模型", "dense\x00", "a" * 5000,
                 " dense", "DENSE", "\u202edense", "home")
#: int64 edge values for versions, dims and counts
EDGE_INTS = (0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**45, 2**62, 2**63 - 1, -(2**63), -(2**31))


def _bpr(model_dir: Path) -> bytes:
    from navi.segdense import find_spec_files, load_layout
    from navi.workload import make_bprs

    version_dir = next(p for p in sorted(Path(model_dir).iterdir()) if p.is_dir())
    layout = load_layout(*find_spec_files(version_dir))
    return make_bprs(layout, 1, candidates=3, seed=7, continuous_per_candidate=20, binary_per_candidate=2,
                     discrete_per_candidate=2)[0]


def _example(values) -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.extend(values)
    return example


@dataclass(frozen=True)
class Seed:
    """One valid request: its method path, message and whether the method streams answers."""

    path: str
    message: object
    streaming: bool = False

    def payload(self) -> bytes:
        return self.message.SerializeToString()


def valid_seeds(bpr_model_dir: Path, dense_model: str = "dense", bpr_model: str = "home") -> list[Seed]:
    """A valid request of every method (several for the inference methods)."""
    seeds: list[Seed] = []
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 32

    dense = predict_pb2.PredictRequest()
    dense.model_spec.name = dense_model
    tensor = dense.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=16)
    tensor.tensor_content = x.tobytes()
    seeds.append(Seed(PREDICTION + "Predict", dense))

    dense_vals = predict_pb2.PredictRequest()
    dense_vals.CopyFrom(dense)
    dense_vals.inputs["x"].ClearField("tensor_content")
    dense_vals.inputs["x"].float_val.extend(x.ravel().tolist())
    seeds.append(Seed(PREDICTION + "Predict", dense_vals))

    bpr = predict_pb2.PredictRequest()
    bpr.model_spec.name = bpr_model
    tensor = bpr.inputs["examples"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(_bpr(bpr_model_dir))
    seeds.append(Seed(PREDICTION + "Predict", bpr))

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = dense_model
    metadata.metadata_field.append("signature_def")
    seeds.append(Seed(PREDICTION + "GetModelMetadata", metadata))

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = dense_model
    classify.input.example_list.examples.append(_example([0.5] * 16))
    seeds.append(Seed(PREDICTION + "Classify", classify))

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = dense_model
    regress.input.example_list.examples.append(_example([0.25] * 16))
    seeds.append(Seed(PREDICTION + "Regress", regress))

    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name = dense_model
    task.method_name = "tensorflow/serving/regress"
    multi.input.example_list.examples.append(_example([0.75] * 16))
    seeds.append(Seed(PREDICTION + "MultiInference", multi))

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = dense_model
    seeds.append(Seed(MODEL_SERVICE + "GetModelStatus", status))
    seeds.append(Seed(MODEL_SERVICE + "HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest()))

    seeds.append(Seed(KSERVE + "ServerLive", kserve_pb2.ServerLiveRequest()))
    seeds.append(Seed(KSERVE + "ServerReady", kserve_pb2.ServerReadyRequest()))
    seeds.append(Seed(KSERVE + "ServerMetadata", kserve_pb2.ServerMetadataRequest()))
    seeds.append(Seed(KSERVE + "ModelReady", kserve_pb2.ModelReadyRequest(name=dense_model)))
    seeds.append(Seed(KSERVE + "ModelMetadata", kserve_pb2.ModelMetadataRequest(name=bpr_model)))
    infer = kserve_pb2.ModelInferRequest(model_name=dense_model, id="fuzz")
    infer.inputs.add(name="x", datatype="FP32", shape=[2, 16])
    infer.raw_input_contents.append(x.tobytes())
    seeds.append(Seed(KSERVE + "ModelInfer", infer))
    infer_contents = kserve_pb2.ModelInferRequest(model_name=dense_model)
    infer_contents.inputs.add(name="x", datatype="FP32", shape=[2, 16]).contents.fp32_contents.extend(
        x.ravel().tolist())
    seeds.append(Seed(KSERVE + "ModelInfer", infer_contents))
    infer_bpr = kserve_pb2.ModelInferRequest(model_name=bpr_model)
    infer_bpr.inputs.add(name="examples", datatype="BYTES", shape=[1])
    payload = bpr.inputs["examples"].string_val[0]
    infer_bpr.raw_input_contents.append(len(payload).to_bytes(4, "little") + payload)
    seeds.append(Seed(KSERVE + "ModelInfer", infer_bpr))

    seeds.append(Seed(HEALTH + "Check", health_pb2.HealthCheckRequest(service="")))
    seeds.append(Seed(HEALTH + "Check", health_pb2.HealthCheckRequest(service=dense_model)))
    seeds.append(Seed(HEALTH + "Watch", health_pb2.HealthCheckRequest(service=dense_model), streaming=True))
    return seeds


#: the valid requests whose answers must not change (index into ``valid_seeds``);
#: deterministic answers only (not ServerMetadata's, which is the same anyway)
REFERENCE_PATHS = ("Predict", "GetModelMetadata", "GetModelStatus", "ModelInfer", "ModelMetadata", "Check",
                   "ServerLive", "ServerReady", "ModelReady")


# ----------------------------------------------------------------- structured mutations

def _tensors(message) -> list:
    """TensorProtos (TF) or InferInputTensors (KServe) inside ``message``."""
    if isinstance(message, predict_pb2.PredictRequest):
        return list(message.inputs.values())
    if isinstance(message, kserve_pb2.ModelInferRequest):
        return list(message.inputs)
    return []


def _set_dims(tensor, dims) -> None:
    if hasattr(tensor, "tensor_shape"):
        tensor.tensor_shape.ClearField("dim")
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
    else:
        del tensor.shape[:]
        tensor.shape.extend(dims)


def _dims_overflow(rng, message) -> None:
    for tensor in _tensors(message):
        _set_dims(tensor, rng.choice([[2**32, 2**32], [2**62, 4], [2**31, 2**31, 2**31], [3, 2**63 - 1],
                                      [2**21] * 3]))


def _negative_dims(rng, message) -> None:
    for tensor in _tensors(message):
        _set_dims(tensor, rng.choice([[-1], [-5, 16], [2, -16], [-(2**63)], [0, -1]]))


def _shape_vs_values(rng, message) -> None:
    for tensor in _tensors(message):
        _set_dims(tensor, [rng.choice([0, 1, 3, 7, 100, 2**20]), rng.choice([1, 16, 17])])


def _broadcast_huge(rng, message) -> None:
    for tensor in _tensors(message):
        _set_dims(tensor, rng.choice([[2**40], [2**20, 2**20], [10**6, 16], [2000]]))
        if hasattr(tensor, "tensor_content"):
            if tensor.dtype == types_pb2.DT_STRING:
                del tensor.string_val[1:]
            else:
                tensor.ClearField("tensor_content")
                del tensor.float_val[:]
                tensor.float_val.append(1.0)
        elif message.raw_input_contents:
            raw = message.raw_input_contents[0]
            message.raw_input_contents[0] = raw[:4] if tensor.datatype == "FP32" else raw


def _content_vs_dtype(rng, message) -> None:
    for tensor in _tensors(message):
        if hasattr(tensor, "tensor_content"):
            tensor.tensor_content = rng.randbytes(rng.choice([0, 1, 3, 127, 129, 4096]))
            tensor.dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT64,
                                       types_pb2.DT_HALF, types_pb2.DT_BOOL, types_pb2.DT_STRING])
    if isinstance(message, kserve_pb2.ModelInferRequest) and message.raw_input_contents:
        message.raw_input_contents[0] = rng.randbytes(rng.choice([0, 1, 3, 127, 129]))


def _unknown_dtype(rng, message) -> None:
    for tensor in _tensors(message):
        if hasattr(tensor, "tensor_content"):
            tensor.dtype = rng.choice([0, 23, 99, 101, 124, 2**31 - 1, -1])
        else:
            tensor.datatype = rng.choice(["", "FP128", "fp32", "BYTES\x00", "STRING", "INT4", "x" * 300])


def _string_lengths_past_end(rng, message) -> None:
    if isinstance(message, kserve_pb2.ModelInferRequest):
        for i, raw in enumerate(message.raw_input_contents):
            message.raw_input_contents[i] = rng.choice([0xFFFFFFFF, 2**31, len(raw) + 1]).to_bytes(4, "little") + raw[4:]
    for tensor in _tensors(message):
        if hasattr(tensor, "string_val") and tensor.string_val:
            # a BPR whose inner lengths run past its end
            value = tensor.string_val[0]
            cut = rng.randrange(1, max(2, len(value)))
            tensor.string_val[0] = value[:cut]


def _model_name(rng, message) -> None:
    name = rng.choice(HOSTILE_NAMES)
    if hasattr(message, "model_spec"):
        message.model_spec.name = name
    elif hasattr(message, "model_name"):
        message.model_name = name
    elif hasattr(message, "name"):
        message.name = name
    elif hasattr(message, "service"):
        message.service = name
    elif hasattr(message, "tasks"):
        for task in message.tasks:
            task.model_spec.name = name


def _version(rng, message) -> None:
    specs = [message.model_spec] if hasattr(message, "model_spec") else []
    if hasattr(message, "tasks"):
        specs = [task.model_spec for task in message.tasks]
    for spec in specs:
        if rng.random() < 0.7:
            spec.version.value = rng.choice(EDGE_INTS)
        else:
            spec.version_label = rng.choice(["", "stable", "../x", "é" * 100, "canary"])
    if hasattr(message, "model_version"):
        message.model_version = rng.choice(["-1", "9" * 40, "1e3", "0x10", " 1", "١", str(2**63), "abc"])
    if hasattr(message, "version") and isinstance(message, (kserve_pb2.ModelReadyRequest,
                                                            kserve_pb2.ModelMetadataRequest)):
        message.version = rng.choice(["-1", "9" * 40, str(2**64), "", "latest"])


def _many_inputs(rng, message) -> None:
    count = rng.choice([1000, 1001, 2048])
    if isinstance(message, predict_pb2.PredictRequest):
        template = next(iter(message.inputs.values()), None)
        for i in range(count):
            tensor = message.inputs[f"in{i}"]
            if template is not None:
                tensor.CopyFrom(template)
    elif isinstance(message, kserve_pb2.ModelInferRequest):
        template = message.inputs[0] if message.inputs else kserve_pb2.ModelInferRequest.InferInputTensor()
        for i in range(count):
            added = message.inputs.add()
            added.CopyFrom(template)
            added.name = f"in{i}"
        if message.raw_input_contents:
            message.raw_input_contents.extend([message.raw_input_contents[0]] * count)
    elif hasattr(message, "tasks"):
        for _ in range(min(count, 1000)):
            message.tasks.add().CopyFrom(message.tasks[0])
    elif hasattr(message, "input"):
        message.input.example_list.examples.extend([_example([1.0])] * count)


def _output_filter(rng, message) -> None:
    if isinstance(message, predict_pb2.PredictRequest):
        message.output_filter.extend(rng.choice([["nope"], ["y", "y"], [""], ["y"] * 500]))
    elif isinstance(message, kserve_pb2.ModelInferRequest):
        for name in rng.choice([["nope"], ["y", "y"], [""]]):
            message.outputs.add(name=name)


def _examples(rng, message) -> None:
    if not hasattr(message, "input") or isinstance(message, (predict_pb2.PredictRequest,)):
        return
    examples = message.input.example_list.examples
    choice = rng.randrange(4)
    if choice == 0:
        del examples[:]
    elif choice == 1:
        examples[0].features.feature["x"].bytes_list.value.append(rng.randbytes(10))
    elif choice == 2:
        examples[0].features.feature["x"].float_list.value.extend([float("nan")] * rng.choice([1, 100, 10**4]))
    else:
        context = message.input.example_list_with_context
        context.context.features.feature["y"].int64_list.value.append(2**63 - 1)


def _random_field(rng, message, depth: int = 0) -> None:
    """Set one field, anywhere in the message, to an edge value of its type."""
    fields = message.DESCRIPTOR.fields
    if not fields:
        return
    fd = rng.choice(fields)
    repeated = getattr(fd, "is_repeated", None)
    if repeated is None:
        repeated = fd.label == fd.LABEL_REPEATED
    if fd.message_type is not None:
        if fd.message_type.GetOptions().map_entry:
            return
        if repeated:
            target = getattr(message, fd.name).add()
        else:
            target = getattr(message, fd.name)
        if depth < 4:
            _random_field(rng, target, depth + 1)
        return
    if fd.type in (fd.TYPE_STRING,):
        value = rng.choice(HOSTILE_NAMES)
    elif fd.type == fd.TYPE_BYTES:
        value = rng.randbytes(rng.choice([0, 1, 4, 64]))
    elif fd.type == fd.TYPE_BOOL:
        value = rng.random() < 0.5
    elif fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        value = rng.choice([float("nan"), float("inf"), -0.0, 1e38])
    elif fd.type == fd.TYPE_ENUM:
        value = rng.choice([0, 1, 99, -1])
    else:
        value = rng.choice(EDGE_INTS)
        if fd.type in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
            value = value % 2**32
        elif fd.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
            value = value % 2**64
        elif fd.type in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32):
            value = max(-(2**31), min(2**31 - 1, value))
    try:
        if repeated:
            getattr(message, fd.name).extend([value] * rng.choice([1, 3]))
        else:
            setattr(message, fd.name, value)
    except (TypeError, ValueError):
        pass  # e.g. an enum value the runtime refuses: skip this one


STRUCTURED: tuple[Callable, ...] = (
    _dims_overflow, _negative_dims, _shape_vs_values, _broadcast_huge, _content_vs_dtype, _unknown_dtype,
    _string_lengths_past_end, _model_name, _version, _many_inputs, _output_filter, _examples, _random_field,
)


def structured_mutation(rng: random.Random, seed: Seed) -> bytes:
    """The seed with one to three contradictions applied."""
    message = type(seed.message)()
    message.CopyFrom(seed.message)
    for mutate in rng.sample(STRUCTURED, rng.choice([1, 1, 2, 3])):
        try:
            mutate(rng, message)
        except (IndexError, TypeError, ValueError):
            pass  # a mutation that does not fit this message (e.g. a field it lacks)
    return message.SerializeToString()


# ----------------------------------------------------------------- byte-level mutations

def byte_mutation(rng: random.Random, payload: bytes, other: bytes) -> bytes:
    """``payload`` damaged at the byte level."""
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.choice([1, 2, 5, 16, 200, 4096]))
    if choice == 1 and payload:
        return payload[: rng.randrange(len(payload))]
    data = bytearray(payload)
    if choice == 2 and data:
        for _ in range(rng.choice([1, 2, 8])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 3:
        # a length-delimited field declared longer than what follows
        number = rng.choice([1, 2, 3, 4, 5, 6, 7])
        declared = rng.choice([len(data) + 1, 2**31 - 1, 2**32 + 5, 2**62])
        return bytes(data) + encode_varint(number << 3 | 2) + encode_varint(declared) + b"abc"
    if choice == 4 and data:
        at = rng.randrange(len(data))
        return bytes(data[:at] + data[at + rng.randrange(1, 9):])
    if choice == 5:
        at = rng.randrange(len(data) + 1)
        return bytes(data[:at]) + rng.randbytes(rng.randrange(1, 9)) + bytes(data[at:])
    return payload[: rng.randrange(len(payload) + 1)] + other[rng.randrange(len(other) + 1):]


def requests(seeds: list[Seed], seed: int = 0) -> Iterator[tuple[Seed, bytes]]:
    """Hostile requests for ever: (the seed it came from, the bytes to send)."""
    rng = random.Random(seed)
    payloads = [s.payload() for s in seeds]
    while True:
        index = rng.randrange(len(seeds))
        if rng.random() < 0.5:
            yield seeds[index], structured_mutation(rng, seeds[index])
        else:
            yield seeds[index], byte_mutation(rng, payloads[index], rng.choice(payloads))


# ----------------------------------------------------------------- the run

def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def call(channel: grpc.Channel, seed: Seed, payload: bytes, timeout_s: float) -> tuple[str, str, bytes]:
    """Send ``payload`` to ``seed.path``: (status code name, details, answer bytes or b"")."""
    try:
        if seed.streaming:
            stream = channel.unary_stream(seed.path, request_serializer=None, response_deserializer=None)(
                payload, timeout=timeout_s)
            try:
                answer = next(iter(stream))
            finally:
                stream.cancel()
            return "OK", "", answer
        answer = channel.unary_unary(seed.path, request_serializer=None, response_deserializer=None)(
            payload, timeout=timeout_s)
        return "OK", "", answer
    except grpc.RpcError as error:
        return error.code().name, error.details() or "", b""


def reference_answers(channel: grpc.Channel, seeds: list[Seed]) -> list[tuple[str, str, bytes]]:
    """Answers to the valid seeds of ``REFERENCE_PATHS``, one at a time."""
    return [call(channel, s, s.payload(), 30.0) for s in seeds
            if s.path.rsplit("/", 1)[1] in REFERENCE_PATHS and not s.streaming]


@dataclass
class FuzzReport:
    """What one fuzz run saw."""

    sent: int = 0
    codes: Counter = field(default_factory=Counter)
    #: (method, code, details, payload hex prefix) of every answer that broke a rule
    violations: list = field(default_factory=list)
    slowest_s: float = 0.0
    rss_warm_bytes: int = 0
    rss_end_bytes: int = 0
    references_identical: bool = False
    reference_diffs: list = field(default_factory=list)
    elapsed_s: float = 0.0

    def record(self, key, elapsed_s: float, violation: tuple | None, progress) -> None:
        """Count one answer (``key``: route and status), keep a violation (the first 200)."""
        self.sent += 1
        self.codes[key] += 1
        self.slowest_s = max(self.slowest_s, elapsed_s)
        if violation and len(self.violations) < 200:
            self.violations.append(violation)
        if progress is not None and self.sent % 10_000 == 0:
            progress(self)

    @property
    def rss_growth(self) -> float:
        return self.rss_end_bytes / self.rss_warm_bytes - 1 if self.rss_warm_bytes else 0.0


def _spread(worker: Callable[[int], None], total: int, threads: int) -> None:
    """``worker(n)`` on ``threads`` threads, the ``total`` requests shared between them."""
    shares = [total // threads + (i < total % threads) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(worker, n) for n in shares]:
            done.result()


def _check(seed: Seed, payload: bytes, code: str, details: str, elapsed_s: float, timeout_s: float) -> str:
    """Why this answer breaks a rule, or ""."""
    if code in FORBIDDEN_CODES:
        return f"{code} for a client's request"
    if code == "DEADLINE_EXCEEDED" and elapsed_s > timeout_s + 1.0:
        return f"answered {elapsed_s:.1f} s after a {timeout_s:.0f} s deadline"
    if code == "DEADLINE_EXCEEDED" and not seed.streaming:
        return "hung until the deadline"
    if code != "OK" and not details.strip():
        return f"{code} with no message"
    return ""


def fuzz(address: str, pid: int, seeds: list[Seed], count: int, seed: int = 0, warmup: int = 0,
         threads: int = 4, timeout_s: float = 10.0, channel_options=(), progress=None) -> FuzzReport:
    """Send ``warmup`` then ``count`` hostile requests to ``address`` (the daemon is ``pid``)."""
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20),
               *channel_options]
    report = FuzzReport()
    lock = threading.Lock()
    source = requests(seeds, seed)
    started = time.monotonic()
    with grpc.insecure_channel(address, options=options) as channel:
        before = reference_answers(channel, seeds)

        def worker(n: int) -> None:
            for _ in range(n):
                with lock:
                    origin, payload = next(source)
                t0 = time.monotonic()
                code, details, _ = call(channel, origin, payload, timeout_s)
                elapsed = time.monotonic() - t0
                why = _check(origin, payload, code, details, elapsed, timeout_s)
                with lock:
                    report.record((origin.path.rsplit("/", 1)[1], code), elapsed,
                                  why and (origin.path, why, details[:300], payload[:64].hex()), progress)

        _spread(worker, warmup, threads)
        report.rss_warm_bytes = rss_bytes(pid)
        _spread(worker, count, threads)
        report.rss_end_bytes = rss_bytes(pid)
        after = reference_answers(channel, seeds)
    report.references_identical = before == after
    report.reference_diffs = [(i, b[:2], a[:2]) for i, (b, a) in enumerate(zip(before, after)) if a != b]
    report.elapsed_s = time.monotonic() - started
    return report


# ================================================================= the REST routes (HTTP)
#
# The same idea over the REST port: valid requests of every TF Serving REST and
# KServe V2 HTTP route, mutated at the JSON level (wrong types, absurd shapes,
# b64 garbage, hostile model names), at the framing of V2's binary extension
# (Inference-Header-Content-Length and binary_data_size past the body, not
# numbers), with gzip bodies that are bombs or not gzip at all, and bytes
# damaged. Every answer must be a 4xx (or a route's own 501/503) with a JSON
# ``{"error": ...}`` body, never a 5xx for a client's mistake, never a hang.


@dataclass(frozen=True)
class HttpSeed:
    """One valid REST request."""

    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def route(self) -> str:
        """A short name of the route, for counting answers."""
        path = self.path.split("?")[0]
        if path.startswith("/v1/"):
            verb = path.rsplit(":", 1)[1] if ":" in path.rsplit("/", 1)[-1] else (
                "metadata" if path.endswith("/metadata") else "status")
            return f"tfrest {self.method} {verb}"
        tail = path.rsplit("/", 1)[-1]
        tail = tail if tail in ("infer", "ready", "config", "live") else ("model" if "/models/" in path else tail)
        return f"v2 {self.method} {tail}"


@dataclass
class HttpRequest:
    """What a mutation sends: method, path, headers and body (Content-Length added unless given)."""

    method: str
    path: str
    headers: dict
    body: bytes
    #: the body is cut short of its Content-Length: closing without an answer is right
    truncated: bool = False


def _json_bytes(value) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()


def http_seeds(bpr_model_dir: Path, dense_model: str = "dense", bpr_model: str = "home") -> list[HttpSeed]:
    """A valid request of every REST route (several for the inference routes)."""
    import base64

    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 32
    bpr = _bpr(bpr_model_dir)
    json_type = (("Content-Type", "application/json"),)
    seeds = [HttpSeed("GET", f"/v1/models/{dense_model}"),
             HttpSeed("GET", f"/v1/models/{dense_model}/metadata"),
             HttpSeed("GET", f"/v1/models/{bpr_model}/metadata"),
             HttpSeed("POST", f"/v1/models/{dense_model}:predict", _json_bytes({"instances": x.tolist()}), json_type),
             HttpSeed("POST", f"/v1/models/{dense_model}:predict", _json_bytes({"inputs": {"x": x.tolist()}}),
                      json_type),
             HttpSeed("POST", f"/v1/models/{bpr_model}:predict",
                      _json_bytes({"instances": [{"b64": base64.b64encode(bpr).decode()}]}), json_type),
             HttpSeed("POST", f"/v1/models/{dense_model}:classify", _json_bytes({"examples": [{"x": [0.5] * 16}]}),
                      json_type),
             HttpSeed("POST", f"/v1/models/{dense_model}:regress",
                      _json_bytes({"examples": [{"x": [0.5] * 16}], "context": {"c": 1}}), json_type),
             HttpSeed("GET", "/v2"), HttpSeed("GET", "/v2/health/live"), HttpSeed("GET", "/v2/health/ready"),
             HttpSeed("GET", f"/v2/models/{dense_model}"), HttpSeed("GET", f"/v2/models/{dense_model}/ready"),
             HttpSeed("GET", f"/v2/models/{bpr_model}/config"),
             HttpSeed("POST", f"/v2/models/{dense_model}/infer", _json_bytes({
                 "id": "fuzz", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                           "data": x.ravel().tolist()}]}), json_type)]
    header = _json_bytes({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                      "parameters": {"binary_data_size": x.nbytes}}],
                          "parameters": {"binary_data_output": True}})
    seeds.append(HttpSeed("POST", f"/v2/models/{dense_model}/infer", header + x.tobytes(),
                          (("Content-Type", "application/octet-stream"),
                           ("Inference-Header-Content-Length", str(len(header))))))
    element = len(bpr).to_bytes(4, "little") + bpr
    header = _json_bytes({"inputs": [{"name": "examples", "datatype": "BYTES", "shape": [1],
                                      "parameters": {"binary_data_size": len(element)}}]})
    seeds.append(HttpSeed("POST", f"/v2/models/{bpr_model}/versions/1700000000000/infer", header + element,
                          (("Content-Type", "application/octet-stream"),
                           ("Inference-Header-Content-Length", str(len(header))))))
    return seeds


#: hostile model names in a URL (percent-encoded where a raw byte would not be a valid request line)
HOSTILE_URL_NAMES = ("", "..", "%2e%2e", "..%2fdense", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%E6%A8%A1%E5%9E%8B",
                     "dense%00", "a" * 5000, "%20dense", "DENSE", "%E2%80%AEdense", "%ff%fe", "home")
#: JSON values of every type, for the places a mutation puts them
ODD_JSON = (None, True, False, 0, -1, 2**64, -(2**63) - 1, 1e308, -1e-320, "", "x", "NaN", [], {}, [[]], [None],
            {"b64": "***"}, {"b64": 12}, {"b64": "YQ"}, "a" * 10000, [1.5] * 3, {"": {}})


def _rename_model(rng: random.Random, path: str) -> str:
    parts = path.split("/")
    if len(parts) > 3 and parts[2] == "models":
        tail = parts[3]
        verb = ":" + tail.split(":", 1)[1] if ":" in tail else ""
        parts[3] = rng.choice(HOSTILE_URL_NAMES) + verb
    return "/".join(parts)


def _walk(value, rng: random.Random, depth: int = 0):
    """``value`` with one node somewhere replaced by an odd JSON value."""
    if depth > 6 or rng.random() < 0.25:
        return rng.choice(ODD_JSON)
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        out = dict(value)
        out[key] = _walk(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value:
        index = rng.randrange(len(value))
        out = list(value)
        out[index] = _walk(value[index], rng, depth + 1)
        return out
    return rng.choice(ODD_JSON)


def _v2_header_and_tail(seed: HttpSeed) -> tuple[dict | None, bytes]:
    import json

    headers = dict(seed.headers)
    length = headers.get("Inference-Header-Content-Length")
    cut = int(length) if length is not None else len(seed.body)
    try:
        return json.loads(seed.body[:cut]), seed.body[cut:]
    except ValueError:
        return None, b""


def http_mutation(rng: random.Random, seed: HttpSeed, other: HttpSeed) -> HttpRequest:
    """``seed`` with one hostile change."""
    import gzip
    import json

    request = HttpRequest(seed.method, seed.path, dict(seed.headers), seed.body)
    choice = rng.randrange(12)
    if choice == 0:  # hostile model names, versions and labels in the path
        request.path = _rename_model(rng, seed.path)
        if rng.random() < 0.5 and "/models/" in request.path:
            marker = "/versions/" if request.path.startswith("/v2") else rng.choice(["/versions/", "/labels/"])
            head, _, rest = request.path.partition("/models/")
            name, sep, tail = rest.partition("/") if "/" in rest else rest.partition(":")
            request.path = (f"/{head.strip('/')}/models/{name}{marker}"
                            f"{rng.choice(['-1', '9' * 40, '0x10', '%20', 'latest', '..', str(2**63)])}"
                            + ("" if not sep else (sep + tail if sep == ":" else "/" + tail)))
    elif choice == 1 and seed.body:  # a node of the JSON replaced by a value of another type
        header, tail = _v2_header_and_tail(seed)
        if header is not None:
            new = _json_bytes(_walk(header, rng)) if rng.random() < 0.9 else json.dumps(
                _walk(header, rng), allow_nan=True).encode()
            request.body = new + tail
            if "Inference-Header-Content-Length" in request.headers:
                request.headers["Inference-Header-Content-Length"] = str(len(new))
    elif choice == 2 and seed.body:  # absurd shapes
        header, tail = _v2_header_and_tail(seed)
        shape = rng.choice([[2**40], [2**32, 2**32], [-1], [-5, 16], [], [0], [2**62, 4], [3, 2**63 - 1],
                            [1.5], ["2"], [True], [10**6, 16], [2000]])
        if header and isinstance(header.get("inputs"), list):
            for tensor in header["inputs"]:
                tensor["shape"] = shape
            new = _json_bytes(header)
        elif header and "instances" in header:
            new = _json_bytes({"instances": np.zeros(shape[:1] if shape and isinstance(shape[0], int)
                                                     and 0 <= shape[0] <= 2000 else [1]).tolist()})
        else:
            new = seed.body
        request.body = new + tail
        if "Inference-Header-Content-Length" in request.headers:
            request.headers["Inference-Header-Content-Length"] = str(len(new))
    elif choice == 3:  # the binary extension's lengths: header length and binary_data_size
        header, tail = _v2_header_and_tail(seed)
        if rng.random() < 0.5 or header is None:
            request.headers["Inference-Header-Content-Length"] = rng.choice(
                [str(len(seed.body) + 1), str(2**63), "-1", "0", "", "1e3", " 12", "0x20", "12abc", "٣"])
        else:
            inputs = header.get("inputs") if isinstance(header.get("inputs"), list) else []
            for tensor in inputs:
                tensor.setdefault("parameters", {})["binary_data_size"] = rng.choice(
                    [len(tail) + 1, -1, 2**63, "12", None, 1.5, 0])
            new = _json_bytes(header)
            request.body = new + tail
            request.headers["Inference-Header-Content-Length"] = str(len(new))
    elif choice == 4:  # not JSON at all, or JSON of the wrong kind
        request.body = rng.choice([b"", b"{", b"}", b"null", b"[]", b'"x"', b"1", b"\xff\xfe", b"{\"inputs\": [}",
                                   b"[" * 100_000, b'{"a":' * 50_000, b"NaN", rng.randbytes(64)])
        request.headers.pop("Inference-Header-Content-Length", None)
    elif choice == 5:  # gzip: a bomb (a few KB inflating past the size limit), or not gzip
        kind = rng.randrange(4)
        if kind == 0:
            request.body = _gzip_bomb()
        elif kind == 1:
            request.body = gzip.compress(seed.body)
        else:
            request.body = rng.choice([b"\x1f\x8b\x08garbage", rng.randbytes(32), _gzip_bomb()[:100]])
        request.headers["Content-Encoding"] = rng.choice(["gzip", "gzip", "deflate", "br", "x-unknown"])
    elif choice == 6 and seed.body:  # bytes damaged, Content-Length kept right
        request.body = byte_mutation(rng, seed.body, other.body or seed.body)
    elif choice == 7 and seed.body:  # the body cut short of its Content-Length
        cut = rng.randrange(len(seed.body))
        request.headers["Content-Length"] = str(len(seed.body))
        request.body = seed.body[:cut]
        request.truncated = True
    elif choice == 8:  # the wrong method, or a route that does not exist
        request.method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "GET" if seed.method == "POST" else "POST"])
        if rng.random() < 0.5:
            request.path = rng.choice(["/v1/models", "/v1/models/", "/v2/models", "/v1/models/dense:", "/v1",
                                       "/v2/models/dense/infer/extra", "/v1/models/dense:predict:predict",
                                       "/%2e%2e/%2e%2e/etc/passwd", "/v2/repository/index", "//v2//health/ready"])
    elif choice == 9 and seed.body:  # many inputs, or huge JSON data
        header, tail = _v2_header_and_tail(seed)
        if header and isinstance(header.get("inputs"), list):
            template = header["inputs"][0]
            header["inputs"] = [dict(template, name=f"in{i}") for i in range(rng.choice([1000, 2048]))]
            new = _json_bytes(header)
        else:
            new = _json_bytes({"instances": [[0.0] * 16] * rng.choice([1000, 20000]), "inputs": {}}
                              if rng.random() < 0.5 else {"instances": [[0.0] * 16] * rng.choice([1000, 20000])})
        request.body = new + tail
        if "Inference-Header-Content-Length" in request.headers:
            request.headers["Inference-Header-Content-Length"] = str(len(new))
    elif choice == 10:  # odd headers
        request.headers["Content-Type"] = rng.choice(["text/plain", "application/json; charset=latin-1",
                                                      "multipart/form-data; boundary=x", "", "application/x-protobuf"])
        if rng.random() < 0.3:
            request.headers["Accept-Encoding"] = "gzip"
    else:  # b64 garbage where binary strings go
        header, tail = _v2_header_and_tail(seed)
        if header is not None and tail == b"":
            text = json.dumps(header)
            request.body = text.replace('"b64": "', '"b64": "' + rng.choice(["***", "=", "YQ", "\\u0000", "é"]), 1
                                        ).encode() if '"b64"' in text else _json_bytes(
                {"instances": [{"b64": rng.choice(["***", "YQ", "=", 7, None, ""])}]})
    return request


#: what the gzip bomb inflates to: past the default max_message_bytes (64 MiB)
GZIP_BOMB_BYTES = 256 << 20


@functools.lru_cache(maxsize=1)
def _gzip_bomb() -> bytes:
    """``GZIP_BOMB_BYTES`` of a JSON-looking body, gzipped (about 250 KB), made once."""
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = b" " * (1 << 20)
    parts = [compressor.compress(b"{")] + [compressor.compress(block) for _ in range(GZIP_BOMB_BYTES >> 20)]
    return b"".join(parts) + compressor.flush()


def http_requests(seeds: list[HttpSeed], seed: int = 0) -> Iterator[tuple[HttpSeed, HttpRequest]]:
    """Hostile REST requests for ever: (the seed it came from, the request)."""
    rng = random.Random(seed)
    while True:
        origin = rng.choice(seeds)
        try:
            yield origin, http_mutation(rng, origin, rng.choice(seeds))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # a mutation that does not fit this seed's JSON


class HttpClient:
    """A minimal HTTP/1.1 client on one kept-alive socket: sends what it is given, as given.

    ``http.client`` and ``requests`` refuse or repair what a fuzzer must send
    (a Content-Length longer than the body, a non-numeric header); this one
    writes the bytes and reads one answer (Content-Length or chunked).
    """

    def __init__(self, host: str, port: int, timeout_s: float):
        self._address = (host, port)
        self._timeout_s = timeout_s
        self._sock = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buffer = None, b""

    def send(self, request: HttpRequest) -> tuple[int, dict, bytes]:
        import socket

        reused = self._sock is not None
        answer = self._send_once(request)
        if answer[0] == 0 and reused and not request.truncated:
            # the server may close a kept-alive connection between requests (after a 413 whose
            # body it did not read): clients send again on a new one, as HTTP allows
            answer = self._send_once(request)
        return answer

    def _send_once(self, request: HttpRequest) -> tuple[int, dict, bytes]:
        import socket

        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self._timeout_s)
        headers = {"Host": "%s:%d" % self._address, **request.headers}
        if not any(k.lower() == "content-length" for k in headers) and (request.body or request.method == "POST"):
            headers["Content-Length"] = str(len(request.body))
        head = f"{request.method} {request.path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            self._sock.sendall(head.encode("utf-8", "surrogateescape") + request.body)
            if request.truncated:
                self._sock.shutdown(socket.SHUT_WR)
            answer = self._read()
        except (ConnectionError, OSError) as error:
            self.close()
            if isinstance(error, socket.timeout):
                raise
            return 0, {}, b""
        if request.truncated or answer[1].get("connection", "").lower() == "close":
            self.close()
        return answer

    def _fill(self) -> None:
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read(self) -> tuple[int, dict, bytes]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._exactly(size)
                self._exactly(2)
            while self._line():
                pass
        else:
            body = self._exactly(int(headers.get("content-length", 0)))
        return status, headers, body


#: statuses a route may answer to a well-formed request that it cannot serve
ROUTE_STATUSES = {501, 503}


def check_http(request: HttpRequest, status: int, headers: dict, body: bytes, elapsed_s: float,
               timeout_s: float) -> str:
    """Why this REST answer breaks a rule, or ""."""
    import gzip
    import json

    if status == 0:
        return "" if request.truncated else "the connection closed without an answer"
    if status >= 500 and status not in ROUTE_STATUSES:
        return f"HTTP {status} for a client's request"
    if elapsed_s > timeout_s:
        return f"answered after {elapsed_s:.1f} s"
    if status < 400:
        return ""
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    try:
        answer = json.loads(body)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {body[:80]!r}"
    if status == 503 and isinstance(answer, dict) and "ready" in answer:
        return ""  # a readiness route's "not ready"
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str) or not answer["error"].strip():
        return f"HTTP {status} without an error message: {body[:80]!r}"
    return ""


def http_reference_answers(client: HttpClient, seeds: list[HttpSeed]) -> list[tuple[int, bytes]]:
    """(status, body) of every valid seed, one at a time."""
    return [client.send(HttpRequest(s.method, s.path, dict(s.headers), s.body))[::2] for s in seeds]


def fuzz_http(host: str, port: int, pid: int, seeds: list[HttpSeed], count: int, seed: int = 0, warmup: int = 0,
              threads: int = 4, timeout_s: float = 30.0, progress=None) -> FuzzReport:
    """Send ``warmup`` then ``count`` hostile REST requests to ``host:port`` (the daemon is ``pid``)."""
    import socket

    report = FuzzReport()
    lock = threading.Lock()
    source = http_requests(seeds, seed)
    started = time.monotonic()
    reference_client = HttpClient(host, port, timeout_s)
    before = http_reference_answers(reference_client, seeds)

    def worker(n: int) -> None:
        client = HttpClient(host, port, timeout_s)
        try:
            for _ in range(n):
                with lock:
                    origin, request = next(source)
                t0 = time.monotonic()
                try:
                    status, headers, body = client.send(request)
                except socket.timeout:
                    client.close()
                    status, headers, body = -1, {}, b""
                elapsed = time.monotonic() - t0
                why = "no answer within the timeout (a hang)" if status == -1 else check_http(
                    request, status, headers, body, elapsed, timeout_s)
                with lock:
                    report.record((origin.route, status), elapsed, why and (
                        f"{request.method} {request.path[:120]}", why, body[:300], request.body[:64].hex()), progress)
        finally:
            client.close()

    _spread(worker, warmup, threads)
    report.rss_warm_bytes = rss_bytes(pid)
    _spread(worker, count, threads)
    report.rss_end_bytes = rss_bytes(pid)
    after = http_reference_answers(reference_client, seeds)
    reference_client.close()
    report.references_identical = before == after
    report.reference_diffs = [(i, b[0], a[0], b[1][:80], a[1][:80]) for i, (b, a) in enumerate(zip(before, after))
                              if a != b]
    report.elapsed_s = time.monotonic() - started
    return report
