"""Repository pieces: version names, directory scans, META.json, TFRecord, the registry."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from navi.errors import Code, ConfigError, ModelNotFound, ModelNotReady, ModelVersionNotFound
from navi.metrics import Metrics
from navi.repository import (
    ModelDirScanner,
    ModelRegistry,
    files_signature,
    parse_meta,
    parse_version,
    read_meta,
)
from navi.repository.tfrecord import TFRecordError, read_records, write_records
from navi.settings import BatchingSettings, ModelSettings, ServerSettings


def write_version(model_dir, name, value=None):
    """model_dir/name/model.onnx: output_0 = x + value (value defaults to the version)."""
    value = float(parse_version(str(name)) if value is None else value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "v"], ["output_0"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("v", TensorProto.FLOAT, [], [value])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = model_dir / str(name)
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    return path


# ---------------------------------------------------------------- version names / scan


@pytest.mark.parametrize("name, version", [
    ("1679693908377", 1679693908377),
    ("0", 0),
    ("2022-12-20T10:18:53.000Z", 1671531533000),
    ("2022-12-20T10:18:53Z", 1671531533000),
    ("2022-12-20T11:18:53.250+01:00", 1671531533250),
    ("META.json", None),
    ("-5", None),
    ("2022-12-20", None),
    ("2022-13-40T10:18:53Z", None),
    ("99999999999999999999", None),
])
def test_parse_version(name, version):
    assert parse_version(name) == version


def test_scan_orders_numerically_and_skips_the_rest(tmp_path, caplog):
    for name in ("999", "1000", "2022-12-20T10:18:53.000Z"):
        write_version(tmp_path, name, 0)
    (tmp_path / "META.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "2000").mkdir()  # half copied: no model file yet
    scanner = ModelDirScanner(tmp_path, lambda p: (p / "model.onnx").exists())
    caplog.set_level("INFO")
    assert [v.version for v in scanner.scan()] == [1671531533000, 1000, 999]
    assert [v.name for v in scanner.scan()][0] == "2022-12-20T10:18:53.000Z"
    skipped = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(skipped) == 3  # META.json, notes, 2000: once each despite two scans
    write_version(tmp_path, "2000", 0)
    assert scanner.scan()[0].version == 1671531533000 and len(scanner.scan()) == 4


def test_files_signature_changes_with_content(tmp_path):
    path = write_version(tmp_path, "1", 0)
    before = files_signature(path)
    (path / "model.onnx").write_bytes(b"different length")
    assert files_signature(path) != before


# ---------------------------------------------------------------- META.json


def test_meta_parses_pin_labels_and_overrides():
    metas = parse_meta({
        "m": {"version": "2022-12-20T10:18:53.000Z", "labels": {"stable": 1, "canary": "2"},
              "intra_op_parallelism": "4", "batch_time_out_millis": 7,
              "batching": {"max_batch_size": 3}},
        "other": {},
    })
    meta = metas["m"]
    assert meta.version == 1671531533000
    assert meta.labels == {"stable": 1, "canary": 2}
    base = ModelSettings(name="m", model_dir="/x")
    applied = meta.apply(base)
    assert applied.intra_op_parallelism == 4
    assert applied.batching.batch_timeout_ms == 7 and applied.batching.max_batch_size == 3
    assert metas["other"].apply(base) is base


@pytest.mark.parametrize("data, key", [
    ([], ""),
    ({"m": 3}, "m"),
    ({"m": {"version": "latest"}}, "m.version"),
    ({"m": {"labels": {"a": "x"}}}, "m.labels.a"),
    ({"m": {"max_batch_size": 0}}, "m.batching"),
    ({"m": {"intra_op_parallelism": "many"}}, "m.intra_op_parallelism"),
    ({"m": {"colour": "red"}}, "m.colour"),
])
def test_meta_rejects_malformed_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_meta(data)
    assert err.value.key == key


def test_read_meta_missing_and_bad_json(tmp_path):
    assert read_meta(tmp_path / "META.json") is None
    (tmp_path / "META.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        read_meta(tmp_path / "META.json")


# ---------------------------------------------------------------- TFRecord


def test_tfrecord_round_trip_and_corruption(tmp_path):
    path = tmp_path / "records"
    write_records(path, [b"one", b"", b"x" * 5000])
    assert list(read_records(path)) == [b"one", b"", b"x" * 5000]
    assert list(read_records(path, limit=1)) == [b"one"]
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF  # inside the first record's data
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match="data checksum of record 0"):
        list(read_records(path))
    path.write_bytes(bytes(data[:-2]))
    with pytest.raises(TFRecordError):
        list(read_records(path))


# ---------------------------------------------------------------- registry


def make_registry(model_dir, **server):
    # these tests rescan right after writing a version: no settle time (tested apart below)
    server.setdefault("version_settle_s", 0)
    settings = ServerSettings(
        models=(ModelSettings(name="m", model_dir=model_dir, outputs=(),
                              batching=BatchingSettings(batch_timeout_ms=0)),),
        **server,
    )
    return ModelRegistry(settings, Metrics())


def answer(registry, version=None, label=None):
    served = registry.get("m", version=version, label=label)
    out = served.infer({"x": np.zeros((1, 1), np.float32)})
    return served.version, float(out["output_0"][0, 0])


def test_registry_serves_newest_and_keeps_k_versions(tmp_path):
    write_version(tmp_path / "m", 1)
    write_version(tmp_path / "m", 2)
    registry = make_registry(tmp_path / "m", versions_per_model=2)
    registry.start()
    try:
        assert registry.is_ready("m") and registry.is_ready()
        assert answer(registry) == (2, 2.0)
        assert answer(registry, version=1) == (1, 1.0)
        write_version(tmp_path / "m", 3)
        registry.rescan({})
        registry.wait_for_loads(30)
        assert answer(registry) == (3, 3.0)
        assert answer(registry, version=2) == (2, 2.0)
        with pytest.raises(ModelVersionNotFound):
            registry.get("m", version=1)
        states = {s.version: s.state for s in registry.version_status("m")}
        assert states[3] == states[2] == "AVAILABLE" and states[1] in ("UNLOADING", "END")
        with pytest.raises(ModelNotFound):
            registry.get("nope")
    finally:
        registry.stop(5)


def test_corrupt_version_skipped_until_its_files_change(tmp_path):
    write_version(tmp_path / "m", 1)
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        bad = tmp_path / "m" / "2"
        bad.mkdir()
        (bad / "model.onnx").write_bytes(b"not an onnx model")
        registry.rescan({})
        registry.wait_for_loads(30)
        assert answer(registry) == (1, 1.0)
        status = {s.version: s for s in registry.version_status("m")}
        assert status[2].state == "END" and status[2].error_code == Code.INTERNAL
        assert "onnx" in status[2].error_message.lower()
        registry.rescan({})
        registry.wait_for_loads(30)
        failures = registry.metrics.registry.get_sample_value(
            ":navi:model_load_failures_total", {"model_name": "m"})
        assert failures == 1  # unchanged files are not retried
        write_version(tmp_path / "m", 2)
        os.utime(bad / "model.onnx", ns=(1, 1))  # make sure the signature differs
        registry.rescan({})
        registry.wait_for_loads(30)
        assert answer(registry) == (2, 2.0)
    finally:
        registry.stop(5)


def test_meta_pin_and_labels(tmp_path):
    for v in (1, 2, 3):
        write_version(tmp_path / "m", v)
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        assert answer(registry) == (3, 3.0)
        registry.rescan(parse_meta({"m": {"version": 1, "labels": {"canary": 2}}}))
        registry.wait_for_loads(30)
        assert answer(registry) == (1, 1.0)
        assert answer(registry, label="canary") == (2, 2.0)
        with pytest.raises(ModelVersionNotFound):
            registry.get("m", label="stable")
        with pytest.raises(ModelVersionNotFound):
            registry.get("m", version=3)
        registry.rescan({})
        registry.wait_for_loads(30)
        assert answer(registry) == (3, 3.0)
    finally:
        registry.stop(5)


def test_not_ready_when_nothing_loads(tmp_path):
    (tmp_path / "m").mkdir()
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        assert not registry.is_ready()
        with pytest.raises(ModelNotReady):
            registry.get("m")
    finally:
        registry.stop(5)


def _predict_log(value):
    from navi._proto.tensorflow_serving.apis import prediction_log_pb2
    from navi.codec import ndarray_to_tensor_proto

    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = "m"
    ndarray_to_tensor_proto(np.full((2, 1), value, np.float32), request.inputs["x"])
    return entry.SerializeToString()


def test_warmup_file_replayed_before_ready(tmp_path):
    version_dir = write_version(tmp_path / "m", 1)
    (version_dir / "assets.extra").mkdir()
    write_records(version_dir / "assets.extra" / "tf_serving_warmup_requests",
                  [_predict_log(i) for i in range(4)])
    registry = make_registry(tmp_path / "m", max_concurrent_loads=1)
    registry.start()
    try:
        runs = registry.metrics.registry.get_sample_value(
            ":navi:model_inference_time_count", {"model_name": "m"})
        assert runs == 4  # one model run per record, no synthetic request
        assert registry.is_ready("m")
    finally:
        registry.stop(5)


def test_bad_warmup_record_fails_the_load(tmp_path):
    version_dir = write_version(tmp_path / "m", 1)
    (version_dir / "assets.extra").mkdir()
    write_records(version_dir / "assets.extra" / "tf_serving_warmup_requests", [b"\xff\xff"])
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        assert not registry.is_ready("m")
        assert registry.version_status("m")[0].state == "END"
    finally:
        registry.stop(5)


def write_reshape_to_4(model_dir, width):
    """model_dir/1/model.onnx reshaping x [n, width] to [4]: it runs only when n * width == 4."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["output_0"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [4])],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = model_dir / "1"
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))


