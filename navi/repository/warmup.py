"""Warm a freshly loaded version up before it takes traffic.

TF Serving's convention: ``<version>/assets.extra/tf_serving_warmup_requests``
is a TFRecord file of ``PredictionLog`` protos; each ``predict_log.request``
is replayed, up to ``max_warmup_records``, back to back. Without the file, one
synthetic request built from the signature runs (BPR models: one BPR carrying
every feature of the layout); if that fails for a model with string inputs it
is skipped with a warning, since empty strings need not be a valid request. Requests go through ``ServedModel.run_now``: the
request path minus the queue (no batch timeout to wait out), so the converter,
the dtype kernels and the runtime all see real traffic first.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from navi.codec import tensor_proto_to_ndarray
from navi.errors import RuntimeFailure
from navi.pipeline import ServedModel
from navi.plugins.base import TensorSpec
from navi.repository.tfrecord import read_records

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def synthetic_inputs(served: ServedModel) -> dict[str, np.ndarray]:
    """One small request matching ``served.signature`` (zeros; a full BPR in BPR mode)."""
    if served.mode == "bpr":
        from navi.workload import full_bpr

        payload = np.empty(1, dtype=object)
        payload[0] = full_bpr(served.layout, candidates=1)
        return {served.signature.inputs[0].name: payload}
    return {spec.name: _zeros(spec) for spec in served.signature.inputs}


def _zeros(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
    if spec.dtype == np.dtype(object):
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


def replay_warmup_file(served: ServedModel, path: Path, max_records: int) -> int:
    """Replay the predict logs of ``path`` through ``served``; returns requests run."""
    from navi._proto.tensorflow_serving.apis import prediction_log_pb2

    replayed = 0
    for index, record in enumerate(read_records(path, limit=max_records)):
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(record)
        if entry.WhichOneof("log_type") != "predict_log":
            log.info("%s: warmup record %d is %s, not a predict log; skipped",
                     path, index, entry.WhichOneof("log_type"))
            continue
        request = entry.predict_log.request
        inputs = {name: tensor_proto_to_ndarray(t, name) for name, t in request.inputs.items()}
        served.run_now(inputs, tuple(request.output_filter))
        replayed += 1
    return replayed


def warm_up(served: ServedModel, version_dir: Path, max_records: int) -> str:
    """Warm ``served`` up; returns a short description of what ran.

    Any failure (a bad record, a model error) propagates: a version that
    cannot answer its warmup requests is not made available.
    """
    path = Path(version_dir) / WARMUP_FILE
    if path.is_file() and max_records > 0:
        count = replay_warmup_file(served, path, max_records)
        if count:
            return f"{count} warmup records replayed"
    try:
        served.run_now(synthetic_inputs(served))
    except Exception as exc:
        if served.mode != "bpr" and any(s.dtype == np.dtype(object) for s in served.signature.inputs):
            # Empty strings are no valid request for, say, a model parsing
            # tf.Example; TF Serving runs no synthetic warmup at all, so such a
            # model still serves, warmed by its first requests instead.
            log.warning("%s: synthetic warmup skipped (string inputs): %s", version_dir, exc)
            return "synthetic warmup skipped: string inputs"
        raise RuntimeFailure(f"synthetic warmup request failed: {exc}") from exc
    return "synthetic warmup request ran"
