"""Spec validation: good files give the layout; bad ones name the file and key."""
from __future__ import annotations

import json

import numpy as np
import pytest

from navi.errors import ConfigError
from navi.segdense import load_layout, load_layout_from_dir, resolve_layout
from navi.workload import home_layout_files

from .bpr_helpers import CONT, EMB, small_spec


def write(tmp_path, spec, all_config):
    spec_path, config_path = tmp_path / "spec.json", tmp_path / "all_config.json"
    spec_path.write_text(json.dumps(spec))
    config_path.write_text(json.dumps(all_config))
    return spec_path, config_path


def test_small_layout_widths_and_maps(tmp_path):
    layout = load_layout(*write(tmp_path, *small_spec()))
    assert layout.widths == {"continuous": 8, "binary": 4, "discrete": 4, "user_embedding": 3,
                             "user_eng_embedding": 3, "author_embedding": 3}
    cont = dict(zip(layout.continuous_ids.tolist(), layout.continuous_cols.tolist()))
    assert cont == CONT  # excluded feature 105 is absent
    assert layout.embedding_ids == tuple(EMB.values())
    assert layout.tensor("continuous").dtype == np.float32 and layout.tensor("binary").dtype == np.int64


def test_home_example_layout(tmp_path):
    layout = load_layout_from_dir(home_layout_files(tmp_path)[0].parent)
    assert layout.widths["continuous"] == 5293 and layout.widths["binary"] == 149
    assert layout.widths["discrete"] == 320 and layout.widths["author_embedding"] == 200
    assert layout.feed_order[0] == "continuous"


@pytest.mark.parametrize("mutate, key", [
    (lambda s, c: s.pop("input_features_map"), "input_features_map"),
    (lambda s, c: s["input_features_map"].__setitem__("x", []), "input_features_map.x"),
    (lambda s, c: s["input_features_map"]["c101"][0].__setitem__("index", "3"), "input_features_map.c101[0].index"),
    (lambda s, c: s["input_features_map"]["c101"][0].pop("feature_id"), "input_features_map.c101[0].feature_id"),
    (lambda s, c: c["train_data"]["seg_dense_schema"]["renamed_features"].pop("author_embedding"),
     "renamed_features.author_embedding"),
])
def test_bad_spec_names_file_and_key(tmp_path, mutate, key):
    spec, all_config = small_spec()
    mutate(spec, all_config)
    paths = write(tmp_path, spec, all_config)
    with pytest.raises(ConfigError) as info:
        load_layout(*paths)
    assert key in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_invalid_json_names_the_file(tmp_path):
    spec_path, config_path = write(tmp_path, *small_spec())
    spec_path.write_text("{not json")
    with pytest.raises(ConfigError, match="spec.json.*not valid JSON"):
        load_layout(spec_path, config_path)


def test_resolve_layout_needs_both_files(tmp_path):
    with pytest.raises(ConfigError, match="go together"):
        resolve_layout(spec=tmp_path / "a.json")
    with pytest.raises(ConfigError, match="missing"):
        resolve_layout(model_dir=tmp_path)


def test_continuous_default_comes_from_the_spec(tmp_path):
    from navi._fast import _bpr_ref
    from navi._fast._bpr import BprDecoder

    from .bpr_helpers import BPR, decode_all
    from navi.idl import encode

    spec, all_config = small_spec()
    spec["densification_transform_spec"]["cont"]["default_value"] = {"type": "float", "value": "0.5"}
    layout = load_layout(*write(tmp_path, spec, all_config))
    assert layout.tensor("continuous").default == 0.5
    payload = encode(BPR.BatchPredictionRequest(individualFeaturesList=[BPR.DataRecord(continuousFeatures={101: 2.0})]))
    for decoder in (BprDecoder(layout), _bpr_ref.BprDecoder(layout)):
        row = decode_all(decoder, layout, [payload])["continuous"][0]
        assert row[0] == 2.0 and (row[1:] == 0.5).all()


# ---- what the original's serde structs parse is accepted, with its meaning

def _fallback_warnings(caplog, path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "navi.segdense" and r.levelname == "WARNING" and str(path) in r.getMessage()]


@pytest.mark.parametrize("default_value", [
    {"type": "", "value": ""},
    {"type": "float", "value": "none"},
    {"type": "unknown_type", "value": "abc"},
    {"value": ["not", "a", "string"]},
], ids=["empty", "unknown-string", "unknown-type", "not-a-string"])
def test_unusable_continuous_default_is_nan_with_one_warning(tmp_path, caplog, default_value):
    """The original never reads default_value: navi falls back to its NaN fill."""
    spec, all_config = small_spec()
    spec["densification_transform_spec"]["cont"]["default_value"] = default_value
    paths = write(tmp_path, spec, all_config)
    with caplog.at_level("WARNING", logger="navi.segdense"):
        layouts = [load_layout(*paths) for _ in range(3)]  # e.g. three versions' reloads
    assert all(np.isnan(layout.tensor("continuous").default) for layout in layouts)
    warnings = _fallback_warnings(caplog, paths[0])
    assert len(warnings) == 1
    assert "densification_transform_spec.cont.default_value.value" in warnings[0]


