"""Request pools of `navi bench serve`: BPR files, the generated home workload, dense random inputs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from navi.bench.requests import InputInfo, encode_request, predict_method


@dataclass
class Workload:
    """A pool of pre-serialized requests and the rows each one carries."""

    description: str
    payloads: list[bytes]
    rows: list[int]
    method: str

    @property
    def mean_request_bytes(self) -> float:
        """Average serialized request size."""
        return float(np.mean([len(p) for p in self.payloads])) if self.payloads else 0.0


def read_bpr_file(path: Path) -> list[bytes]:
    """Read serialized BPRs: base64 lines, or u32 little-endian length-prefixed records.

    The format is detected as ``navi convert`` does (``navi.bprfile``); a
    record that cannot be read stops the benchmark with its number.
    """
    from navi import bprfile

    records = []
    with open(path, "rb") as stream:
        for record in bprfile.iter_records(stream):
            if record.payload is None:
                raise ValueError(f"{path}: record {record.number}: {record.error}")
            records.append(record.payload)
    if not records:
        raise ValueError(f"{path}: no BPR records")
    return records


def _group(records: Sequence[bytes], per_request: int, max_requests: int) -> list[list[bytes]]:
    """Group records into requests of ``per_request`` (cycling through the records)."""
    n_requests = max(1, min(max_requests, math.ceil(len(records) / per_request)))
    return [[records[(r * per_request + i) % len(records)] for i in range(per_request)] for r in range(n_requests)]


def bpr_workload(
    records: Sequence[bytes],
    protocol: str,
    model: str,
    input_name: str = "examples",
    bprs_per_request: int = 1,
    rows_per_record: Sequence[int] | None = None,
    signature_name: str = "",
    distinct_requests: int = 64,
) -> Workload:
    """Requests carrying serialized BPRs in one string tensor named ``input_name``.

    ``rows_per_record`` gives each record's candidate count when known
    (otherwise rows are left 0 for ``run_serve_bench`` to probe).
    """
    groups = _group(list(records), bprs_per_request, distinct_requests)
    index_groups = _group(list(range(len(records))), bprs_per_request, distinct_requests)
    payloads = [encode_request(protocol, model, {input_name: g}, signature_name) for g in groups]
    if rows_per_record is not None:
        rows = [int(sum(rows_per_record[i] for i in ig)) for ig in index_groups]
    else:
        rows = [0] * len(payloads)
    return Workload(
        description=f"BPR x{bprs_per_request} per request",
        payloads=payloads,
        rows=rows,
        method=predict_method(protocol, model),
    )


def home_workload(
    protocol: str,
    model: str,
    candidates: int = 100,
    bprs_per_request: int = 1,
    input_name: str = "examples",
    spec_dir: Path | None = None,
    seed: int = 0,
    distinct_requests: int = 8,
    signature_name: str = "",
) -> Workload:
    """A generated home-recap workload (``navi.workload.make_bprs``).

    The layout comes from ``spec_dir`` (a model version directory holding the
    segdense spec files) or, without one, from the example layout files
    ``navi.workload`` generates.
    """
    import tempfile

    from navi import segdense, workload

    with tempfile.TemporaryDirectory(prefix="navi-bench-") as tmp:
        if spec_dir is None:
            workload.home_layout_files(Path(tmp), seed=seed)
            spec_dir = Path(tmp)
        found = segdense.find_spec_files(Path(spec_dir))
        if found is None:
            raise ValueError(f"{spec_dir}: no segdense spec files (spec + all_config.json)")
        layout = segdense.load_layout(*found)
    records = workload.make_bprs(layout, distinct_requests * bprs_per_request, candidates, seed)
    groups = _group(records, bprs_per_request, distinct_requests)
    payloads = [encode_request(protocol, model, {input_name: g}, signature_name) for g in groups]
    return Workload(
        description=f"home BPR, {candidates} candidates x{bprs_per_request} per request",
        payloads=payloads,
        rows=[candidates * bprs_per_request] * len(payloads),
        method=predict_method(protocol, model),
    )


def random_inputs(inputs: Sequence[InputInfo], batch_rows: int, rng: np.random.Generator) -> dict:
    """Random arrays matching the model's inputs, ``batch_rows`` on the batch axis."""
    result: dict[str, np.ndarray | list[bytes]] = {}
    for info in inputs:
        shape = info.shape or (-1,)
        # the leading -1 is the batch; any other unknown dimension gets 1
        shape = tuple(batch_rows if (i == 0 and d < 0) else (1 if d < 0 else d) for i, d in enumerate(shape))
        if info.dtype == object:
            result[info.name] = [b"x%d" % i for i in range(int(np.prod(shape)))]
        elif info.dtype.kind == "f":
            result[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            result[info.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            result[info.name] = rng.integers(0, 10, size=shape).astype(info.dtype)
    return result


def dense_workload(
    protocol: str,
    model: str,
    inputs: Sequence[InputInfo],
    batch_rows: int = 1,
    seed: int = 0,
    distinct_requests: int = 16,
    signature_name: str = "",
) -> Workload:
    """Dense random requests shaped after the model's metadata."""
    rng = np.random.default_rng(seed)
    payloads = [
        encode_request(protocol, model, random_inputs(inputs, batch_rows, rng), signature_name)
        for _ in range(distinct_requests)
    ]
    return Workload(
        description=f"dense random, {batch_rows} rows per request",
        payloads=payloads,
        rows=[batch_rows] * len(payloads),
        method=predict_method(protocol, model),
    )
