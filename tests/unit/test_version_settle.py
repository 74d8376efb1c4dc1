"""A version directory copied in slowly is never offered half-written (layout.ModelDirScanner).

The rule: offered once its files (paths, sizes, mtimes) are the same at two
scans at least ``settle_s`` apart, or, at first sight, when none was modified
in the last ``settle_s``. Scans run on an injected wall clock; file mtimes are
set explicitly, so nothing here depends on timing.
"""
from __future__ import annotations

import os
import sys
import time

from navi.repository.layout import ModelDirScanner
from navi.repository.watcher import run_killable

T0 = 1_800_000_000.0


def _write(path, data: bytes, mtime_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime_s, mtime_s))


class Clock:
    def __init__(self, now_s: float):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _scanner(model_dir, clock, settle_s=2.0):
    return ModelDirScanner(model_dir, lambda p: (p / "model.onnx").is_file(), settle_s=settle_s, clock=clock)


def test_a_version_already_in_place_is_offered_at_first_sight(tmp_path):
    _write(tmp_path / "m" / "1" / "model.onnx", b"x" * 100, T0 - 60)
    scanner = _scanner(tmp_path / "m", Clock(T0))
    assert [v.version for v in scanner.scan()] == [1]
    assert not scanner.pending


def test_a_version_being_copied_waits_until_its_files_stand_still(tmp_path):
    model_dir = tmp_path / "m"
    _write(model_dir / "1" / "model.onnx", b"old", T0 - 600)
    clock = Clock(T0)
    scanner = _scanner(model_dir, clock)
    assert [v.version for v in scanner.scan()] == [1]
    # version 2 appears: model file half written, just now
    _write(model_dir / "2" / "model.onnx", b"half", T0)
    assert [v.version for v in scanner.scan()] == [1] and scanner.pending
    # it grows; another file appears (each scan sees a new signature)
    clock.now_s = T0 + 3
    _write(model_dir / "2" / "model.onnx", b"half and more", T0 + 3)
    assert [v.version for v in scanner.scan()] == [1] and scanner.pending
    clock.now_s = T0 + 4
    _write(model_dir / "2" / "segdense.json", b"{}", T0 + 4)
    assert [v.version for v in scanner.scan()] == [1] and scanner.pending
    # unchanged, but not yet for settle_s
    clock.now_s = T0 + 5
    assert [v.version for v in scanner.scan()] == [1] and scanner.pending
    # unchanged across two scans settle_s apart: offered
    clock.now_s = T0 + 6
    assert [v.version for v in scanner.scan()] == [2, 1] and not scanner.pending


def test_a_size_change_without_an_mtime_change_restarts_the_wait(tmp_path):
    model_dir = tmp_path / "m"
    clock = Clock(T0)
    scanner = _scanner(model_dir, clock)
    _write(model_dir / "5" / "model.onnx", b"ab", T0 - 1)
    assert scanner.scan() == []
    clock.now_s = T0 + 1.5
    _write(model_dir / "5" / "model.onnx", b"abcd", T0 - 1)  # same mtime (e.g. cp -p), new size
    assert scanner.scan() == []
    clock.now_s = T0 + 3
    assert scanner.scan() == []  # 1.5 s since the change: not yet
    clock.now_s = T0 + 3.5
    assert [v.version for v in scanner.scan()] == [5]


def test_settle_zero_offers_at_first_sight(tmp_path):
    _write(tmp_path / "m" / "7" / "model.onnx", b"x", T0)
    assert [v.version for v in _scanner(tmp_path / "m", Clock(T0), settle_s=0).scan()] == [7]


def test_a_hung_command_and_its_children_are_killed_after_the_timeout(tmp_path):
    marker = tmp_path / "child.pid"
    # a shell whose background child keeps the output pipe open, as `gsutil` under a script would
    script = f"sleep 300 & echo $! > {marker}; wait"
    started = time.monotonic()
    code, _, _ = run_killable(["sh", "-c", script], timeout_s=1.0)
    assert code is None
    assert time.monotonic() - started < 30
    child = int(marker.read_text())
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        state = open(f"/proc/{child}/stat").read().split()[2]
        assert state == "Z", f"child {child} still running ({state})"
    except ProcessLookupError:
        pass


def test_a_command_that_finishes_gives_its_code_and_output():
    code, out, err = run_killable([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], timeout_s=30)
    assert (code, out.strip()) == (3, "hi")