def test_absent_optional_and_unknown_fields_are_accepted(tmp_path, caplog):
    spec, all_config = small_spec()
    spec["some_future_section"] = {"x": 1}
    spec["identity_transform_spec"] = [{"feature_id": 1, "full_feature_name": "a", "feature_type": 2,
                                        "brand_new": True}]
    for block in spec["densification_transform_spec"].values():
        if isinstance(block, dict):
            block.pop("default_value", None)
            block["unknown_key"] = "v"
    for entries in spec["input_features_map"].values():
        entries[0]["added_at"] = 1660000000
        entries[0]["unknown_key"] = [1, 2]
        if not entries[0].get("maybe_exclude"):
            entries[0].pop("maybe_exclude", None)
    for entry in spec["complex_feature_type_transform_spec"]:
        entry.pop("tensor_data_type", None)  # Option<i64> in the original
        entry["unknown_key"] = {}
    all_config["train_data"]["unknown_key"] = 3
    all_config["something_else"] = {"a": "b"}
    paths = write(tmp_path, spec, all_config)
    with caplog.at_level("WARNING", logger="navi.segdense"):
        layout = load_layout(*paths)
    assert dict(zip(layout.continuous_ids.tolist(), layout.continuous_cols.tolist())) == CONT
    assert np.isnan(layout.tensor("continuous").default)
    assert _fallback_warnings(caplog, tmp_path) == []


def test_embedding_absent_from_the_spec_is_zeros_as_the_original(tmp_path, caplog):
    from navi._fast import _bpr_ref
    from navi._fast._bpr import BprDecoder
    from navi.idl import encode

    from .bpr_helpers import BPR, decode_all

    spec, all_config = small_spec()
    all_config["train_data"]["seg_dense_schema"]["renamed_features"]["user_embedding"] = "not.in.the.spec"
    paths = write(tmp_path, spec, all_config)
    with caplog.at_level("WARNING", logger="navi.segdense"):
        layout = load_layout(*paths)
    assert layout.embedding_ids[0] == -1 and layout.embedding_ids[1:] == tuple(EMB.values())[1:]
    assert layout.widths["user_embedding"] == 200  # the original's width
    warnings = _fallback_warnings(caplog, paths[1])
    assert len(warnings) == 1 and "renamed_features.user_embedding" in warnings[0]
    payload = encode(BPR.BatchPredictionRequest(individualFeaturesList=[BPR.DataRecord(continuousFeatures={101: 2.0})]))
    for decoder in (BprDecoder(layout), _bpr_ref.BprDecoder(layout)):
        out = decode_all(decoder, layout, [payload])
        assert out["user_embedding"].shape == (1, 200) and not out["user_embedding"].any()


def test_negative_fixed_length_falls_back_to_largest_index(tmp_path, caplog):
    spec, all_config = small_spec()
    spec["densification_transform_spec"]["cont"]["fixed_length"] = -1  # an i64 the original never reads
    paths = write(tmp_path, spec, all_config)
    with caplog.at_level("WARNING", logger="navi.segdense"):
        layout = load_layout(*paths)
    assert layout.widths["continuous"] == max(CONT.values()) + 1
    warnings = _fallback_warnings(caplog, paths[0])
    assert len(warnings) == 1 and "densification_transform_spec.cont.fixed_length" in warnings[0]


def test_unusable_tensor_shape_falls_back_to_200_columns(tmp_path, caplog):
    spec, all_config = small_spec()
    spec["complex_feature_type_transform_spec"][0]["tensor_shape"] = [0]
    paths = write(tmp_path, spec, all_config)
    with caplog.at_level("WARNING", logger="navi.segdense"):
        layout = load_layout(*paths)
    name = spec["complex_feature_type_transform_spec"][0]["full_feature_name"]
    renamed = all_config["train_data"]["seg_dense_schema"]["renamed_features"]
    (emb,) = [key for key, value in renamed.items() if value == name]
    assert layout.widths[emb] == 200
    warnings = _fallback_warnings(caplog, paths[0])
    assert len(warnings) == 1 and "complex_feature_type_transform_spec[0].tensor_shape" in warnings[0]


def test_what_the_original_refuses_is_still_an_error(tmp_path):
    """A string where the original's struct has an i64 fails there too: named here."""
    spec, all_config = small_spec()
    spec["densification_transform_spec"]["cont"]["fixed_length"] = "8"
    with pytest.raises(ConfigError, match=r"cont\.fixed_length"):
        load_layout(*write(tmp_path, spec, all_config))
