"""The Cython BPR decoder against its reference twin and a thriftpy2-based oracle."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navi._fast import _bpr_ref
from navi._fast._bpr import BprDecoder as CyDecoder
from navi.errors import DecodeError
from navi.idl import encode
from navi.workload import Record, encode_bpr

from .bpr_helpers import (BIN, BPR, CONT, DISC, EMB, assert_same, decode_all, future_thrift, oracle,
                          small_layout, small_spec)

LAYOUT = small_layout()
CY = CyDecoder(LAYOUT)
REF = _bpr_ref.BprDecoder(LAYOUT)
# the same decoder writing every output through its staging row and streaming stores
CY_STREAMING = CyDecoder(LAYOUT)
CY_STREAMING.stream_min_bytes = 0

ids = st.one_of(
    st.sampled_from(sorted(CONT) + sorted(BIN) + sorted(DISC) + sorted(EMB.values())),
    st.integers(-(2**63), 2**63 - 1),
)
doubles = st.floats(allow_nan=True, allow_infinity=True, width=64)
i64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def general_tensors(draw):
    kind = draw(st.sampled_from(["float", "float", "int64", "raw", "empty_float"]))
    if kind == "float":
        return BPR.GeneralTensor(floatTensor=BPR.FloatTensor(floats=draw(st.lists(doubles, max_size=6))))
    if kind == "empty_float":
        return BPR.GeneralTensor(floatTensor=BPR.FloatTensor())
    if kind == "int64":
        return BPR.GeneralTensor(int64Tensor=BPR.Int64Tensor(longs=draw(st.lists(i64, max_size=4))))
    return BPR.GeneralTensor(rawTypedTensor=BPR.RawTypedTensor(dataType=0, content=draw(st.binary(max_size=8))))


@st.composite
def records(draw):
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731 - missing or present (possibly empty)
    return BPR.DataRecord(
        binaryFeatures=draw(maybe(st.sets(ids, max_size=6))),
        continuousFeatures=draw(maybe(st.dictionaries(ids, doubles, max_size=8))),
        discreteFeatures=draw(maybe(st.dictionaries(ids, i64, max_size=6))),
        stringFeatures=draw(maybe(st.dictionaries(ids, st.text(max_size=5), max_size=3))),
        sparseBinaryFeatures=draw(maybe(st.dictionaries(ids, st.sets(st.text(max_size=3), max_size=3), max_size=2))),
        sparseContinuousFeatures=draw(maybe(st.dictionaries(ids, st.dictionaries(st.text(max_size=3), doubles, max_size=2), max_size=2))),
        blobFeatures=draw(maybe(st.dictionaries(ids, st.binary(max_size=6), max_size=2))),
        tensors=draw(maybe(st.dictionaries(ids, general_tensors(), max_size=4))),
    )


@st.composite
def bprs(draw):
    shape = draw(st.sampled_from(["both", "common_only", "candidates_only"]))
    cands = [] if shape == "common_only" else draw(st.lists(records(), max_size=5))
    common = None if shape == "candidates_only" else draw(st.one_of(st.none(), records()))
    return encode(BPR.BatchPredictionRequest(individualFeaturesList=cands, commonFeatures=common))


def run_both(payloads):
    """Both decoders' outcome: arrays, or the DecodeError's text."""
    results = []
    for decoder in (CY, REF):
        try:
            results.append(decode_all(decoder, LAYOUT, payloads))
        except DecodeError as exc:
            results.append(str(exc))
    return results


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bprs(), min_size=1, max_size=3))
def test_random_bprs_match_reference_and_oracle(payloads):
    cy, ref = run_both(payloads)
    assert not isinstance(cy, str), cy
    assert_same(cy, ref)
    assert_same(cy, oracle(LAYOUT, payloads))
    assert_same(decode_all(CY_STREAMING, LAYOUT, payloads), cy)
    assert list(CY.count_rows(payloads)) == list(REF.count_rows(payloads))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_unknown_fields_of_every_type_are_skipped(tmp_path_factory, data):
    future = future_thrift(tmp_path_factory.mktemp("idl"))
    nested = future.Nested(a=1, b=["x", "yz"], c={7: future.Nested2(deep=future.Nested3(blob=b"\x00\x01", lld=[[1.5], []]), s={1, 2})})
    n = data.draw(st.integers(0, 3))
    cands = []
    for _ in range(n):
        cands.append(future.DataRecord(
            binaryFeatures=data.draw(st.sets(ids, max_size=4)),
            continuousFeatures=data.draw(st.dictionaries(ids, doubles, max_size=5)),
            tensors={EMB["author_embedding"]: future.GeneralTensor(floatTensor=future.FloatTensor(
                floats=data.draw(st.lists(doubles, max_size=5)), extra=nested)),
                EMB["user_embedding"]: future.GeneralTensor(futureTensor=nested)},
            u_bool=True, u_byte=-3, u_i16=300, u_i32=-70000, u_i64=2**40, u_double=2.5, u_string="unknown",
            u_struct=nested, u_map={"k": [1, 2, 3]}, u_set={b"a", b"bc"}, u_list=[nested, nested],
        ))
    common = future.DataRecord(discreteFeatures=data.draw(st.dictionaries(ids, i64, max_size=4)), u_struct=nested)
    payload = encode(future.BatchPredictionRequest(individualFeaturesList=cands, commonFeatures=common,
                                                   u_request_id="r1", u_nested=nested,
                                                   u_more_records=[future.DataRecord(u_i32=1)]))
    cy, ref = run_both([payload])
    assert not isinstance(cy, str), cy
    assert_same(cy, ref)
    assert_same(cy, oracle(LAYOUT, [payload]))


def sample_payload() -> bytes:
    rec = BPR.DataRecord(binaryFeatures={201, 999}, continuousFeatures={101: 1.5, 103: -2.0, 7: 1.0},
                         discreteFeatures={301: 42}, tensors={401: BPR.GeneralTensor(floatTensor=BPR.FloatTensor(floats=[1.0, 2.0, 3.0, 4.0]))})
    common = BPR.DataRecord(continuousFeatures={101: 9.0, 102: 8.0}, binaryFeatures={202},
                            tensors={402: BPR.GeneralTensor(floatTensor=BPR.FloatTensor(floats=[0.5]))},
                            stringFeatures={5: "s"})
    return encode(BPR.BatchPredictionRequest(individualFeaturesList=[rec, BPR.DataRecord()], commonFeatures=common))


def test_known_values_land_where_the_spec_says():
    out = decode_all(CY, LAYOUT, [sample_payload()])
    cont = out["continuous"]
    assert cont.shape == (2, 8)
    assert cont[0, 0] == 1.5 and cont[0, 3] == 8.0 and cont[0, 7] == -2.0  # candidate wins over common
    assert cont[1, 0] == 9.0 and cont[1, 3] == 8.0 and np.isnan(cont[1, 7])  # common fills every row
    assert out["binary"].tolist() == [[1, 0, 0, 1], [0, 0, 0, 1]]
    assert out["discrete"].tolist() == [[0, 0, 42, 0], [0, 0, 0, 0]]
    assert out["user_embedding"].tolist() == [[1.0, 2.0, 3.0], [0, 0, 0]]  # longer tensor: first width values
    assert out["user_eng_embedding"].tolist() == [[0.5, 0, 0], [0.5, 0, 0]]
    assert out["author_embedding"].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_value_in_the_wrong_container_is_ignored():
    # 101 is continuous in the spec: as a binary feature it must not be written anywhere.
    payload = encode(BPR.BatchPredictionRequest(individualFeaturesList=[BPR.DataRecord(binaryFeatures={101})]))
    out = decode_all(CY, LAYOUT, [payload])
    assert out["binary"].tolist() == [[0, 0, 0, 0]]
    assert np.isnan(out["continuous"]).all()


def test_workload_encoder_matches_thriftpy2():
    rec = Record(continuous_ids=np.array([101, 5]), continuous_values=np.array([1.0, 2.0]),
                 binary_ids=np.array([201]), discrete_ids=np.array([301]), discrete_values=np.array([7]),
                 embeddings={403: np.array([1.0, 2.0])})
    ours = encode_bpr([rec], Record(binary_ids=np.array([202])))
    theirs = encode(BPR.BatchPredictionRequest(
        individualFeaturesList=[BPR.DataRecord(binaryFeatures={201}, continuousFeatures={101: 1.0, 5: 2.0},
                                               discreteFeatures={301: 7},
                                               tensors={403: BPR.GeneralTensor(floatTensor=BPR.FloatTensor(floats=[1.0, 2.0]))})],
        commonFeatures=BPR.DataRecord(binaryFeatures={202})))
    assert_same(decode_all(CY, LAYOUT, [ours]), decode_all(CY, LAYOUT, [theirs]))


# ----------------------------------------------------------------- malformed input


def both_errors(payloads):
    cy, ref = run_both(payloads)
    if isinstance(cy, str) or isinstance(ref, str):
        assert cy == ref, (cy, ref)
    else:
        assert_same(cy, ref)
    return cy


def test_every_truncation_is_a_decode_error():
    payload = sample_payload()
    for cut in range(len(payload)):
        result = both_errors([payload[:cut]])
        assert isinstance(result, str) and ("truncated" in result or "missing" in result), (cut, result)


def test_bit_flips_give_decode_error_or_identical_output():
    payload = sample_payload()
    rng = np.random.default_rng(0)
    for _ in range(1500):
        data = bytearray(payload)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        both_errors([bytes(data)])


def test_trailing_bytes_are_an_error():
    with pytest.raises(DecodeError, match="trailing") as info:
        CY.count_rows([sample_payload() + b"\x00"])
    assert info.value.offset == len(sample_payload())


def test_missing_candidate_list_is_an_error():
    assert "individualFeaturesList" in both_errors([b"\x00"])


def _header(ftype, fid):
    return struct.pack(">bh", ftype, fid)


@pytest.mark.parametrize("body", [
    _header(15, 1) + struct.pack(">bi", 12, 2**31 - 1),                          # list<DataRecord>
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(14, 1) + struct.pack(">bi", 10, 2**31 - 1),   # set<i64>
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(13, 2) + struct.pack(">bbi", 10, 4, 2**31 - 1),  # map<i64,double>
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(13, 8) + struct.pack(">bbi", 10, 12, 2**31 - 1),  # map<i64,struct>
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(11, 4) + struct.pack(">i", 2**31 - 1),           # string
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(15, 30) + struct.pack(">bi", 11, 2**31 - 1),     # list<string>
    _header(15, 1) + struct.pack(">bi", 12, 1) + _header(13, 6) + struct.pack(">bbi", 10, 13, 2**31 - 1), # map<i64,map>
])
def test_huge_counts_with_truncated_bodies_do_not_allocate(body):
    result = both_errors([body + b"\x00" * 16])
    assert "truncated" in result


@pytest.mark.parametrize("count", [-1, -(2**31)])
def test_negative_counts_are_errors(count):
    body = _header(15, 1) + struct.pack(">bi", 12, 1) + _header(13, 2) + struct.pack(">bbi", 10, 4, count) + b"\x00\x00"
    assert "negative" in both_errors([body])


def test_invalid_type_codes_are_errors():
    for bad in (1, 5, 7, 9, 16, 17, 255):
        body = _header(15, 1) + struct.pack(">bi", 12, 1) + struct.pack(">Bh", bad, 40) + b"\x00" * 8
        assert "invalid thrift type" in both_errors([body]), bad


def test_nesting_depth_is_capped():
    # an unknown field of nested structs, 200 deep
    body = _header(15, 1) + struct.pack(">bi", 12, 1) + _header(12, 40) * 200 + b"\x00" * 201 + b"\x00"
    assert "nesting too deep" in both_errors([body])


def test_error_names_the_payload_and_offset():
    good = sample_payload()
    with pytest.raises(DecodeError) as info:
        CY.count_rows([good, good[:10]])
    assert "payload 1" in str(info.value) and info.value.offset >= 0 and info.value.what


def test_outputs_too_small_are_refused():
    out = LAYOUT.allocate(1)
    with pytest.raises(ValueError, match="do not fit"):
        CY.decode_into([sample_payload()], out["continuous"], out["binary"], out["discrete"],
                       [out[t.name] for t in LAYOUT.tensors[3:]])


def test_non_bytes_payload_is_a_type_error():
    with pytest.raises(TypeError):
        CY.count_rows([12])


def test_row_start_offsets_the_write():
    payload = sample_payload()
    out = LAYOUT.allocate(5)
    written = CY.decode_into([payload], out["continuous"], out["binary"], out["discrete"],
                             [out[t.name] for t in LAYOUT.tensors[3:]], 3)
    assert written == 2
    assert out["continuous"][3, 0] == 1.5


def _wide_layout(cont_ids, bin_ids, disc_ids):
    """A layout with the given ids at columns 0..n-1 of each dense tensor (duplicates: later wins)."""
    from navi.segdense import parse_layout

    spec, all_config = small_spec()
    features_map = {}
    sections = spec["densification_transform_spec"]
    for section, ftype, fids in (("cont", 2, cont_ids), ("binary", 1, bin_ids), ("discrete", 3, disc_ids)):
        sections[section]["fixed_length"] = max(1, len(fids))
        for col, fid in enumerate(fids):
            features_map[f"{section}.{col}"] = [{"feature_id": int(fid), "full_feature_name": f"{section}.{col}",
                                                 "feature_type": ftype, "index": col, "maybe_exclude": False,
                                                 "tag": "", "added_at": ""}]
    spec["input_features_map"] = features_map
    return parse_layout(spec, all_config)


_ID_FAMILIES = {
    # the perfect-hash table must place ids that differ only in a few bits,
    # at either end of the word, as well as random ones and odd sizes
    "random": np.random.default_rng(3).integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64),
    "high_bits_only": np.arange(1, 3001, dtype=np.int64) << 40,
    "top_bits_only": (np.arange(0, 512, dtype=np.int64) << 54),
    "small_integers": np.arange(0, 4096, dtype=np.int64),
    "one_id": np.array([0], dtype=np.int64),
    "negative_run": -np.arange(1, 1025, dtype=np.int64),
}


@pytest.mark.parametrize("family", sorted(_ID_FAMILIES))
def test_id_table_places_every_id_family(family):
    fids = _ID_FAMILIES[family]
    # binary and discrete share ids with continuous (distinct tensors, distinct tables); a
    # repeated id in one tensor keeps its last column, as the reference's dict does
    disc = np.concatenate([fids[:5], fids[:1]])
    layout = _wide_layout(fids, fids[::-1][:300], disc)
    rng = np.random.default_rng(len(fids))
    unknown = rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)
    unknown = unknown[~np.isin(unknown, fids)]
    present = np.concatenate([fids, unknown])
    rng.shuffle(present)
    payload = encode_bpr([Record(continuous_ids=present, continuous_values=rng.standard_normal(len(present)),
                                 binary_ids=present, discrete_ids=present,
                                 discrete_values=rng.integers(0, 99, size=len(present)))])
    cy = decode_all(CyDecoder(layout), layout, [payload])
    assert_same(cy, decode_all(_bpr_ref.BprDecoder(layout), layout, [payload]))
    assert_same(cy, oracle(layout, [payload]))
    # every listed id landed (nothing left at the default)
    assert not np.isnan(cy["continuous"]).any()
    assert cy["binary"].all()


def test_views_of_a_larger_buffer_decode_in_place_like_bytes():
    # the server hands the decoder memoryview slices of the received request
    payloads = [sample_payload(), encode(BPR.BatchPredictionRequest(individualFeaturesList=[BPR.DataRecord()]))]
    blob = b"head" + payloads[0] + b"middle" + payloads[1] + b"tail"
    view = memoryview(blob)
    start0 = 4
    start1 = start0 + len(payloads[0]) + len(b"middle")
    views = [view[start0:start0 + len(payloads[0])], view[start1:start1 + len(payloads[1])]]
    expected = decode_all(CY, LAYOUT, payloads)
    for twin in (CY, REF):
        assert_same(decode_all(twin, LAYOUT, views), expected)
        assert_same(decode_all(twin, LAYOUT, [bytearray(p) for p in payloads]), expected)
    # a strided view is not one flat buffer: it is copied flat, same answer
    doubled = np.frombuffer(bytes(b for b in payloads[0] for _ in range(2)), dtype=np.uint8)[::2]
    assert_same(decode_all(CY, LAYOUT, [memoryview(doubled), payloads[1]]), expected)
    with pytest.raises(TypeError):
        CY.count_rows(["not bytes"])


@pytest.mark.parametrize("default", ["nan", "-1.5", "0", "3.25"])
def test_rows_are_filled_with_the_specs_continuous_default(tmp_path, default):
    """The compiled row fill (wmemset of the default's bits) writes what the reference writes."""
    from navi import segdense, workload

    workload.home_layout_files(tmp_path, seed=0, continuous_default=default)
    layout = segdense.load_layout(*segdense.find_spec_files(tmp_path))
    bprs = workload.make_bprs(layout, 2, 3, 1)
    outs = []
    for decoder in (CyDecoder(layout), _bpr_ref.BprDecoder(layout)):
        out = layout.allocate(6)
        decoder.decode_into(bprs, out["continuous"], out["binary"], out["discrete"],
                            [out[t.name] for t in layout.tensors[3:]])
        outs.append(out)
    for name in outs[0]:
        assert outs[0][name].tobytes() == outs[1][name].tobytes(), name
    untouched = outs[0]["continuous"][:, -1]  # no generated feature lands in the last column
    expected = np.float32(float(default))
    assert np.array_equal(untouched, np.full(6, expected), equal_nan=True)


def test_streamed_rows_equal_rows_written_in_place(tmp_path):
    """Large outputs are built in a staging row and streamed out: same bytes, every offset."""
    from navi import segdense, workload

    workload.home_layout_files(tmp_path, seed=0)
    layout = segdense.load_layout(*segdense.find_spec_files(tmp_path))
    bprs = workload.make_bprs(layout, 3, 7, 2)
    in_place, streaming = CyDecoder(layout), CyDecoder(layout)
    in_place.stream_min_bytes = 1 << 62
    streaming.stream_min_bytes = 0
    # the home rows (5,293 floats) are not a multiple of 16 bytes, so rows
    # after the first start off the streaming stores' alignment; a row_start
    # of 1 shifts every row again
    for row_start in (0, 1):
        outs = []
        for decoder in (in_place, streaming, _bpr_ref.BprDecoder(layout)):
            out = layout.allocate(21 + row_start)
            for arr in out.values():
                arr.fill(-7)
            decoder.decode_into(bprs, out["continuous"], out["binary"], out["discrete"],
                                [out[t.name] for t in layout.tensors[3:]], row_start)
            outs.append(out)
        for name in outs[0]:
            assert outs[0][name].tobytes() == outs[1][name].tobytes(), (name, row_start)
            assert outs[0][name].tobytes() == outs[2][name].tobytes(), (name, row_start)


def test_default_streams_only_outputs_past_the_cache(tmp_path):
    """The default threshold streams a 16 MiB output and writes a small one in place, same values."""
    from navi import segdense, workload

    workload.home_layout_files(tmp_path, seed=0)
    layout = segdense.load_layout(*segdense.find_spec_files(tmp_path))
    decoder = CyDecoder(layout)
    assert decoder.stream_min_bytes == _bpr_ref.DEFAULT_STREAM_MIN_BYTES == 16 << 20
    in_place = CyDecoder(layout)
    in_place.stream_min_bytes = 1 << 62
    bprs = workload.make_bprs(layout, 7, 100, 4)
    rows = int(decoder.count_rows(bprs).sum())
    assert sum(a.nbytes for a in layout.allocate(rows).values()) >= decoder.stream_min_bytes
    outs = []
    for twin in (decoder, in_place):
        out = layout.allocate(rows)
        twin.decode_into(bprs, out["continuous"], out["binary"], out["discrete"],
                         [out[t.name] for t in layout.tensors[3:]])
        outs.append(out)
    for name in outs[0]:
        assert outs[0][name].tobytes() == outs[1][name].tobytes(), name


def test_long_embeddings_convert_every_double_like_the_reference(tmp_path):
    """200-wide embeddings go through the vectorised double -> float loop: special values, every lane."""
    from navi import segdense, workload

    workload.home_layout_files(tmp_path, seed=0)
    layout = segdense.load_layout(*segdense.find_spec_files(tmp_path))
    width = layout.tensors[3].width
    special = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300, -1e300, 5e-324, 1e-40,
               3.4028235677973366e38, 1.0000000596046448, 1.0000001788139343, -2.5, 7.0]
    rng = np.random.default_rng(11)
    values = rng.standard_normal(width + 3)  # longer than the tensor: the rest is ignored
    # specials in every position of a 4-wide vector and in the scalar tail
    for offset, value in enumerate(special):
        values[offset * 13 % width] = value
        values[width - 1 - offset % 3] = value
    short = values[:width - 5]  # a list shorter than the tensor: the rest stays zero
    records = [BPR.DataRecord(tensors={layout.embedding_ids[0]: BPR.GeneralTensor(
        floatTensor=BPR.FloatTensor(floats=[float(v) for v in vals]))}) for vals in (values, short)]
    payload = encode(BPR.BatchPredictionRequest(individualFeaturesList=records))
    cy = decode_all(CyDecoder(layout), layout, [payload])
    ref = decode_all(_bpr_ref.BprDecoder(layout), layout, [payload])
    name = layout.tensors[3].name
    assert cy[name].tobytes() == ref[name].tobytes()
    expected = np.zeros((2, width), dtype=np.float32)
    with np.errstate(over="ignore"):
        expected[0] = values[:width].astype(np.float32)
        expected[1, :width - 5] = short.astype(np.float32)
    assert cy[name].tobytes() == expected.tobytes()


