"""Dynamic batching: a per-(model, version) queue with an injectable clock."""
from navi.batching.clock import Clock, FakeClock, SystemClock
from navi.batching.merge import split_rows
from navi.batching.scheduler import BatchScheduler, SchedulerClosed
from navi.batching.task import BatchTask

__all__ = [
    "BatchScheduler",
    "BatchTask",
    "Clock",
    "FakeClock",
    "SchedulerClosed",
    "SystemClock",
    "split_rows",
]
