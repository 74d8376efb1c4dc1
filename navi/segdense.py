"""Reader of the segdense feature spec: JSON files -> one immutable DenseLayout.

A model version ships ``segdense_transform_spec_home_recap_2022.json`` (the
spec) and ``all_config.json``. This module is their only reader. Unlike the
original, widths come from the spec (``fixed_length``, else the largest index
+ 1) and embedding ids from ``renamed_features``, never from constants.

Every file the original accepts is accepted with its meaning. Its structs
ignore unknown keys and never read ``default_value``, ``fixed_length`` or
``tensor_shape``; an embedding named in ``all_config.json`` but absent from
the spec gets id -1 (an all-zero tensor). Where navi reads more than the
original (``default_value.value`` as the continuous fill, ``fixed_length``
and ``tensor_shape`` as widths), a value it cannot use falls back to the
original's behaviour (NaN fill, largest index + 1, 200 columns) with one
warning naming the file and key.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from navi.errors import ConfigError

log = logging.getLogger(__name__)

SPEC_FILENAME = "segdense_transform_spec_home_recap_2022.json"
#: the original's width of every embedding tensor (it never reads tensor_shape)
ORIGINAL_EMBEDDING_WIDTH = 200
#: the original's feature id of an embedding it cannot find in the spec
MISSING_EMBEDDING_ID = -1
ALL_CONFIG_FILENAME = "all_config.json"

# feature_type codes of InputFeature (FeatureType in the BPR IDL)
FEATURE_TYPE_BINARY = 1
FEATURE_TYPE_CONTINUOUS = 2
FEATURE_TYPE_DISCRETE = 3

# densification section -> (tensor name, feature type)
_SECTIONS = {"cont": ("continuous", 2), "binary": ("binary", 1), "discrete": ("discrete", 3)}
EMBEDDING_NAMES = ("user_embedding", "user_eng_embedding", "author_embedding")
# The original's five model inputs, in the order it feeds them.
FEED_ORDER = ("continuous", "binary", "user_embedding", "user_eng_embedding", "author_embedding")


@dataclass(frozen=True)
class DenseTensor:
    """One dense output tensor of the converter: [rows, width] of ``dtype``."""

    name: str
    dtype: np.dtype
    width: int
    default: float


@dataclass(frozen=True, eq=False)
class DenseLayout:
    """Where every feature of a BPR lands in the dense tensors.

    ``*_ids`` / ``*_cols`` are parallel int64 arrays: feature id -> column of
    the continuous, binary and discrete tensors. ``embedding_ids[k]`` is the
    feature id of ``EMBEDDING_NAMES[k]`` (-1 when the spec lacks it).
    """

    tensors: tuple[DenseTensor, ...]
    continuous_ids: np.ndarray
    continuous_cols: np.ndarray
    binary_ids: np.ndarray
    binary_cols: np.ndarray
    discrete_ids: np.ndarray
    discrete_cols: np.ndarray
    embedding_ids: tuple[int, ...]
    source: str = ""
    feed_order: tuple[str, ...] = FEED_ORDER

    def tensor(self, name: str) -> DenseTensor:
        """The tensor called ``name``."""
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    @property
    def widths(self) -> dict[str, int]:
        """Tensor name -> column count."""
        return {t.name: t.width for t in self.tensors}

    @property
    def row_bytes(self) -> int:
        """Bytes of one row across every tensor."""
        return sum(t.width * np.dtype(t.dtype).itemsize for t in self.tensors)

    def allocate(self, rows: int) -> dict[str, np.ndarray]:
        """Uninitialised output arrays for ``rows`` rows (the converter fills every cell)."""
        return {t.name: np.empty((rows, t.width), dtype=t.dtype) for t in self.tensors}


def find_spec_files(version_dir: Path) -> tuple[Path, Path] | None:
    """The (spec, all_config) paths of a version directory, or None if either is missing."""
    version_dir = Path(version_dir)
    spec, all_config = version_dir / SPEC_FILENAME, version_dir / ALL_CONFIG_FILENAME
    if spec.is_file() and all_config.is_file():
        return spec, all_config
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg} (line {exc.lineno})", str(path)) from exc


def _get(obj: Any, key: str, kind: type | tuple[type, ...], source: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ConfigError("expected an object", source, where)
    if key not in obj:
        raise ConfigError("missing key", source, f"{where}.{key}" if where else key)
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(
            f"expected {names}, got {type(value).__name__}", source, f"{where}.{key}" if where else key
        )
    return value


def _input_feature(obj: Any, source: str, where: str) -> tuple[int, int, int, bool]:
    feature_id = _get(obj, "feature_id", int, source, where)
    feature_type = _get(obj, "feature_type", int, source, where)
    index = _get(obj, "index", int, source, where)
    maybe_exclude = obj.get("maybe_exclude", False)
    if not isinstance(maybe_exclude, bool):
        raise ConfigError("expected bool", source, f"{where}.maybe_exclude")
    if not -(2**63) <= feature_id < 2**63:
        raise ConfigError("feature_id does not fit in i64", source, f"{where}.feature_id")
    return feature_id, feature_type, index, maybe_exclude


_warned_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def _fall_back(source: str, key: str, message: str) -> None:
    """Warn once per (file, key) that a value navi cannot use falls back to the original's meaning."""
    with _warned_lock:
        if (source, key) in _warned:
            return
        _warned.add((source, key))
    log.warning("%s: %s: %s", source, key, message)


