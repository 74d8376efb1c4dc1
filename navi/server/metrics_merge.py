"""One ``/metrics`` for a fleet of worker processes: the workers' expositions merged.

Each worker renders its own registry (``navi.tally.render_text``); the
supervisor parses those texts and writes one exposition in which:

* counters and histograms (buckets, ``_count``, ``_sum``) are summed over the
  workers, so a request is counted once whichever worker answered it; and
  the last totals of a worker that exited are kept (``retire``), so a
  restarted worker, which starts again from zero, never makes a merged
  counter go backwards;
* each gauge follows ``GAUGE_MERGE``: ``sum`` over the live workers for
  what is "now" (requests in flight, queue lengths), ``cumulative`` for the
  original's gauges that only ever add (``:navi:batch_size``: summed and kept
  across restarts like a counter), ``max`` for what every worker reports
  alike (versions, certificate expiry), ``min`` for
  ``:navi:model_snapshot_version`` (the version every worker has reached);
* ``_created`` samples (prometheus-client's counters and histograms, written
  as gauge families of their own) take the earliest worker's.

The texts parsed are navi's own (one sample per line, no timestamps), so a
sample is keyed by everything before its value: its name and label set,
exactly as the worker wrote them.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client.utils import floatToGoString

#: how a gauge of a worker's registry merges; a gauge not listed is summed over live workers
GAUGE_MERGE: dict[str, str] = {
    ":navi:batch_size": "cumulative",
    ":navi:batch_size_by_model": "cumulative",
    ":navi:mpsc_channel_size": "sum",
    ":navi:blocking_request_num": "sum",
    ":navi:handler_threads_running": "sum",
    ":navi:requests_in_flight": "sum",
    ":navi:navi_version": "max",
    ":navi:customop_version": "max",
    ":navi:cert_expiry_epoch": "max",
    ":navi:build_info": "max",
    ":navi:model_snapshot_version": "min",
}

MERGE_RULES = ("cumulative", "sum", "max", "min")
_CUMULATIVE_TYPES = ("counter", "histogram", "summary")


@dataclass
class Family:
    """One metric family of an exposition: its HELP text, TYPE and samples in order."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: dict[str, float] = field(default_factory=dict)


def parse_exposition(text: str) -> dict[str, Family]:
    """Families by name, from a Prometheus text exposition as ``render_text`` writes it."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], Family(parts[2]))
                if parts[1] == "HELP":
                    family.help = parts[3] if len(parts) > 3 else ""
                else:
                    family.type = parts[3].strip() if len(parts) > 3 else "untyped"
                current = family
            continue
        key, _, value = line.rpartition(" ")
        if not key:
            raise ValueError(f"not a sample line: {line!r}")
        name = key.split("{", 1)[0]
        if current is None or not name.startswith(current.name):
            current = families.setdefault(name, Family(name))
        current.samples[key] = float(value)
    return families


def merge_rule(family: Family, sample_key: str) -> str:
    """How ``sample_key`` of ``family`` combines across workers (one of ``MERGE_RULES``)."""
    if sample_key.split("{", 1)[0].endswith("_created"):
        # prometheus-client writes these as gauge families of their own
        return "min"
    if family.type in _CUMULATIVE_TYPES:
        return "cumulative"
    return GAUGE_MERGE.get(family.name, "sum")


def _combine(rule: str, values: list[float]) -> float:
    if rule in ("sum", "cumulative"):
        return math.fsum(values)
    return max(values) if rule == "max" else min(values)


class MetricsMerger:
    """Merges live workers' expositions with the kept totals of workers that exited.

    Thread-safe: scrapes and retirements may come from different threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        #: every family seen so far, in first-seen order (HELP/TYPE of retired samples)
        self._meta: dict[str, Family] = {}
        #: family name -> sample key -> kept total of exited workers
        self._retired: dict[str, dict[str, float]] = {}

    def _note(self, families: dict[str, Family]) -> None:
        for name, family in families.items():
            known = self._meta.get(name)
            if known is None or (known.type == "untyped" and family.type != "untyped"):
                self._meta[name] = Family(name, family.type, family.help)

    def retire(self, text: str) -> None:
        """Keep the cumulative samples of an exited worker's last exposition."""
        if not text:
            return
        families = parse_exposition(text)
        with self._lock:
            self._note(families)
            for name, family in families.items():
                kept = self._retired.setdefault(name, {})
                for key, value in family.samples.items():
                    if merge_rule(family, key) == "cumulative":
                        kept[key] = kept.get(key, 0.0) + value

    def merge(self, texts: Iterable[str]) -> str:
        """One exposition of the live workers' ``texts`` plus the retired totals."""
        parsed = [parse_exposition(text) for text in texts if text]
        with self._lock:
            for families in parsed:
                self._note(families)
            out: list[str] = []
            for name, meta in self._meta.items():
                values: dict[str, list[float]] = {}
                for families in parsed:
                    family = families.get(name)
                    if family is not None:
                        for key, value in family.samples.items():
                            values.setdefault(key, []).append(value)
                for key, value in self._retired.get(name, {}).items():
                    values.setdefault(key, [])
                if not values:
                    continue
                lines = []
                for key, live in values.items():
                    rule = merge_rule(meta, key)
                    if rule == "cumulative":
                        live = live + [self._retired.get(name, {}).get(key, 0.0)]
                    if live:
                        lines.append(f"{key} {floatToGoString(_combine(rule, live))}\n")
                if lines:
                    out.append(f"# HELP {name} {meta.help}\n# TYPE {name} {meta.type}\n")
                    out.extend(lines)
            return "".join(out)


def sample_value(text: str, name: str, labels: Sequence[tuple[str, str]] = ()) -> float | None:
    """The value of one sample in an exposition (None when absent): for logs and tools."""
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
    for family in parse_exposition(text).values():
        if key in family.samples:
            return family.samples[key]
    return None


__all__ = ["Family", "GAUGE_MERGE", "MERGE_RULES", "MetricsMerger", "merge_rule", "parse_exposition",
           "sample_value"]
