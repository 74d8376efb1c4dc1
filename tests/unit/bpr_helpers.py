"""Shared helpers for the BPR decoder tests: a small layout, thriftpy2 structs, an oracle."""
from __future__ import annotations

import numpy as np
import thriftpy2

from navi.idl import bpr_thrift
from navi.segdense import parse_layout

BPR = bpr_thrift()

# Ids of the small test layout (columns chosen to include one beyond fixed_length).
CONT = {101: 0, 102: 3, 103: 7, -5: 5, 2**63 - 1: 1, 104: 9}  # 104 -> column 9 >= width 8: ignored
BIN = {201: 0, 202: 3, -(2**63): 1}
DISC = {301: 2, 302: 0, 303: 3}
EMB = {"user_embedding": 401, "user_eng_embedding": 402, "author_embedding": 403}
WIDTHS = {"continuous": 8, "binary": 4, "discrete": 4}
EMB_WIDTH = 3


def small_spec() -> tuple[dict, dict]:
    """Spec and all_config dicts of the small test layout."""
    features_map = {}
    for ids, ftype, kind in ((CONT, 2, "c"), (BIN, 1, "b"), (DISC, 3, "d")):
        for fid, col in ids.items():
            features_map[f"{kind}{fid}"] = [{"feature_id": fid, "full_feature_name": f"{kind}{fid}",
                                             "feature_type": ftype, "index": col, "maybe_exclude": False,
                                             "tag": "", "added_at": ""}]
    features_map["excluded"] = [{"feature_id": 105, "full_feature_name": "excluded", "feature_type": 2,
                                 "index": 2, "maybe_exclude": True, "tag": "", "added_at": ""}]
    sections = {
        "cont": {"fixed_length": WIDTHS["continuous"], "input_features": []},
        "binary": {"fixed_length": WIDTHS["binary"], "input_features": []},
        "discrete": {"input_features": []},  # width from the largest index + 1
    }
    spec = {
        "common_prefix": "",
        "densification_transform_spec": sections,
        "identity_transform_spec": [],
        "complex_feature_type_transform_spec": [
            {"feature_id": fid, "full_feature_name": f"emb.{name}", "feature_type": 9, "index": 0,
             "maybe_exclude": False, "tag": "", "added_at": "", "tensor_shape": [EMB_WIDTH]}
            for name, fid in EMB.items()
        ],
        "input_features_map": features_map,
    }
    renamed = {name: f"emb.{name}" for name in EMB}
    all_config = {"train_data": {"seg_dense_schema": {"renamed_features": renamed}}}
    return spec, all_config


def small_layout():
    """The DenseLayout of ``small_spec``."""
    return parse_layout(*small_spec())


def decode_all(decoder, layout, payloads):
    """Run a decoder over payloads into fresh arrays (poisoned, so unwritten cells show)."""
    rows = int(decoder.count_rows(payloads).sum())
    out = layout.allocate(rows)
    for arr in out.values():
        arr.fill(-7)
    decoder.decode_into(payloads, out["continuous"], out["binary"], out["discrete"],
                        [out[t.name] for t in layout.tensors[3:]])
    return out


def oracle(layout, payloads):
    """Expected arrays computed from thriftpy2 objects, straight from the spec notes."""
    from navi.idl import decode_bpr

    maps = [
        {int(i): int(c) for i, c in zip(ids, cols) if 0 <= c < layout.tensors[k].width}
        for k, (ids, cols) in enumerate(((layout.continuous_ids, layout.continuous_cols),
                                         (layout.binary_ids, layout.binary_cols),
                                         (layout.discrete_ids, layout.discrete_cols)))
    ]
    out_rows = []

    def apply(rec, row):
        if rec is None:
            return
        for fid in rec.binaryFeatures or ():
            if fid in maps[1]:
                row["binary"][maps[1][fid]] = 1
        for fid, value in (rec.continuousFeatures or {}).items():
            if fid in maps[0]:
                row["continuous"][maps[0][fid]] = np.float32(value)
        for fid, value in (rec.discreteFeatures or {}).items():
            if fid in maps[2]:
                row["discrete"][maps[2][fid]] = value
        for fid, tensor in (rec.tensors or {}).items():
            for k, emb_id in enumerate(layout.embedding_ids):
                if emb_id != fid:
                    continue
                dst = row[layout.tensors[3 + k].name]
                dst[:] = 0
                floats = tensor.floatTensor.floats if tensor.floatTensor is not None else None
                if floats:
                    n = min(len(floats), dst.shape[0])
                    dst[:n] = np.asarray(floats[:n], dtype=np.float32)

    for payload in payloads:
        bpr = decode_bpr(payload)
        template = {t.name: np.full(t.width, t.default, dtype=t.dtype) for t in layout.tensors}
        with np.errstate(over="ignore"):  # doubles beyond float32 become inf, as in C
            apply(bpr.commonFeatures, template)
            for rec in bpr.individualFeaturesList:
                row = {k: v.copy() for k, v in template.items()}
                apply(rec, row)
                out_rows.append(row)
    return {t.name: (np.stack([r[t.name] for r in out_rows]) if out_rows else np.empty((0, t.width), t.dtype))
            for t in layout.tensors}


def assert_same(a: dict, b: dict) -> None:
    """Arrays equal name by name (NaN equal to NaN)."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


FUTURE_IDL = """
struct Nested { 1: i32 a, 2: list<string> b, 3: map<i64, Nested2> c }
struct Nested2 { 1: Nested3 deep, 2: set<i16> s }
struct Nested3 { 1: binary blob, 2: list<list<double>> lld }
struct FloatTensor { 1: list<double> floats, 2: list<i64> shape, 9: Nested extra }
struct RawTypedTensor { 1: i32 dataType, 2: binary content, 3: list<i64> shape }
struct Int64Tensor { 1: list<i64> longs, 2: list<i64> shape }
union GeneralTensor {
  1: RawTypedTensor rawTypedTensor
  4: Int64Tensor int64Tensor
  5: FloatTensor floatTensor
  12: Nested futureTensor
}
struct DataRecord {
  1: optional set<i64> binaryFeatures
  2: optional map<i64, double> continuousFeatures
  3: optional map<i64, i64> discreteFeatures
  4: optional map<i64, string> stringFeatures
  5: optional map<i64, set<string>> sparseBinaryFeatures
  6: optional map<i64, map<string, double>> sparseContinuousFeatures
  7: optional map<i64, binary> blobFeatures
  8: optional map<i64, GeneralTensor> tensors
  20: optional bool u_bool
  21: optional byte u_byte
  22: optional i16 u_i16
  23: optional i32 u_i32
  24: optional i64 u_i64
  25: optional double u_double
  26: optional string u_string
  27: optional Nested u_struct
  28: optional map<string, list<i32>> u_map
  29: optional set<binary> u_set
  30: optional list<Nested> u_list
}
struct BatchPredictionRequest {
  1: required list<DataRecord> individualFeaturesList
  2: optional DataRecord commonFeatures
  3: optional string u_request_id
  4: optional Nested u_nested
  5: optional list<DataRecord> u_more_records
}
"""


def future_thrift(tmp_dir):
    """thriftpy2 module of a newer IDL: every struct has fields we don't know."""
    path = tmp_dir / "bpr_future.thrift"
    path.write_text(FUTURE_IDL)
    return thriftpy2.load(str(path), module_name="bpr_future_thrift")
