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


def test_worker_cpus_from_the_flag_and_from_the_config_file(tmp_path):
    models = [tmp_path / "m"]
    assert build_settings({}, None, models).worker_cpus == "none"
    assert build_settings({"--worker-cpus": "split"}, None, models).worker_cpus == "split"
    config = tmp_path / "navi.toml"
    config.write_text('worker_cpus = "split"\n')
    assert build_settings({}, config, models).worker_cpus == "split"
    assert build_settings({"--worker-cpus": "none"}, config, models).worker_cpus == "none"


def test_a_bad_worker_cpus_value_names_the_key(tmp_path):
    config = tmp_path / "navi.toml"
    config.write_text('worker_cpus = "pinned"\n')
    with pytest.raises(ConfigError, match="worker_cpus"):
        build_settings({}, config, [tmp_path / "m"])


@pytest.mark.parametrize("cpus, workers, expected", [
    ([0, 1], 2, [(0,), (1,)]),
    ([0, 1], 1, [(0, 1)]),
    (range(16), 3, [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13, 14, 15)]),
    ([7, 3, 5, 1], 2, [(1, 3), (5, 7)]),  # the CPUs a process may use need not be 0..n-1
    ([0, 1], 5, [(0,), (1,), (0,), (1,), (0,)]),  # more workers than CPUs: one each, in turn
])
def test_workers_split_the_cpus_into_slices_of_their_own(cpus, workers, expected):
    from navi.server.workers import worker_cpu_set

    slices = [worker_cpu_set(cpus, workers, index) for index in range(workers)]
    assert slices == expected
    if workers <= len(list(cpus)):  # every CPU in exactly one slice
        assert sorted(cpu for part in slices for cpu in part) == sorted(cpus)


def test_a_worker_index_outside_the_fleet_is_refused():
    from navi.server.workers import worker_cpu_set

    with pytest.raises(ValueError):
        worker_cpu_set([0, 1], 2, 2)
    with pytest.raises(ValueError):
        worker_cpu_set([], 2, 0)
