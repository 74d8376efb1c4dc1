from typing import Sequence

import numpy as np

ERROR_REASONS: dict[int, str]
DEFAULT_STREAM_MIN_BYTES: int

class BprDecoder:
    layout: object
    stream_min_bytes: int
    def __init__(self, layout: object) -> None: ...
    def count_rows(self, payloads: Sequence[bytes | memoryview | bytearray], max_rows: int = ...) -> np.ndarray: ...
    def decode_into(
        self,
        payloads: Sequence[bytes | memoryview | bytearray],
        continuous: np.ndarray,
        binary: np.ndarray,
        discrete: np.ndarray,
        embeddings: Sequence[np.ndarray],
        row_start: int = 0,
    ) -> int: ...
