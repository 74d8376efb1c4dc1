from typing import Sequence

import numpy as np

ERROR_REASONS: dict[int, str]

class BprDecoder:
    layout: object
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
