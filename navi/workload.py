"""Deterministic home-recap-shaped workloads: spec files and serialized BPRs.

Used by the demo model, benchmarks, warmup and tests. The BPR writer here
emits Thrift binary protocol straight from numpy arrays (no per-feature
Python objects) so that generating a 1.5 MB request is cheap; tests check its
output against thriftpy2's encoder.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navi.segdense import ALL_CONFIG_FILENAME, SPEC_FILENAME, DenseLayout

HOME_WIDTHS = {"continuous": 5293, "binary": 149, "discrete": 320}
HOME_EMBEDDING_WIDTH = 200
HOME_EMBEDDING_FEATURES = {
    "user_embedding": "user.timelines.twhin_user_follow_embeddings.twhin_user_follow_embeddings",
    "user_eng_embedding": "user.timelines.twhin_user_engagement_embeddings.twhin_user_engagement_embeddings",
    "author_embedding": "original_author.timelines.twhin_author_follow_embeddings.twhin_author_follow_embeddings",
}
# How many features of each kind the example spec lists (spread over the widths).
HOME_LISTED = {"continuous": 2000, "binary": 149, "discrete": 320}

# Thrift binary type codes
T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64 = 0, 2, 3, 4, 6, 8, 10
T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST = 11, 12, 13, 14, 15

_KV_I64_DOUBLE = np.dtype([("k", ">i8"), ("v", ">f8")])
_KV_I64_I64 = np.dtype([("k", ">i8"), ("v", ">i8")])


def feature_id(name: str) -> int:
    """A stable signed 64-bit id for a feature name (stands in for Twitter's hash)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)


def home_spec(seed: int = 0, continuous_default: str = "nan") -> tuple[dict, dict]:
    """The example spec and all_config dicts of the home layout.

    ``continuous_default`` is the spec's fill value for missing continuous
    features ("nan", as the original, or a number).
    """
    rng = np.random.default_rng(seed)
    sections = {}
    features_map = {}
    for section, kind, feature_type in (("cont", "continuous", 2), ("binary", "binary", 1), ("discrete", "discrete", 3)):
        width = HOME_WIDTHS[kind]
        columns = np.sort(rng.choice(width, size=HOME_LISTED[kind], replace=False))
        inputs = []
        for col in columns.tolist():
            name = f"home.{kind}.f{col}"
            feature = {
                "feature_id": feature_id(name),
                "full_feature_name": name,
                "feature_type": feature_type,
                "index": col,
                "maybe_exclude": False,
                "tag": kind,
                "added_at": "2022-01-01",
            }
            inputs.append(feature)
            features_map[name] = [feature]
        sections[section] = {
            "tag": kind,
            "generic_feature_type": feature_type,
            "feature_identifier": "FEATURE_ID",
            "fixed_length": width,
            "default_value": {"type": "float" if kind == "continuous" else "int",
                              "value": continuous_default if kind == "continuous" else "0"},
            "input_features": inputs,
        }
    # An excluded feature and a negative index, as real specs carry: both must be ignored.
    for name, extra in (("home.continuous.excluded", {"maybe_exclude": True, "index": 1}),
                        ("home.continuous.unplaced", {"index": -1})):
        feature = {"feature_id": feature_id(name), "full_feature_name": name, "feature_type": 2,
                   "index": 0, "maybe_exclude": False, "tag": "continuous", "added_at": "2022-01-01"}
        feature.update(extra)
        features_map[name] = [feature]
    sections["string"] = {"tag": "string", "generic_feature_type": 4, "feature_identifier": "FEATURE_ID",
                          "fixed_length": 0, "default_value": {"type": "string", "value": ""}, "input_features": []}
    sections["blob"] = {"tag": "blob", "generic_feature_type": 8, "feature_identifier": "FEATURE_ID",
                        "fixed_length": 0, "default_value": {"type": "string", "value": ""}, "input_features": []}
    complex_specs = [
        {
            "feature_id": feature_id(full_name),
            "full_feature_name": full_name,
            "feature_type": 9,
            "index": i,
            "maybe_exclude": False,
            "tag": "embedding",
            "tensor_data_type": 0,
            "added_at": "2022-01-01",
            "tensor_shape": [HOME_EMBEDDING_WIDTH],
        }
        for i, full_name in enumerate(HOME_EMBEDDING_FEATURES.values())
    ]
    spec = {
        "common_prefix": "",
        "densification_transform_spec": sections,
        "identity_transform_spec": [],
        "complex_feature_type_transform_spec": complex_specs,
        "input_features_map": features_map,
    }
    renamed = {"continuous": "continuous", "binary": "binary", "discrete": "discrete"}
    renamed.update(HOME_EMBEDDING_FEATURES)
    renamed.update({"meta__author_id": "meta.author_id", "meta__user_id": "meta.user_id", "meta__tweet_id": "meta.tweet_id"})
    all_config = {"train_data": {"seg_dense_schema": {"renamed_features": renamed}}}
    return spec, all_config


def home_layout_files(dst_dir: Path, seed: int = 0, continuous_default: str = "nan") -> tuple[Path, Path]:
    """Write the example spec and all_config.json into ``dst_dir``; returns their paths."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    spec, all_config = home_spec(seed, continuous_default)
    spec_path, config_path = dst_dir / SPEC_FILENAME, dst_dir / ALL_CONFIG_FILENAME
    spec_path.write_text(json.dumps(spec, separators=(",", ":")))
    config_path.write_text(json.dumps(all_config, indent=2))
    return spec_path, config_path


# ---------------------------------------------------------------- BPR writing


@dataclass
class Record:
    """The features of one DataRecord, as numpy arrays (ids are int64)."""

    continuous_ids: np.ndarray | None = None
    continuous_values: np.ndarray | None = None
    binary_ids: np.ndarray | None = None
    discrete_ids: np.ndarray | None = None
    discrete_values: np.ndarray | None = None
    embeddings: dict[int, np.ndarray] | None = None  # feature id -> float values


def _field(ftype: int, fid: int) -> bytes:
    return struct.pack(">bh", ftype, fid)


def encode_record(record: Record) -> bytes:
    """Thrift binary encoding of a DataRecord struct (fields in id order)."""
    parts = []
    if record.binary_ids is not None:
        ids = np.asarray(record.binary_ids, dtype=">i8")
        parts += [_field(T_SET, 1), struct.pack(">bi", T_I64, len(ids)), ids.tobytes()]
    if record.continuous_ids is not None:
        kv = np.empty(len(record.continuous_ids), dtype=_KV_I64_DOUBLE)
        kv["k"], kv["v"] = record.continuous_ids, record.continuous_values
        parts += [_field(T_MAP, 2), struct.pack(">bbi", T_I64, T_DOUBLE, len(kv)), kv.tobytes()]
    if record.discrete_ids is not None:
        kv = np.empty(len(record.discrete_ids), dtype=_KV_I64_I64)
        kv["k"], kv["v"] = record.discrete_ids, record.discrete_values
        parts += [_field(T_MAP, 3), struct.pack(">bbi", T_I64, T_I64, len(kv)), kv.tobytes()]
    if record.embeddings:
        parts += [_field(T_MAP, 8), struct.pack(">bbi", T_I64, T_STRUCT, len(record.embeddings))]
        for fid, values in record.embeddings.items():
            floats = np.asarray(values, dtype=">f8")
            # GeneralTensor { 5: FloatTensor { 1: list<double> floats } }
            parts += [
                struct.pack(">q", fid),
                _field(T_STRUCT, 5),
                _field(T_LIST, 1), struct.pack(">bi", T_DOUBLE, len(floats)), floats.tobytes(),
                bytes([T_STOP]),  # end FloatTensor
                bytes([T_STOP]),  # end GeneralTensor
            ]
    parts.append(bytes([T_STOP]))
    return b"".join(parts)


def encode_bpr(candidates: list[Record], common: Record | None = None) -> bytes:
    """Thrift binary encoding of a BatchPredictionRequest."""
    parts = [_field(T_LIST, 1), struct.pack(">bi", T_STRUCT, len(candidates))]
    parts += [encode_record(r) for r in candidates]
    if common is not None:
        parts += [_field(T_STRUCT, 2), encode_record(common)]
    parts.append(bytes([T_STOP]))
    return b"".join(parts)


def make_bprs(
    layout: DenseLayout,
    n_bprs: int,
    candidates: int = 100,
    seed: int = 0,
    continuous_per_candidate: int = 700,
    binary_per_candidate: int = 20,
    discrete_per_candidate: int = 30,
    unknown_fraction: float = 0.1,
    common_continuous: int = 50,
) -> list[bytes]:
    """Serialized home-recap-shaped BPRs.

    Each candidate carries ``continuous_per_candidate`` continuous,
    ``binary_per_candidate`` binary and ``discrete_per_candidate`` discrete
    features (``unknown_fraction`` of them with ids the spec does not know) and
    an author embedding; common features carry a few continuous features and
    the two user embeddings.
    """
    rng = np.random.default_rng(seed)
    emb_user, emb_eng, emb_author = (layout.embedding_ids + (-1, -1, -1))[:3]
    emb_width = {layout.embedding_ids[i]: layout.tensors[3 + i].width for i in range(len(layout.embedding_ids))}

    def pick(ids: np.ndarray, count: int) -> np.ndarray:
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        n_unknown = int(round(count * unknown_fraction))
        n_known = min(count - n_unknown, len(ids))
        known = rng.choice(ids, size=n_known, replace=False) if n_known else np.empty(0, np.int64)
        unknown = rng.integers(-(2**63), 2**63 - 1, size=count - n_known, dtype=np.int64)
        return np.concatenate([known, unknown]).astype(np.int64)

    out = []
    for _ in range(n_bprs):
        records = []
        for _ in range(candidates):
            c_ids = pick(layout.continuous_ids, continuous_per_candidate)
            d_ids = pick(layout.discrete_ids, discrete_per_candidate)
            records.append(Record(
                continuous_ids=c_ids,
                continuous_values=rng.standard_normal(len(c_ids)),
                binary_ids=pick(layout.binary_ids, binary_per_candidate),
                discrete_ids=d_ids,
                discrete_values=rng.integers(0, 1000, size=len(d_ids)),
                embeddings={emb_author: rng.standard_normal(emb_width.get(emb_author, 200))} if emb_author != -1 else None,
            ))
        c_ids = pick(layout.continuous_ids, common_continuous)
        common = Record(
            continuous_ids=c_ids,
            continuous_values=rng.standard_normal(len(c_ids)),
            embeddings={fid: rng.standard_normal(emb_width.get(fid, 200)) for fid in (emb_user, emb_eng) if fid != -1},
        )
        out.append(encode_bpr(records, common))
    return out


def full_bpr(layout: DenseLayout, candidates: int = 1, seed: int = 0) -> bytes:
    """One BPR carrying every feature of the layout (used for synthetic warmup)."""
    rng = np.random.default_rng(seed)
    records = [
        Record(
            continuous_ids=layout.continuous_ids,
            continuous_values=rng.standard_normal(len(layout.continuous_ids)),
            binary_ids=layout.binary_ids,
            discrete_ids=layout.discrete_ids,
            discrete_values=rng.integers(0, 100, size=len(layout.discrete_ids)),
            embeddings={fid: rng.standard_normal(layout.tensors[3 + i].width)
                        for i, fid in enumerate(layout.embedding_ids)},
        )
        for _ in range(candidates)
    ]
    return encode_bpr(records)
