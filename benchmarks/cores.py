"""A register-only loop that measures the cores: the control of the converter scaling benchmarks.

On a shared VM a vCPU's speed moves with what runs on the other half of its
physical core, so ``bench_scaling.py`` times this loop (no memory, no locks,
nothing shared) on one thread and on two beside the converter: a two-thread
ratio of the converter is read against what the cores give code that shares
nothing. The loop is C (``alu_loop.c``), compiled with the system's C
compiler on first use and called through ctypes, which releases the GIL for
the call; ``alu_loop_reference`` is its plain-Python twin, which states what
it computes (tests/unit/test_cores.py compares them). It is a benchmark
tool, not part of the installed package.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("alu_loop.c")
MASK64 = (1 << 64) - 1


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    """alu_loop.c built once per source version into a cache folder, then loaded."""
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "navi" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"alu_loop-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not target.exists():
        compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / target.name
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(SOURCE)], check=True)
            built.replace(target)  # atomic: a concurrent build never loads a half-written file
    library = ctypes.CDLL(str(target))
    library.navi_alu_loop.argtypes = [ctypes.c_long]
    library.navi_alu_loop.restype = ctypes.c_uint64
    return library


def alu_loop(iterations: int) -> int:
    """Run the compiled loop ``iterations`` times without the GIL; its checksum."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    return _library().navi_alu_loop(iterations)


def alu_loop_reference(iterations: int) -> int:
    """Eight 64-bit chains, each step adding or xoring in its neighbour; their wrapped sum."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    a = [1, 2, 3, 4, 5, 6, 7, 8]
    for _ in range(iterations):
        a[0] = (a[0] + a[1]) & MASK64
        a[1] ^= a[2]
        a[2] = (a[2] + a[3]) & MASK64
        a[3] ^= a[4]
        a[4] = (a[4] + a[5]) & MASK64
        a[5] ^= a[6]
        a[6] = (a[6] + a[7]) & MASK64
        a[7] ^= a[0]
    return sum(a) & MASK64
