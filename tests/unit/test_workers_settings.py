"""``workers``: the flag and the config key, ``auto`` and bad values."""
from __future__ import annotations

import pytest

from navi.config import build_settings
from navi.errors import ConfigError
from navi.settings import ServerSettings, usable_cores


def test_workers_from_the_flag_and_from_the_config_file(tmp_path):
    models = [tmp_path / "m"]
    assert build_settings({}, None, models).workers == 1
    assert build_settings({"--workers": "3"}, None, models).workers == 3
    config = tmp_path / "navi.toml"
    config.write_text('workers = "auto"\n')
    assert build_settings({}, config, models).workers == usable_cores()
    # the flag wins over the file
    assert build_settings({"--workers": "2"}, config, models).workers == 2


@pytest.mark.parametrize("value", ["0", "many", "-1"])
def test_a_bad_workers_value_names_the_flag(tmp_path, value):
    with pytest.raises(ConfigError, match="--workers"):
        build_settings({"--workers": value}, None, [tmp_path / "m"])


def test_default_handler_threads_divide_the_cores_among_the_workers(monkeypatch):
    import navi.settings

    monkeypatch.setattr(navi.settings, "usable_cores", lambda: 16)
    assert ServerSettings().grpc_threads == 8
    assert ServerSettings(workers=4).grpc_threads == 4
    assert ServerSettings(workers="auto").grpc_threads == 2  # never fewer than 2
    assert ServerSettings(workers=4, grpc_threads=6).grpc_threads == 6  # a given value wins