# The walks over a payload's bytes, which must run with the GIL released (the
# server decodes on several threads at once): the validating index and the scatter.
WALKS = ("index_bpr", "_scatter_all")


def walks_under_the_gil(source: str) -> list[str]:
    """Where the decoder's source could walk a payload holding the GIL; [] = nowhere.

    Read from Cython's own parse tree of the .pyx, so the answer is exact and
    does not depend on timing: every call of a walk must sit inside a
    ``with nogil:`` block, and nothing may take the GIL back (``with gil:`` or a
    function declared ``with gil``), which a walk could then call.
    """
    from Cython.Compiler.Nodes import CFuncDeclaratorNode
    from Cython.Compiler.TreeFragment import parse_from_strings
    from Cython.Compiler.Visitor import TreeVisitor

    class Finder(TreeVisitor):
        def __init__(self) -> None:
            super().__init__()
            self.states: list[str] = []
            self.found: list[str] = []
            self.calls = {walk: 0 for walk in WALKS}

        def visit_Node(self, node):
            if isinstance(node, CFuncDeclaratorNode) and node.with_gil:
                self.found.append(f"line {node.pos[1]}: a function declared with gil")
            self.visitchildren(node)

        def visit_GILStatNode(self, node):
            if node.state == "gil":
                self.found.append(f"line {node.pos[1]}: with gil")
            self.states.append(node.state)
            self.visitchildren(node)
            self.states.pop()

        def visit_SimpleCallNode(self, node):
            name = getattr(node.function, "attribute", None) or getattr(node.function, "name", None)
            if name in self.calls:
                self.calls[name] += 1
                if not self.states or self.states[-1] != "nogil":
                    self.found.append(f"line {node.pos[1]}: {name} called holding the GIL")
            self.visitchildren(node)

    finder = Finder()
    finder.visit(parse_from_strings("navi._fast._bpr", source))
    finder.found += [f"{walk} is never called" for walk, count in finder.calls.items() if count == 0]
    return finder.found


def decoder_source() -> str:
    from pathlib import Path

    import navi._fast
    return (Path(navi._fast.__file__).parent / "_bpr.pyx").read_text()


def test_the_walk_runs_without_the_gil():
    """Every walk of a payload runs in a ``with nogil:`` block of the compiled decoder."""
    assert walks_under_the_gil(decoder_source()) == []


@pytest.mark.parametrize("change", [
    ("with nogil:\n                self._scatter_all(", "if True:\n                self._scatter_all("),
    ("    with nogil:\n        for i in range(n):", "    if True:\n        for i in range(n):"),
    ("cdef int skip(Reader* r, int t, int depth) noexcept nogil:\n",
     "cdef int skip(Reader* r, int t, int depth) noexcept nogil:\n    with gil:\n        pass\n"),
])
def test_the_gil_check_sees_a_walk_that_holds_it(change):
    """The check above fails for the decoder with either walk's ``with nogil`` removed,
    or with the GIL taken back inside a walk."""
    before, after = change
    source = decoder_source()
    assert source.count(before) == 1
    assert walks_under_the_gil(source.replace(before, after)) != []