def _continuous_default(block: dict | None, source: str, where: str) -> float:
    """The fill value of missing continuous features: NaN as the original, unless
    the section's ``default_value.value`` names a number (a model trained with
    another imputation then needs no NaN handling in its graph). Anything else
    there (an empty or unknown string: the original never reads it) means NaN."""
    default_value = (block or {}).get("default_value")
    if default_value is None:
        return float("nan")
    if not isinstance(default_value, dict):
        raise ConfigError("expected an object", source, f"{where}.default_value")
    value = default_value.get("value", "nan")
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    except (TypeError, ValueError):
        _fall_back(source, f"{where}.default_value.value",
                   f"{value!r} is not a number; missing continuous features are NaN, as in the original")
        return float("nan")


def parse_layout(spec: Any, all_config: Any, spec_source: str = "spec", config_source: str = "all_config") -> DenseLayout:
    """Build a DenseLayout from already-parsed JSON; errors name the file and key."""
    dts = _get(spec, "densification_transform_spec", dict, spec_source, "")
    features_map = _get(spec, "input_features_map", dict, spec_source, "")
    complex_specs = spec.get("complex_feature_type_transform_spec", [])
    if not isinstance(complex_specs, list):
        raise ConfigError("expected a list", spec_source, "complex_feature_type_transform_spec")

    columns: dict[int, tuple[list[int], list[int]]] = {1: ([], []), 2: ([], []), 3: ([], [])}
    for name, entries in features_map.items():
        where = f"input_features_map.{name}"
        if not isinstance(entries, list) or len(entries) != 1:
            raise ConfigError("expected a list of exactly one InputFeature", spec_source, where)
        feature_id, feature_type, index, maybe_exclude = _input_feature(entries[0], spec_source, f"{where}[0]")
        if maybe_exclude or index < 0 or feature_type not in columns:
            continue
        ids, cols = columns[feature_type]
        ids.append(feature_id)
        cols.append(index)

    tensors = []
    for section, (tensor_name, feature_type) in _SECTIONS.items():
        block = dts.get(section)
        where = f"densification_transform_spec.{section}"
        fixed_length = None
        if block is not None:
            if not isinstance(block, dict):
                raise ConfigError("expected an object", spec_source, where)
            fixed_length = block.get("fixed_length")
            if fixed_length is not None and (isinstance(fixed_length, bool) or not isinstance(fixed_length, int)):
                raise ConfigError("expected an integer", spec_source, f"{where}.fixed_length")
            if fixed_length is not None and fixed_length < 0:
                # the original never reads it; navi's width rule without it applies
                _fall_back(spec_source, f"{where}.fixed_length",
                           f"{fixed_length} is negative; the width is the largest index + 1")
                fixed_length = None
        cols = columns[feature_type][1]
        width = fixed_length if fixed_length is not None else (max(cols) + 1 if cols else 0)
        dtype = np.dtype(np.float32) if feature_type == FEATURE_TYPE_CONTINUOUS else np.dtype(np.int64)
        default = 0.0
        if feature_type == FEATURE_TYPE_CONTINUOUS:
            default = _continuous_default(block, spec_source, where)
        tensors.append(DenseTensor(tensor_name, dtype, int(width), default))

    renamed = _get(
        _get(_get(all_config, "train_data", dict, config_source, ""), "seg_dense_schema", dict, config_source, "train_data"),
        "renamed_features", dict, config_source, "train_data.seg_dense_schema",
    )
    by_name: dict[str, dict] = {}
    for i, entry in enumerate(complex_specs):
        full_name = _get(entry, "full_feature_name", str, spec_source, f"complex_feature_type_transform_spec[{i}]")
        by_name[full_name] = entry
    embedding_ids = []
    for emb in EMBEDDING_NAMES:
        key = "train_data.seg_dense_schema.renamed_features"
        full_name = _get(renamed, emb, str, config_source, key)
        entry = by_name.get(full_name)
        if entry is None:
            # as the original: no such feature, so the tensor stays all zeros
            _fall_back(config_source, f"{key}.{emb}",
                       f"{full_name!r} is not in {Path(spec_source).name}'s "
                       "complex_feature_type_transform_spec; the tensor is all zeros, as in the original")
            embedding_ids.append(MISSING_EMBEDDING_ID)
            tensors.append(DenseTensor(emb, np.dtype(np.float32), ORIGINAL_EMBEDDING_WIDTH, 0.0))
            continue
        idx = list(complex_specs).index(entry)
        where = f"complex_feature_type_transform_spec[{idx}]"
        feature_id = _get(entry, "feature_id", int, spec_source, where)
        shape = entry.get("tensor_shape") or [ORIGINAL_EMBEDDING_WIDTH]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ConfigError("expected a list of integers", spec_source, f"{where}.tensor_shape")
        if not all(d > 0 for d in shape):
            _fall_back(spec_source, f"{where}.tensor_shape",
                       f"{shape} has a dimension below 1; the tensor has "
                       f"{ORIGINAL_EMBEDDING_WIDTH} columns, as in the original")
            shape = [ORIGINAL_EMBEDDING_WIDTH]
        width = int(np.prod(shape))
        embedding_ids.append(feature_id)
        tensors.append(DenseTensor(emb, np.dtype(np.float32), width, 0.0))

    def arrays(feature_type: int) -> tuple[np.ndarray, np.ndarray]:
        ids, cols = columns[feature_type]
        return np.asarray(ids, dtype=np.int64), np.asarray(cols, dtype=np.int64)

    c_ids, c_cols = arrays(FEATURE_TYPE_CONTINUOUS)
    b_ids, b_cols = arrays(FEATURE_TYPE_BINARY)
    d_ids, d_cols = arrays(FEATURE_TYPE_DISCRETE)
    return DenseLayout(
        tensors=tuple(tensors),
        continuous_ids=c_ids, continuous_cols=c_cols,
        binary_ids=b_ids, binary_cols=b_cols,
        discrete_ids=d_ids, discrete_cols=d_cols,
        embedding_ids=tuple(embedding_ids),
        source=spec_source,
    )


def load_layout(spec_path: Path, all_config_path: Path) -> DenseLayout:
    """Read and validate a spec and all_config.json; raises ConfigError naming file and key."""
    spec = _read_json(spec_path)
    all_config = _read_json(all_config_path)
    return parse_layout(spec, all_config, str(spec_path), str(all_config_path))


def load_layout_from_dir(version_dir: Path) -> DenseLayout:
    """The layout of a model version directory; ConfigError if its spec files are missing."""
    found = find_spec_files(version_dir)
    if found is None:
        raise ConfigError(f"missing {SPEC_FILENAME} or {ALL_CONFIG_FILENAME}", str(version_dir))
    return load_layout(*found)


def resolve_layout(model_dir: Path | None = None, spec: Path | None = None, all_config: Path | None = None) -> DenseLayout:
    """The layout named by a version directory, or by explicit spec and all_config paths."""
    if spec is not None or all_config is not None:
        if spec is None or all_config is None:
            raise ConfigError("--spec and --all-config go together")
        return load_layout(spec, all_config)
    if model_dir is None:
        raise ConfigError("give --model-dir <model>/<version>, or --spec and --all-config")
    return load_layout_from_dir(model_dir)
