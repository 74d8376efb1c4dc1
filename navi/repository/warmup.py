"""Warm a freshly loaded version up before it takes traffic.

TF Serving's convention: ``<version>/assets.extra/tf_serving_warmup_requests``
is a TFRecord file of ``PredictionLog`` protos; each ``predict_log.request``
is replayed, up to ``max_warmup_records``, back to back, and a record that
fails fails the load (the user's own requests must work). Without the file,
one synthetic request built from what navi knows of the inputs runs twice
(TorchScript's profiling executor optimises on the second call): zeros
shaped like the signature, or in BPR mode one BPR carrying every feature of
the layout. Where navi had to guess to build it (``TensorSpec.synthetic_is_guess``:
widths of any size, strings, inputs the model does not declare) a failure is
logged and the version serves all the same, warmed by its first requests, as
TF Serving serves every model without a warmup file; only a request built
from a fully declared signature that the model fails to answer refuses it.
Requests go through ``ServedModel.run_now``: the request path minus the
queue, so the converter, the dtype kernels and the runtime all see real
traffic first.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from navi.codec import tensor_proto_to_ndarray
from navi.errors import RuntimeFailure
from navi.pipeline import ServedModel
from navi.plugins.base import synthetic_inputs
from navi.repository.tfrecord import read_records

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def synthetic_request(served: ServedModel) -> tuple[dict[str, np.ndarray], str]:
    """One small request for ``served`` and, when it is a guess, what navi guessed ("" if none)."""
    if served.mode == "bpr":
        from navi.workload import full_bpr

        payload = np.empty(1, dtype=object)
        payload[0] = full_bpr(served.layout, candidates=1)
        return {served.signature.inputs[0].name: payload}, ""
    specs = served.signature.inputs
    guessed = [f"{spec.name} {spec.dtype}{list(spec.shape)}" for spec in specs if spec.synthetic_is_guess]
    return synthetic_inputs(specs), ", ".join(guessed)


#: runs of the synthetic request (TorchScript optimises a graph on its second call)
SYNTHETIC_RUNS = 2


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

    A failure of a warmup file record, or of a synthetic request built
    without guessing, propagates: a version that cannot answer them is not
    made available. A guessed synthetic request that fails is only logged.
    """
    path = Path(version_dir) / WARMUP_FILE
    if path.is_file() and max_records > 0:
        count = replay_warmup_file(served, path, max_records)
        if count:
            return f"{count} warmup records replayed"
    inputs, guessed = synthetic_request(served)
    try:
        for _ in range(SYNTHETIC_RUNS):
            served.run_now(inputs)
    except Exception as exc:
        if not guessed:
            raise RuntimeFailure(f"synthetic warmup request failed: {exc}") from exc
        log.warning("%s: synthetic warmup skipped, the model serves without it: navi guessed the "
                    "inputs (%s) and the model rejected them: %s", version_dir, guessed, exc)
        return "synthetic warmup skipped: inputs guessed"
    return "synthetic warmup request ran"
