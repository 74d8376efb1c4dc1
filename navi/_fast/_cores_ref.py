"""Plain-Python twin of ``navi._fast._cores``: the register-only loop and its checksum.

The compiled loop is a benchmark control (see ``navi.bench.convert``); this
twin states what it computes, so a test can check the compiled loop really
runs every iteration of that arithmetic rather than something the compiler
reduced.
"""
from __future__ import annotations

MASK64 = (1 << 64) - 1


def alu_loop(iterations: int) -> int:
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
