"""One request's share of a batch."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class BatchTask:
    """A queued request: its payload, its row count and when it must be answered.

    ``rows`` is the request's size in a batch (TF's ``BatchTask::size()``):
    the number of rows it adds to the batch's first axis. ``arrival_s`` and
    ``deadline_s`` are on the scheduler's clock; ``deadline_s`` None = none.
    """

    payload: Any
    rows: int
    arrival_s: float
    deadline_s: float | None = None
    future: Future = field(default_factory=Future)