@pytest.mark.parametrize("width, serves", [(3, False), ("w", True)], ids=["declared-width", "any-width"])
def test_synthetic_warmup_refuses_only_what_navi_did_not_guess(tmp_path, caplog, width, serves):
    """Zeros [1, 3] of a declared signature that the model cannot run: the version is refused.
    With a width of any size navi guesses 1: the failure is logged and the model serves."""
    write_reshape_to_4(tmp_path / "m", width)
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        assert registry.is_ready("m") is serves
        if serves:
            assert "synthetic warmup skipped, the model serves without it" in caplog.text
            assert "x float32[-1, -1]" in caplog.text  # names what was guessed
            out = registry.get("m").infer({"x": np.ones((2, 2), np.float32)})
            np.testing.assert_array_equal(out["output_0"], np.ones(4, np.float32))
        else:
            assert registry.version_status("m")[0].state == "END"
            assert "synthetic warmup request failed" in caplog.text
    finally:
        registry.stop(5)


def test_meta_batching_override_reloads_with_new_settings(tmp_path):
    write_version(tmp_path / "m", 1)
    registry = make_registry(tmp_path / "m")
    registry.start()
    try:
        before = registry.get("m")
        assert before.settings.batching.max_batch_size == 16
        registry.rescan(parse_meta({"m": {"batching": {"max_batch_size": 3},
                                          "intra_op_parallelism": 2}}))
        registry.wait_for_loads(30)
        after = registry.get("m")
        assert after is not before and after.version == 1
        assert after.settings.batching.max_batch_size == 3
        assert after.settings.intra_op_parallelism == 2
        assert answer(registry) == (1, 1.0)
    finally:
        registry.stop(5)


