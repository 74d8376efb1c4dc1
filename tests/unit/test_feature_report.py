"""Reported features: the decoder counts their values in its one pass (both twins, exact buckets)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navi._fast import _bpr_ref
from navi._fast._bpr import BprDecoder as CyDecoder
from navi.converter import BprConverter
from navi.idl import decode_bpr, encode
from navi.metrics import FEATURE_VALUE_BUCKETS

from .bpr_helpers import BPR, CONT, DISC, assert_same, decode_all, small_layout
from .test_bpr_decoder import bprs, ids

LAYOUT = small_layout()
BOUNDS = tuple(float(b) for b in FEATURE_VALUE_BUCKETS)
INF = len(BOUNDS)  # index of the +Inf bucket
TWINS = {"compiled": CyDecoder, "reference": _bpr_ref.BprDecoder}


def bucket(value: float) -> int:
    """Index of the bucket of ``value`` among FEATURE_VALUE_BUCKETS (+Inf last)."""
    return BOUNDS.index(value)


def decode_counting(decoder, payloads):
    """(arrays, counts, sums) of one counting ``decode_into`` into fresh arrays."""
    rows = int(decoder.count_rows(payloads).sum())
    out = LAYOUT.allocate(rows)
    counts = np.zeros((decoder.n_report_rows, len(BOUNDS) + 1), dtype=np.int64)
    sums = np.zeros(decoder.n_report_rows, dtype=np.float64)
    decoder.decode_into(payloads, out["continuous"], out["binary"], out["discrete"],
                        [out[t.name] for t in LAYOUT.tensors[3:]], 0, counts, sums)
    return out, counts, sums


def oracle_counts(payloads, continuous_ids, discrete_ids):
    """Counts and sums walked from thriftpy2 objects, as the original's converter plus the discrete maps."""
    cont = sorted(set(continuous_ids))
    disc = sorted(set(discrete_ids))
    rows = {("c", fid): i for i, fid in enumerate(cont)}
    rows.update({("d", fid): len(cont) + i for i, fid in enumerate(disc)})
    counts = np.zeros((len(rows), len(BOUNDS) + 1), dtype=np.int64)
    sums = np.zeros(len(rows))

    def observe(row, value):
        index = next((i for i, bound in enumerate(BOUNDS) if value <= bound), INF)
        counts[row, index] += 1
        sums[row] += value

    def walk(record):
        if record is None:
            return
        for fid, value in (record.continuousFeatures or {}).items():
            if fid in cont:
                observe(rows[("c", fid)], value)
            elif fid in disc:
                observe(rows[("d", fid)], value)
        for fid, value in (record.discreteFeatures or {}).items():
            if fid in disc:
                observe(rows[("d", fid)], float(value))

    for payload in payloads:
        bpr = decode_bpr(payload)
        walk(bpr.commonFeatures)  # once per BPR, whatever its candidate count
        for record in bpr.individualFeaturesList:
            walk(record)
    return counts, sums


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(bprs(), min_size=1, max_size=3),
       continuous_ids=st.lists(ids, max_size=10), discrete_ids=st.lists(ids, max_size=10))
def test_compiled_and_reference_count_the_same(payloads, continuous_ids, discrete_ids):
    decoders = [twin(LAYOUT, continuous_ids, discrete_ids, BOUNDS) for twin in TWINS.values()]
    (cy_out, cy_counts, cy_sums), (ref_out, ref_counts, ref_sums) = [decode_counting(d, payloads) for d in decoders]
    np.testing.assert_array_equal(cy_counts, ref_counts)
    np.testing.assert_array_equal(cy_sums, ref_sums)  # same values added in the same order: same bits
    expected_counts, expected_sums = oracle_counts(payloads, continuous_ids, discrete_ids)
    np.testing.assert_array_equal(cy_counts, expected_counts)
    np.testing.assert_allclose(cy_sums, expected_sums, rtol=1e-12, equal_nan=True)
    # counting changes no output, and the same decoder converts without counting too
    plain = decode_all(CyDecoder(LAYOUT), LAYOUT, payloads)
    assert_same(cy_out, plain)
    assert_same(ref_out, plain)
    assert_same(decode_all(decoders[0], LAYOUT, payloads), plain)


def rec(continuous=None, discrete=None, binary=None):
    return BPR.DataRecord(continuousFeatures=continuous, discreteFeatures=discrete, binaryFeatures=binary)


