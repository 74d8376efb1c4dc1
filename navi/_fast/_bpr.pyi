from typing import Iterable, Sequence

import numpy as np

ERROR_REASONS: dict[int, str]
DEFAULT_STREAM_MIN_BYTES: int

class ReportPlan:
    continuous_ids: tuple[int, ...]
    discrete_ids: tuple[int, ...]
    bounds: tuple[float, ...]
    in_continuous_maps: tuple[tuple[int, int], ...]
    in_discrete_maps: tuple[tuple[int, int], ...]

def report_plan(
    continuous_ids: Iterable[int] = ..., discrete_ids: Iterable[int] = ..., bounds: Iterable[float] = ...
) -> ReportPlan: ...
def bucket_of(value: float, bounds: tuple[float, ...]) -> int: ...

class BprDecoder:
    layout: object
    stream_min_bytes: int
    reported_continuous_ids: tuple[int, ...]
    reported_discrete_ids: tuple[int, ...]
    report_bounds_tuple: tuple[float, ...]
    n_report_rows: int
    def __init__(
        self,
        layout: object,
        report_continuous_ids: Iterable[int] = ...,
        report_discrete_ids: Iterable[int] = ...,
        report_bounds: Iterable[float] = ...,
    ) -> None: ...
    def count_rows(self, payloads: Sequence[bytes | memoryview | bytearray], max_rows: int = ...) -> np.ndarray: ...
    def decode_into(
        self,
        payloads: Sequence[bytes | memoryview | bytearray],
        continuous: np.ndarray,
        binary: np.ndarray,
        discrete: np.ndarray,
        embeddings: Sequence[np.ndarray],
        row_start: int = 0,
        feature_counts: np.ndarray | None = None,
        feature_sums: np.ndarray | None = None,
    ) -> int: ...
