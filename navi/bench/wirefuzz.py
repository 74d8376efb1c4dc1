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

    @property
    def rss_growth(self) -> float:
        return self.rss_end_bytes / self.rss_warm_bytes - 1 if self.rss_warm_bytes else 0.0


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
                    report.sent += 1
                    report.codes[(origin.path.rsplit("/", 1)[1], code)] += 1
                    report.slowest_s = max(report.slowest_s, elapsed)
                    if why and len(report.violations) < 200:
                        report.violations.append((origin.path, why, details[:300], payload[:64].hex()))
                    if progress is not None and report.sent % 10_000 == 0:
                        progress(report)

        def run(total: int) -> None:
            shares = [total // threads + (i < total % threads) for i in range(threads)]
            with ThreadPoolExecutor(threads) as pool:
                for done in [pool.submit(worker, n) for n in shares]:
                    done.result()

        run(warmup)
        report.rss_warm_bytes = rss_bytes(pid)
        run(count)
        report.rss_end_bytes = rss_bytes(pid)
        after = reference_answers(channel, seeds)
    report.references_identical = before == after
    report.reference_diffs = [(i, b[:2], a[:2]) for i, (b, a) in enumerate(zip(before, after)) if a != b]
    report.elapsed_s = time.monotonic() - started
    return report