# 101 is a layout column, 104 a layout id whose column is past the tensor, 555
# and 777 no feature of the layout; 555 is in both sets; 301 a discrete column
REPORT_CONTINUOUS = (555, 101, 104)
REPORT_DISCRETE = (777, 301, 555)
CORPUS = [
    encode(BPR.BatchPredictionRequest(
        commonFeatures=rec({101: 10.0, 777: 250.0}, {301: 5}),
        individualFeaturesList=[
            rec({101: 0.0, 104: 10.000001, 555: -3.0}, {301: 100000}),
            rec({101: 200.5, 555: math.inf}, {301: 100001, 777: 7}, binary={301, 101}),
            rec(),
        ])),
    encode(BPR.BatchPredictionRequest(individualFeaturesList=[
        rec({101: 100000.5, 104: math.nan}),
        rec({101: -2.5}, {555: 20}),
    ])),
    # no candidates: its common features are still counted once, as the original's walk does
    encode(BPR.BatchPredictionRequest(individualFeaturesList=[], commonFeatures=rec({101: 45.0}))),
]


def expected_corpus_counts():
    """The corpus's counts worked out by hand: row -> {bucket index: count}, and the sums."""
    rows = {
        # continuous ids, sorted: 101, 104, 555
        0: ({bucket(0): 2, bucket(10): 1, bucket(50): 1, bucket(250): 1, INF: 1},  # 0, -2.5 | 10 | 45 | 200.5 | 100000.5
            10.0 + 0.0 + 200.5 + 100000.5 - 2.5 + 45.0),
        1: ({bucket(20): 1, INF: 1}, math.nan),  # 10.000001; NaN lands in +Inf and makes the sum NaN
        2: ({bucket(0): 1, INF: 1}, math.inf),  # -3 | inf: 555 is in both sets, a continuous value counts continuous
        # discrete ids, sorted: 301, 555, 777
        3: ({bucket(10): 1, bucket(100000): 1, INF: 1}, 5 + 100000 + 100001),  # the common 5 once, not per candidate
        4: ({bucket(20): 1}, 20.0),  # its discrete-map value
        5: ({bucket(250): 1, bucket(10): 1}, 257.0),  # a continuous-map value (as the original) and a discrete one
    }
    counts = np.zeros((6, len(BOUNDS) + 1), dtype=np.int64)
    sums = np.zeros(6)
    for row, (buckets, total) in rows.items():
        for index, count in buckets.items():
            counts[row, index] = count
        sums[row] = total
    return counts, sums


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_corpus_gives_the_exact_bucket_counts(twin):
    decoder = TWINS[twin](LAYOUT, REPORT_CONTINUOUS, REPORT_DISCRETE, BOUNDS)
    assert decoder.reported_continuous_ids == (101, 104, 555)
    assert decoder.reported_discrete_ids == (301, 555, 777)
    out, counts, sums = decode_counting(decoder, CORPUS)
    expected_counts, expected_sums = expected_corpus_counts()
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_array_equal(sums, expected_sums)
    # the reported ids still land in their columns
    assert out["continuous"][:, CONT[101]].tolist() == [0.0, 200.5, 10.0, 100000.5, -2.5]
    assert out["discrete"][:, DISC[301]].tolist() == [100000, 100001, 5, 0, 0]


def test_converter_counts_per_call_and_adds_nothing_when_not_asked():
    converter = BprConverter(LAYOUT, report_continuous_ids=REPORT_CONTINUOUS, report_discrete_ids=REPORT_DISCRETE,
                             report_bounds=FEATURE_VALUE_BUCKETS)
    assert converter.reported_feature_ids == ((101, 104, 555), (301, 555, 777))
    expected_counts, expected_sums = expected_corpus_counts()
    rows = converter.count_rows(CORPUS)
    out = LAYOUT.allocate(int(rows.sum()))
    first, second = converter.new_feature_counts(), converter.new_feature_counts()
    converter.convert_into(CORPUS[:1], out, feature_counts=first)
    converter.convert_into(CORPUS[1:], out, row_start=int(rows[0]), feature_counts=first)
    converter.convert_into(CORPUS, out)  # not counted anywhere
    converter.convert_into(CORPUS, out, feature_counts=second)
    for counts, sums in (first, second):
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_array_equal(sums, expected_sums)
    assert BprConverter(LAYOUT).new_feature_counts() is None


def test_bad_report_arguments_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        CyDecoder(LAYOUT, (1,), (), (10, 5))
    with pytest.raises(ValueError, match="bounds"):
        _bpr_ref.BprDecoder(LAYOUT, (1,), (), ())
    with pytest.raises(ValueError, match="int64"):
        CyDecoder(LAYOUT, (2**63,), (), BOUNDS)
    decoder = CyDecoder(LAYOUT, (101,), (), BOUNDS)
    out = LAYOUT.allocate(5)
    with pytest.raises(ValueError, match="feature counts must be"):
        decoder.decode_into(CORPUS, out["continuous"], out["binary"], out["discrete"],
                            [out[t.name] for t in LAYOUT.tensors[3:]], 0,
                            np.zeros((1, 3), dtype=np.int64), np.zeros(1))