def test_failing_modelsync_is_counted_and_serving_goes_on(tmp_path):
    from navi.repository.watcher import ModelWatcher

    write_version(tmp_path / "m", 1)
    registry = make_registry(tmp_path / "m", modelsync_cli="false --ignored")
    registry.start()
    try:
        assert registry.metrics.registry.get_sample_value(":navi:modelsync_failures_total") == 1
        assert answer(registry) == (1, 1.0)
        watcher = ModelWatcher(registry, registry.settings, registry.metrics)
        assert watcher.run_modelsync() is False
        assert registry.metrics.registry.get_sample_value(":navi:modelsync_failures_total") == 2
    finally:
        registry.stop(5)


def test_malformed_meta_keeps_the_last_good(tmp_path):
    from navi.repository.watcher import ModelWatcher

    write_version(tmp_path / "m", 1)
    registry = make_registry(tmp_path / "m")
    watcher = ModelWatcher(registry, registry.settings, registry.metrics)
    (tmp_path / "META.json").write_text(json.dumps({"m": {"version": 1}}))
    try:
        watcher.poll_once()  # takes the good file in
        (tmp_path / "META.json").write_text(json.dumps({"m": {"version": "newest"}}))
        assert watcher.read_meta()["m"].version == 1
        (tmp_path / "META.json").unlink()
        assert watcher.read_meta() == {}
    finally:
        registry.stop(5)


def test_evicted_version_answers_every_queued_request(tmp_path):
    write_version(tmp_path / "m", 1)
    settings = ServerSettings(models=(ModelSettings(
        name="m", model_dir=tmp_path / "m", outputs=(),
        # requests sit in the queue: only the drain at eviction can run them
        batching=BatchingSettings(batch_timeout_ms=60_000, max_batch_size=100,
                                  eager_when_idle=False, batch_drop_ms=0),
    ),), version_settle_s=0)
    registry = ModelRegistry(settings, Metrics())
    registry.start()
    try:
        old = registry.get("m")
        pool = ThreadPoolExecutor(5)  # handler threads, each waiting on its request
        queued = [pool.submit(old.infer, {"x": np.full((1, 1), i, np.float32)}) for i in range(5)]
        pool.shutdown(wait=False)
        waited_until = time.monotonic() + 30
        while old.num_queued < 5:
            assert time.monotonic() < waited_until, "the requests never queued"
            time.sleep(0.01)
        write_version(tmp_path / "m", 2)
        registry.rescan({})
        registry.wait_for_loads(30)
        assert registry.get("m").version == 2
        with pytest.raises(ModelVersionNotFound):
            registry.get("m", version=1)
        values = [float(f.result(30)["output_0"][0, 0]) for f in queued]
        assert values == [1.0, 2.0, 3.0, 4.0, 5.0]  # x + 1: version 1 answered them
    finally:
        registry.stop(5)
