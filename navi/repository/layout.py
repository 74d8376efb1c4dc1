"""Scan a model directory: which subdirectories are versions, and which is newest.

A version directory is named by an integer (epoch millis, ``1679693908377``)
or an RFC 3339 timestamp (``2022-12-20T10:18:53.000Z``, turned into epoch
millis). Versions compare as numbers (the original compared the names as
strings, which ranks ``999`` above ``1000``). Anything else in the model
directory (META.json, stray files, half-copied versions whose model file is
missing yet) is skipped with one log line, not an error.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_INTEGER = re.compile(r"^[0-9]+$")
# date, 'T' or space, time with optional fraction, then Z or an offset (RFC 3339 5.6)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_INT64_MAX = 2**63 - 1


def parse_version(name: str) -> int | None:
    """The int64 version a directory name stands for, or None if it is not a version.

    Integers are taken as they are; RFC 3339 timestamps become epoch millis.
    """
    name = name.strip()
    if _INTEGER.match(name):
        value = int(name)
        return value if value <= _INT64_MAX else None
    if _RFC3339.match(name):
        text = name.replace("z", "Z").replace("t", "T")
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        # integer arithmetic: float timestamps would round some millis away
        delta = stamp - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return None


@dataclass(frozen=True)
class VersionDir:
    """One complete version directory of a model."""

    version: int
    path: Path

    @property
    def name(self) -> str:
        """The directory's name as written on disk (what --modelsync-cli is told)."""
        return self.path.name


def files_signature(path: Path) -> tuple:
    """(relative path, size, mtime_ns) of every file under ``path``, sorted.

    Two equal signatures mean the files did not change; a failed version is
    retried only when its signature changes.
    """
    path = Path(path)
    entries = []
    try:
        for item in sorted(path.rglob("*")):
            try:
                if item.is_file():
                    stat = item.stat()
                    entries.append((str(item.relative_to(path)), stat.st_size, stat.st_mtime_ns))
            except OSError:
                continue
    except OSError:
        return ()
    return tuple(entries)


class ModelDirScanner:
    """Lists the versions of one model directory, logging each skipped entry once."""

    def __init__(self, model_dir: Path, is_complete: Callable[[Path], bool]):
        self.model_dir = Path(model_dir)
        self._is_complete = is_complete
        self._reported: set[tuple[str, str]] = set()

    def _skip(self, name: str, reason: str) -> None:
        # one line per entry and reason, not one per poll
        if (name, reason) not in self._reported:
            self._reported.add((name, reason))
            log.info("%s: ignoring %r: %s", self.model_dir, name, reason)

    def scan(self) -> list[VersionDir]:
        """Complete versions, newest first. A missing model directory gives []."""
        try:
            entries = list(self.model_dir.iterdir())
        except OSError as exc:
            self._skip("", f"cannot list the model directory ({exc.strerror or exc})")
            return []
        found: dict[int, VersionDir] = {}
        for entry in entries:
            version = parse_version(entry.name)
            if version is None:
                self._skip(entry.name, "not a version (integer or RFC 3339 name)")
                continue
            if not entry.is_dir():
                self._skip(entry.name, "not a directory")
                continue
            if not self._is_complete(entry):
                self._skip(entry.name, "incomplete (model file missing; still copying?)")
                continue
            if version in found:
                self._skip(entry.name, f"same version as {found[version].name!r}")
                continue
            found[version] = VersionDir(version, entry)
        return sorted(found.values(), key=lambda v: v.version, reverse=True)
