"""navi.ray.BprToTensors: the tensors of `navi convert`, value for value, directly and in Ray Data.

The Ray test starts a real single-node Ray (local: nothing leaves this machine;
Ray 2.x has no in-process local_mode any more) with 2 logical CPUs, reads
Parquet and base64 text, writes Parquet and .npy shards, and reads them back.
"""
from __future__ import annotations

import base64

import numpy as np
import pytest
from click.testing import CliRunner

from navi.bprfile import write_raw
from navi.cli.main import main
from navi.ray import CANDIDATE_COLUMN, BprToTensors
from navi.segdense import load_layout
from navi.workload import encode_bpr, home_layout_files, make_bprs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """~60 BPRs of 0 to 4 candidates, and `navi convert`'s .npy files of them."""
    tmp = tmp_path_factory.mktemp("ray")
    spec, all_config = home_layout_files(tmp / "v1")
    layout = load_layout(spec, all_config)
    payloads = []
    for seed in range(12):
        payloads += make_bprs(layout, 5, seed % 5, seed=seed, continuous_per_candidate=40)
    payloads.insert(17, encode_bpr([]))
    with open(tmp / "in.raw", "wb") as f:
        write_raw(f, payloads)
    result = CliRunner().invoke(main, ["convert", str(tmp / "in.raw"), "-o", str(tmp / "npy"),
                                       "--model-dir", str(tmp / "v1"), "--chunk-bprs", "8"])
    assert result.exit_code == 0, result.output
    expected = {t.name: np.load(tmp / "npy" / f"{t.name}.npy") for t in layout.tensors}
    ends = np.load(tmp / "npy" / "batch_ends.npy")
    assert ends[-1] > 100
    return tmp, layout, payloads, expected, ends


def in_batches(transform, columns: dict, batch_size: int) -> dict[str, np.ndarray]:
    """Run ``transform`` over ``columns`` as map_batches would, concatenating its outputs."""
    n = len(next(iter(columns.values())))
    outs = [transform({k: v[i:i + batch_size] for k, v in columns.items()}) for i in range(0, n, batch_size)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def test_batches_give_the_tensors_of_navi_convert(converted):
    tmp, layout, payloads, expected, ends = converted
    column = np.array(payloads, dtype=object)
    ids = np.arange(len(payloads)) * 10
    out = in_batches(BprToTensors(tmp / "v1", keep=["id"]), {"bpr": column, "id": ids}, 7)
    for name, array in expected.items():
        assert out[name].dtype == array.dtype and out[name].tobytes() == array.tobytes(), name
    counts = np.diff(ends, prepend=0)
    assert out["id"].tolist() == np.repeat(ids, counts).tolist()
    assert out[CANDIDATE_COLUMN].tolist() == [c for n in counts for c in range(n)]


def test_base64_text_and_parsed_spec(converted):
    import json

    tmp, layout, payloads, expected, _ = converted
    spec = json.loads((tmp / "v1" / "segdense_transform_spec_home_recap_2022.json").read_text())
    all_config = json.loads((tmp / "v1" / "all_config.json").read_text())
    lines = np.array([base64.b64encode(p).decode() + "\n" for p in payloads], dtype=object)
    out = in_batches(BprToTensors(spec=spec, all_config=all_config, column="text", encoding="base64"),
                     {"text": lines}, 16)
    assert out["continuous"].tobytes() == expected["continuous"].tobytes()


def test_bad_input_is_named(converted):
    tmp, _, payloads, _, _ = converted
    transform = BprToTensors(tmp / "v1")
    with pytest.raises(ValueError, match="column 'bpr': payload 1"):
        transform({"bpr": np.array([payloads[0], payloads[1][:30]], dtype=object)})
    with pytest.raises(TypeError, match="fixed-width"):
        transform({"bpr": np.array(payloads[:2])})
    with pytest.raises(ValueError, match="row 0 of column 'bpr': not valid base64"):
        BprToTensors(tmp / "v1", encoding="base64")({"bpr": np.array(["%%%"], dtype=object)})
    with pytest.raises(ValueError, match="overwrite"):
        BprToTensors(tmp / "v1", keep=["continuous"])


def test_ray_data_reads_parquet_and_text_and_writes_parquet_and_npy(converted, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    tmp, layout, payloads, expected, ends = converted
    pq.write_table(pa.table({"bpr": pa.array(payloads, pa.binary()), "id": np.arange(len(payloads))}),
                   tmp / "in.parquet", row_group_size=20)
    (tmp / "in.b64").write_bytes(b"".join(base64.b64encode(p) + b"\n" for p in payloads))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        import ray.data

        ray.data.DataContext.get_current().execution_options.preserve_order = True
        actors = ray.data.ActorPoolStrategy(size=1)
        from_parquet = ray.data.read_parquet(str(tmp / "in.parquet")).map_batches(
            BprToTensors, fn_constructor_kwargs={"model_dir": str(tmp / "v1"), "keep": ["id"]},
            batch_format="numpy", batch_size=7, compute=actors)
        from_parquet.write_parquet(str(tmp / "out_parquet"))
        from_text = ray.data.read_text(str(tmp / "in.b64")).map_batches(
            BprToTensors, fn_constructor_kwargs={"model_dir": str(tmp / "v1"), "column": "text",
                                                 "encoding": "base64"},
            batch_format="numpy", batch_size=5, compute=actors)
        from_text.repartition(1).write_numpy(str(tmp / "out_npy"), column="continuous")
        written = ray.data.read_parquet(str(tmp / "out_parquet")).sort(["id", CANDIDATE_COLUMN])
        got = {name: [] for name in (*expected, "id")}
        for batch in written.iter_batches(batch_format="numpy", batch_size=None):
            for name in got:
                got[name].append(batch[name])
    finally:
        ray.shutdown()
    for name, array in expected.items():
        assert np.concatenate(got[name]).tobytes() == array.tobytes(), name
    assert np.concatenate(got["id"]).tolist() == np.repeat(np.arange(len(payloads)), np.diff(ends, prepend=0)).tolist()
    shards = sorted((tmp / "out_npy").glob("*.npy"))
    assert len(shards) == 1
    assert np.load(shards[0]).tobytes() == expected["continuous"].tobytes()