# --------------------------------------------------------------------------- where the ids come from


def test_flags_are_comma_separated_repeatable_and_reach_every_model():
    from navi.config import build_settings

    settings = build_settings({
        "--model-dir": ["m/a", "m/b"],
        "--onnx-report-continuous-feature-ids": ("1,-2", "", " 3 "),
        "--onnx-report-discrete-feature-ids": (str(-(2**63)),),
    })
    for model in settings.models:
        assert model.report_continuous_feature_ids == (1, -2, 3)
        assert model.report_discrete_feature_ids == (-(2**63),)


@pytest.mark.parametrize("value", ["1,x", "2.5", str(2**63)])
def test_a_bad_id_names_the_flag(value):
    from navi.config import build_settings
    from navi.errors import ConfigError

    with pytest.raises(ConfigError, match="--onnx-report-discrete-feature-ids") as info:
        build_settings({"--model-dir": ["m/a"], "--onnx-report-discrete-feature-ids": (value,)})
    assert value.split(",")[-1] in str(info.value)


def test_config_file_sets_ids_per_model_and_flags_override_it(tmp_path):
    from navi.config import build_settings
    from navi.errors import ConfigError

    config = tmp_path / "navi.yaml"
    config.write_text(
        "models:\n"
        "  - model_dir: m/a\n"
        "    report_continuous_feature_ids: [5, 6]\n"
        "    report_discrete_feature_ids: '7,8'\n"
        "  - model_dir: m/b\n"
    )
    a, b = build_settings({}, config).models
    assert (a.report_continuous_feature_ids, a.report_discrete_feature_ids) == ((5, 6), (7, 8))
    assert (b.report_continuous_feature_ids, b.report_discrete_feature_ids) == ((), ())
    a, b = build_settings({"--onnx-report-continuous-feature-ids": ("9",)}, config).models
    assert a.report_continuous_feature_ids == b.report_continuous_feature_ids == (9,)
    config.write_text("models:\n  - model_dir: m/a\n    report_continuous_feature_ids: [five]\n")
    with pytest.raises(ConfigError, match=r"navi.yaml: models\[0\].report_continuous_feature_ids"):
        build_settings({}, config)


def test_meta_json_sets_ids_per_model():
    from navi.errors import ConfigError
    from navi.repository.meta import parse_meta
    from navi.settings import ModelSettings

    metas = parse_meta({"a": {"report_continuous_feature_ids": "1,2", "report_discrete_feature_ids": [3]}})
    base = ModelSettings(name="a", model_dir="m/a", report_continuous_feature_ids=(9,))
    applied = metas["a"].apply(base)
    assert applied.report_continuous_feature_ids == (1, 2)
    assert applied.report_discrete_feature_ids == (3,)
    with pytest.raises(ConfigError, match="a.report_discrete_feature_ids"):
        parse_meta({"a": {"report_discrete_feature_ids": ["x"]}})


def test_serve_help_documents_the_flags():
    from click.testing import CliRunner

    from navi.cli.main import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--onnx-report-discrete-feature-ids" in result.output
    assert "--onnx-report-continuous-feature-ids" in result.output


def test_tally_histogram_adds_a_batch_of_counts():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from navi.tally import TallyHistogram

    registry = CollectorRegistry()
    histogram = TallyHistogram("h", "test", ("feature_id",), buckets=(0, 10), registry=registry)
    child = histogram.labels(7)
    child.observe(5)
    child.add([1, 0, 2], 30.5)
    with pytest.raises(ValueError):
        child.add([1, 2], 0)
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("h_bucket", "0.0")] == 1
    assert samples[("h_bucket", "10.0")] == 2
    assert samples[("h_bucket", "+Inf")] == 4
    assert samples[("h_count", None)] == 4 and samples[("h_sum", None)] == 35.5


def test_bench_convert_runs_the_report_ab(tmp_path):
    from navi.bench.converter_speed import report_feature_ids, run_convert_bench
    from navi.segdense import load_layout
    from navi.workload import home_layout_files, make_bprs

    layout = load_layout(*home_layout_files(tmp_path))
    payloads = make_bprs(layout, 2, candidates=20, seed=1, continuous_per_candidate=300)
    continuous_ids, discrete_ids = report_feature_ids(layout, payloads)
    assert (len(continuous_ids), len(discrete_ids)) == (7, 3)
    assert set(continuous_ids) <= set(layout.continuous_ids.tolist())
    report = run_convert_bench(layout, payloads, rounds=2, min_round_s=0,
                               methods=["cython", "cython_report10", "cython_per_request",
                                        "cython_per_request_report10"])
    for prefix in ("report10_vs_none", "per_request_report10_vs_none"):
        for suffix in ("per_round_min", "per_round_median", "best"):
            assert report["ratios"][f"{prefix}_{suffix}"] > 0
