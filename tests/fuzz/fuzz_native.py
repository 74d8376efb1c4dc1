"""Coverage-guided fuzzing of the compiled BPR decoder and PredictRequest scanner.

Run by ``tests/fuzz/native.sh`` (``make fuzz-native``), which builds
``navi/_fast``'s extensions with clang, AddressSanitizer, UndefinedBehavior-
Sanitizer and libFuzzer's coverage counters, and runs this file under atheris
(libFuzzer) with the sanitizer runtime preloaded. Not a pytest module.

    python tests/fuzz/fuzz_native.py --write-seeds DIR   # the seed corpus
    python tests/fuzz/fuzz_native.py [libFuzzer flags] CORPUS_DIR...

The first byte of an input picks what runs on the rest:
    bit 0   0 = BprDecoder (count_rows, then decode_into), 1 = split_string_values
    bit 1   layout: the small test layout, or the home layout
    bit 2   streaming stores (stream_min_bytes 0) or rows written in place
    bit 3   a decoder that also counts reported features
    bit 4   the payload as bytes, or as an exact-size numpy buffer (ASan then
            sees one byte past the end: a bytes object has a NUL there)
    bit 5   one payload, or the same payload twice in one call

Anything but a decode (or a DecodeError) is a finding: a sanitizer report, a
crash, another exception, a row count that differs between count_rows and
decode_into, a scanner answer that differs from its reference twin's or a
value range outside the request.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# the decoder tests' small layout from the checkout; the package itself from
# PYTHONPATH first (native.sh points it at the sanitizer build)
sys.path.append(str(ROOT))

from navi._fast._bpr import BprDecoder  # noqa: E402
from navi._fast._pbscan import split_string_values  # noqa: E402
from navi._fast._pbscan_ref import split_string_values as split_string_values_ref  # noqa: E402
from navi.errors import DecodeError  # noqa: E402
from navi.metrics import FEATURE_VALUE_BUCKETS  # noqa: E402
from navi.segdense import load_layout  # noqa: E402
from navi.workload import home_layout_files, make_bprs  # noqa: E402
from tests.unit.bpr_helpers import BIN, BPR, CONT, DISC, EMB, small_layout  # noqa: E402

# rows per payload, by layout: bounds what one input allocates and fills (a
# home row is 27 KB; with 64 of them, an input of 64 empty candidates, the
# run slowed from ~16,000 to ~2,000 executions a second)
MAX_ROWS = (64, 4)
LAYOUTS = [small_layout(), load_layout(*home_layout_files(Path(tempfile.mkdtemp(prefix="navi-fuzz-"))))]


def reported(layout) -> tuple[list[int], list[int]]:
    """Reported ids: layout ids of both kinds, a continuous id counted in the
    discrete maps, and ids the layout does not know."""
    cont, disc = list(layout.continuous_ids[:3]), list(layout.discrete_ids[:2])
    return cont + [7, 2**62], disc + cont[:1] + [-9]


# [layout][streaming][reporting]
DECODERS = []
for _layout in LAYOUTS:
    by_stream = []
    for _stream in (False, True):
        pair = [BprDecoder(_layout), BprDecoder(_layout, *reported(_layout), FEATURE_VALUE_BUCKETS)]
        for decoder in pair:
            if _stream:
                decoder.stream_min_bytes = 0
        by_stream.append(pair)
    DECODERS.append(by_stream)


def decode(selector: int, payload: bytes) -> None:
    layout = LAYOUTS[(selector >> 1) & 1]
    decoder = DECODERS[(selector >> 1) & 1][(selector >> 2) & 1][(selector >> 3) & 1]
    item = np.frombuffer(payload, dtype=np.uint8).copy() if selector & 16 else payload
    payloads = [item, item] if selector & 32 else [item]
    try:
        rows = decoder.count_rows(payloads, MAX_ROWS[(selector >> 1) & 1])
    except DecodeError:
        return
    total = int(rows.sum())
    # exact-size outputs, so a write past the last row is out of bounds
    out = layout.allocate(total)
    counts = np.zeros((decoder.n_report_rows, len(FEATURE_VALUE_BUCKETS) + 1), dtype=np.int64)
    sums = np.zeros(decoder.n_report_rows)
    written = decoder.decode_into(payloads, out["continuous"], out["binary"], out["discrete"],
                                  [out[t.name] for t in layout.tensors[3:]], 0, counts, sums)
    if written != total:
        raise AssertionError(f"count_rows said {total} rows, decode_into wrote {written}")


def scan(payload: bytes) -> None:
    got = split_string_values(payload)
    if got != split_string_values_ref(payload):
        raise AssertionError("the scanner and its reference twin disagree")
    if got is None:
        return
    rest, spans = got
    if len(rest) > len(payload):
        raise AssertionError("the request without its strings is longer than the request")
    for name, values in spans.items():
        for offset, length in values:
            if not (0 <= offset and 0 <= length and offset + length <= len(payload)):
                raise AssertionError(f"input {name!r}: {length} bytes at {offset} outside {len(payload)}")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        scan(data[1:])
    else:
        decode(data[0], data[1:])


def bpr_seeds() -> list[tuple[int, bytes]]:
    """(layout bit, payload): real BPRs of both layouts, small enough to mutate fast."""
    seeds = []
    for bit, layout in enumerate(LAYOUTS):
        for candidates, per in ((1, 6), (3, 20), (2, 60)):
            seeds += [(bit, p) for p in make_bprs(layout, 2, candidates=candidates, seed=candidates,
                                                  continuous_per_candidate=per, binary_per_candidate=per // 3,
                                                  discrete_per_candidate=per // 3, common_continuous=per // 2)]
    from navi.idl import encode
    record = BPR.DataRecord(continuousFeatures={fid: 0.5 for fid in CONT}, binaryFeatures=set(BIN),
                            discreteFeatures={fid: 3 for fid in DISC}, stringFeatures={1: "a"},
                            blobFeatures={2: b"\x00"}, sparseBinaryFeatures={3: {"x"}},
                            sparseContinuousFeatures={4: {"y": 1.0}},
                            tensors={EMB["user_embedding"]: BPR.GeneralTensor(
                                floatTensor=BPR.FloatTensor(floats=[1.0, -2.0, 3.5, 4.0])),
                                EMB["author_embedding"]: BPR.GeneralTensor(
                                stringTensor=BPR.StringTensor(strings=["s"], shape=[1]))})
    seeds.append((0, encode(BPR.BatchPredictionRequest(individualFeaturesList=[record, record],
                                                       commonFeatures=record))))
    return seeds


def predict_request_seeds(bprs: list[bytes]) -> list[bytes]:
    """Real PredictRequests: BPRs as string_val (one or two, beside other inputs), dense tensors."""
    from navi._proto.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from navi._proto.tensorflow_serving.apis import predict_pb2

    def shape(*dims):
        return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])

    requests = []
    for k, bpr in enumerate(bprs[:4]):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "home"
        request.model_spec.signature_name = "serving_default"
        request.model_spec.version.value = 7
        request.inputs["request"].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=shape(k % 2 + 1), string_val=[bpr] * (k % 2 + 1)))
        if k % 2:
            request.inputs["dense"].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=shape(2, 2), float_val=[1, 2, 3, 4]))
            request.output_filter.append("scores")
        requests.append(request.SerializeToString())
    dense = predict_pb2.PredictRequest()
    dense.model_spec.name = "dense"
    dense.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape(1, 4), tensor_content=np.arange(4, dtype="<f4").tobytes()))
    dense.inputs["ids"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape(2),
                                                        string_val=[b"a", "é".encode()]))
    requests.append(dense.SerializeToString())
    return requests



def write_seeds(directory: Path) -> int:
    """Each real BPR under a few selectors, and each PredictRequest; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = []
    bprs = bpr_seeds()
    for i, (bit, payload) in enumerate(bprs):
        for flags in (0, 4, 8, 16 | 4, 32 | 8):
            seeds.append(bytes([(bit << 1) | flags]) + payload)
    seeds += [b"\x01" + request for request in predict_request_seeds([p for _, p in bprs])]
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:03d}").write_bytes(seed)
    return len(seeds)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        print(f"{write_seeds(Path(sys.argv[2]))} seeds in {sys.argv[2]}")
        return
    import atheris

    import navi._fast._bpr
    import navi._fast._pbscan

    build = os.environ.get("NAVI_FUZZ_BUILD")
    for module in (navi._fast._bpr, navi._fast._pbscan):
        if build and not module.__file__.startswith(build):
            sys.exit(f"{module.__name__} is {module.__file__}, not the instrumented build under {build}")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
