"""Scan a model directory: which subdirectories are versions, and which is newest.

A version directory is named by an integer (epoch millis, ``1679693908377``)
or an RFC 3339 timestamp (``2022-12-20T10:18:53.000Z``, turned into epoch
millis). Versions compare as numbers (the original compared the names as
strings, which ranks ``999`` above ``1000``). Anything else in the model
directory (META.json, stray files, half-copied versions whose model file is
missing yet) is skipped with one log line, not an error.

A version still being copied in is never loaded half-written. The rule
(``ModelDirScanner``, ``settle_s`` = ``--version-settle-secs``, default 2):
a complete-looking version directory is offered for loading only once its
files (every path, size and mtime under it, ``files_signature``) are the same
at two scans at least ``settle_s`` apart; or, the first time it is seen, when
no file under it was modified in the last ``settle_s`` seconds (so a
repository that is already in place loads at once at start-up). Until then
the scanner reports it pending and the watcher rescans every ``settle_s``.
A copy that stalls longer than ``settle_s`` mid-file can still be offered;
its load then fails, the version that serves keeps serving, and the version
is retried when its files change (``registry``). Copying to a temporary name
and renaming the directory into place remains the safe way.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
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


def newest_mtime_s(signature: tuple) -> float:
    """The newest mtime (epoch seconds) in a ``files_signature``; 0 for no files."""
    return max((mtime_ns for _, _, mtime_ns in signature), default=0) / 1e9


class ModelDirScanner:
    """Lists the settled versions of one model directory, logging each skipped entry once.

    ``settle_s`` and ``clock`` (wall seconds, compared with file mtimes) make
    the half-written rule of the module docstring; ``pending`` says whether
    the last scan held a version back because its files were still changing.
    """

    def __init__(self, model_dir: Path, is_complete: Callable[[Path], bool], settle_s: float = 0.0,
                 clock: Callable[[], float] = time.time):
        self.model_dir = Path(model_dir)
        self._is_complete = is_complete
        self._reported: set[tuple[str, str]] = set()
        self.settle_s = settle_s
        self._clock = clock
        #: directory name -> (signature, wall time it was first seen with it)
        self._observed: dict[str, tuple[tuple, float]] = {}
        self.pending = False

    def _settled(self, entry: Path, now_s: float) -> bool:
        """Whether ``entry``'s files stood still long enough (the module docstring's rule)."""
        if self.settle_s <= 0:
            return True
        signature = files_signature(entry)
        previous = self._observed.get(entry.name)
        if previous is None or previous[0] != signature:
            if previous is None and now_s - newest_mtime_s(signature) >= self.settle_s:
                # still since before we looked: settled (and stays so while unchanged)
                self._observed[entry.name] = (signature, now_s - self.settle_s)
                return True
            self._observed[entry.name] = (signature, now_s)
            return False
        return now_s - previous[1] >= self.settle_s

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
        now_s = self._clock()
        self.pending = False
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
            if not self._settled(entry, now_s):
                self.pending = True
                self._skip(entry.name, f"files still changing (loaded once they stand still for "
                                       f"{self.settle_s:g} s)")
                continue
            if version in found:
                self._skip(entry.name, f"same version as {found[version].name!r}")
                continue
            found[version] = VersionDir(version, entry)
        names = {entry.name for entry in entries}
        for name in [name for name in self._observed if name not in names]:
            del self._observed[name]
        return sorted(found.values(), key=lambda v: v.version, reverse=True)
