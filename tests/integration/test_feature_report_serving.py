"""Feature monitoring end to end: ``navi serve`` with the report flags, BPRs in, /metrics scraped."""
from __future__ import annotations

import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from navi import codec
from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from navi.segdense import load_layout_from_dir
from navi.workload import Record, encode_bpr

from .conftest import REPO_ROOT

HOME = REPO_ROOT / "models" / "home"
UNKNOWN_ID = 123_456_789  # no feature of the model: reported all the same, as the original does
NEVER_SENT_ID = 42


def _record(continuous: dict | None = None, discrete: dict | None = None) -> Record:
    continuous, discrete = continuous or {}, discrete or {}
    return Record(continuous_ids=np.array(list(continuous), dtype=np.int64),
                  continuous_values=np.array(list(continuous.values()), dtype=np.float64),
                  discrete_ids=np.array(list(discrete), dtype=np.int64),
                  discrete_values=np.array(list(discrete.values()), dtype=np.int64))


def _predict(channel, payloads: list[bytes]) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "home"
    codec.ndarray_to_tensor_proto(np.array(payloads, dtype=object), request.inputs["examples"])
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return codec.tensor_proto_to_ndarray(response.outputs["output_0"])


def _buckets(daemon, family_name: str) -> dict[str, dict]:
    """feature_id -> {le (float): cumulative count, "count": n, "sum": s} of one scraped histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.prometheus_port}/metrics", timeout=10).read()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert families[family_name].type == "histogram"
    series: dict[str, dict] = {}
    for sample in families[family_name].samples:
        entry = series.setdefault(sample.labels["feature_id"], {})
        if sample.name.endswith("_bucket"):
            entry[float(sample.labels["le"])] = sample.value
        else:
            entry[sample.name.rsplit("_", 1)[1]] = sample.value
    return series


def _cumulative(counts: dict[float, int]) -> dict[float, float]:
    """Cumulative ``le`` buckets of the original's bounds from per-bucket counts."""
    from navi.metrics import FEATURE_VALUE_BUCKETS

    out, running = {}, 0
    for bound in [float(b) for b in FEATURE_VALUE_BUCKETS] + [float("inf")]:
        running += counts.get(bound, 0)
        out[bound] = running
    return out


def test_reported_feature_values_reach_the_histograms(start_navi):
    version_dir = next(HOME.iterdir())
    layout = load_layout_from_dir(version_dir)
    c0, c1 = (int(i) for i in layout.continuous_ids[:2])
    d0 = int(layout.discrete_ids[0])
    daemon = start_navi(
        "--model-dir", HOME,
        "--onnx-report-continuous-feature-ids", f"{c0},{c1}",
        "--onnx-report-continuous-feature-ids", str(UNKNOWN_ID),
        "--onnx-report-discrete-feature-ids", f"{d0},{NEVER_SENT_ID}",
    )
    first = encode_bpr(
        [_record({c0: 5.0, c1: 1000.0}, {d0: 3}), _record({c1: 99999.0, UNKNOWN_ID: -1.0}), _record()],
        common=_record({c0: 15.0}, {d0: 250}),
    )
    second = encode_bpr([_record({c0: 1e6})])
    with daemon.channel() as channel:
        assert _predict(channel, [first, second]).shape == (4, 1)
        assert _predict(channel, [first]).shape == (3, 1)

    continuous = _buckets(daemon, ":navi:feature_id:continuous")
    discrete = _buckets(daemon, ":navi:feature_id:discrete")
    inf = float("inf")
    # the common value once per BPR (not per candidate), each candidate's once; the warmup's
    # synthetic BPR (every feature of the model) counts nowhere
    assert {k: v for k, v in continuous[str(c0)].items() if isinstance(k, float)} == _cumulative(
        {10.0: 2, 20.0: 2, inf: 1})
    assert continuous[str(c0)]["count"] == 5 and continuous[str(c0)]["sum"] == 2 * (5 + 15) + 1e6
    assert {k: v for k, v in continuous[str(c1)].items() if isinstance(k, float)} == _cumulative(
        {1000.0: 2, 100000.0: 2})
    assert {k: v for k, v in continuous[str(UNKNOWN_ID)].items() if isinstance(k, float)} == _cumulative(
        {0.0: 2})
    assert {k: v for k, v in discrete[str(d0)].items() if isinstance(k, float)} == _cumulative(
        {10.0: 2, 250.0: 2})
    assert discrete[str(d0)]["sum"] == 2 * (3 + 250)
    # a series appears once a value of its feature was seen, as the original's
    assert set(continuous) == {str(c0), str(c1), str(UNKNOWN_ID)}
    assert set(discrete) == {str(d0)}
