"""Fuzz the compiled decoder with a million mutated BPRs (slow: `make fuzz`, not in CI).

Every mutated input must either decode or raise DecodeError; never crash,
hang or raise anything else. Every 200th input is also checked against the
reference twin (same arrays, or the same error). Half of the inputs go through
a decoder that also counts reported features (layout ids and unknown ones,
continuous and discrete); every 200th of those is checked against the
reference's counts too.
"""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from navi._fast import _bpr_ref
from navi._fast._bpr import BprDecoder
from navi.errors import DecodeError
from navi.idl import encode
from navi.metrics import FEATURE_VALUE_BUCKETS
from navi.segdense import parse_layout
from navi.workload import make_bprs

from .bpr_helpers import BPR, CONT, DISC, EMB, assert_same, decode_all, small_layout, small_spec
from .test_bpr_decoder import sample_payload

FUZZ_INPUTS = int(os.environ.get("NAVI_FUZZ_INPUTS", "1000000"))
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 12, 13, 14, 15, 11]


def corpus(layout) -> list[bytes]:
    seeds = [sample_payload()]
    seeds += make_bprs(layout, 3, candidates=3, seed=5, continuous_per_candidate=6, binary_per_candidate=2,
                       discrete_per_candidate=2, common_continuous=3)
    rec = BPR.DataRecord(stringFeatures={1: "a"}, blobFeatures={2: b"\x00"},
                         sparseBinaryFeatures={3: {"x"}}, sparseContinuousFeatures={4: {"y": 1.0}},
                         tensors={EMB["user_embedding"]: BPR.GeneralTensor(
                             stringTensor=BPR.StringTensor(strings=["s"], shape=[1]))})
    seeds.append(encode(BPR.BatchPredictionRequest(individualFeaturesList=[rec, rec], commonFeatures=rec)))
    return seeds


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 7))
        pos = int(rng.integers(0, max(1, len(buf))))
        if op == 0 and buf:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and buf:
            buf[pos] = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
        elif op == 2:
            del buf[pos:]
        elif op == 3 and buf:
            del buf[pos:pos + int(rng.integers(1, 9))]
        elif op == 4:
            buf[pos:pos] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8))
        elif op == 5 and len(buf) >= pos + 4:
            big = [2**31 - 1, 2**31 - 2, -1, 2**16, 2**24][int(rng.integers(0, 5))]
            buf[pos:pos + 4] = struct.pack(">i", big)
        elif op == 6 and buf:
            start = int(rng.integers(0, len(buf)))
            buf[pos:pos] = buf[start:start + int(rng.integers(1, 32))]
    return bytes(buf)


REPORTED = (sorted(CONT)[:3] + [7, 2**62], sorted(DISC)[:2] + [sorted(CONT)[0], -9])


def decode_counting(decoder, layout, payloads):
    """``decode_all`` that also counts the decoder's reported features: (arrays, counts, sums)."""
    counts = np.zeros((decoder.n_report_rows, len(FEATURE_VALUE_BUCKETS) + 1), dtype=np.int64)
    sums = np.zeros(decoder.n_report_rows)
    rows = int(decoder.count_rows(payloads).sum())
    out = layout.allocate(rows)
    decoder.decode_into(payloads, out["continuous"], out["binary"], out["discrete"],
                        [out[t.name] for t in layout.tensors[3:]], 0, counts, sums)
    return out, counts, sums


def run_fuzz(layout, seeds: list[bytes], inputs: int, seed: int) -> tuple[int, int]:
    """Decode ``inputs`` mutations of ``seeds``; (decoded, DecodeError) counts.

    Every other input goes through the staging row and streaming stores;
    inputs 2 and 3 of every 4 also count reported features; every 200th
    input (and every 200th counting one) is also decoded by the reference,
    which must agree.
    """
    cy, ref = BprDecoder(layout), _bpr_ref.BprDecoder(layout)
    cy_streaming = BprDecoder(layout)
    cy_streaming.stream_min_bytes = 0
    counting = [BprDecoder(layout, *REPORTED, FEATURE_VALUE_BUCKETS) for _ in range(2)]
    counting[1].stream_min_bytes = 0
    ref_counting = _bpr_ref.BprDecoder(layout, *REPORTED, FEATURE_VALUE_BUCKETS)
    rng = np.random.default_rng(seed)
    decoded = errors = 0
    for i in range(inputs):
        payload = mutate(seeds[i % len(seeds)], rng)
        count = i % 4 >= 2
        try:
            if count:
                result = decode_counting(counting[i % 2], layout, [payload])
            else:
                result = decode_all(cy_streaming if i % 2 else cy, layout, [payload])
            decoded += 1
        except DecodeError as exc:
            result = str(exc)
            errors += 1
        if i % 200 in (0, 2):
            try:
                expected = (decode_counting(ref_counting, layout, [payload]) if count
                            else decode_all(ref, layout, [payload]))
            except DecodeError as exc:
                expected = str(exc)
            if isinstance(result, str) or isinstance(expected, str):
                assert result == expected, (payload, result, expected)
            elif count:
                assert_same(result[0], expected[0])
                np.testing.assert_array_equal(result[1], expected[1])
                np.testing.assert_array_equal(result[2], expected[2])
            else:
                assert_same(result, expected)
    return decoded, errors


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_million_mutations_never_crash():
    layout = small_layout()
    decoded, errors = run_fuzz(layout, corpus(layout), FUZZ_INPUTS, 20261128)
    print(f"fuzz: {FUZZ_INPUTS} inputs, {decoded} decoded, {errors} DecodeError")
    assert decoded + errors == FUZZ_INPUTS


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_wide_embedding_mutations_never_crash():
    """Embeddings 20 wide, so float lists take the vectorised conversion's main loop too."""
    spec, all_config = small_spec()
    for entry in spec["complex_feature_type_transform_spec"]:
        entry["tensor_shape"] = [20]
    layout = parse_layout(spec, all_config)
    rng = np.random.default_rng(7)
    records = [BPR.DataRecord(continuousFeatures={101: 1.5}, tensors={
        fid: BPR.GeneralTensor(floatTensor=BPR.FloatTensor(floats=rng.standard_normal(size).tolist()))
        for fid, size in zip(EMB.values(), sizes)}) for sizes in ((0, 7, 20), (8, 19, 33), (16, 1, 24))]
    seeds = [encode(BPR.BatchPredictionRequest(individualFeaturesList=records[:k], commonFeatures=records[k]))
             for k in range(3)]
    inputs = max(1, FUZZ_INPUTS // 5)
    decoded, errors = run_fuzz(layout, seeds, inputs, 20261129)
    print(f"fuzz (wide embeddings): {inputs} inputs, {decoded} decoded, {errors} DecodeError")
    assert decoded + errors == inputs
