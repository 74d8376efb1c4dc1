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
    (lambda s, c: s["densification_transform_spec"]["cont"].__setitem__("fixed_length", -1),
     "densification_transform_spec.cont.fixed_length"),
    (lambda s, c: c["train_data"]["seg_dense_schema"]["renamed_features"].pop("author_embedding"),
     "renamed_features.author_embedding"),
    (lambda s, c: c["train_data"]["seg_dense_schema"]["renamed_features"].__setitem__("user_embedding", "nope"),
     "renamed_features.user_embedding"),
    (lambda s, c: s["complex_feature_type_transform_spec"][0].__setitem__("tensor_shape", [0]),
     "complex_feature_type_transform_spec[0].tensor_shape"),
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


def test_bad_continuous_default_names_the_key(tmp_path):
    spec, all_config = small_spec()
    spec["densification_transform_spec"]["cont"]["default_value"] = {"type": "float", "value": "none"}
    with pytest.raises(ConfigError, match=r"cont\.default_value\.value"):
        load_layout(*write(tmp_path, spec, all_config))
