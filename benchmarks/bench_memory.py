"""How fast this machine writes memory from one thread and from two.

The converter writes 27 KB and reads 13.6 KB per home candidate, so its
two-thread scaling can go no further than the machine's memory lets it. This
times libc's ``memset`` over one buffer per thread (the GIL is released during
the call), one thread and then two, for buffer sizes from cache-resident to
far larger than the cache, and prints GB/s (medians over repeats) and the
two-thread ratio. Sizes below ~1 MB time the GIL hand-offs between the short
calls more than the memory.

    python benchmarks/bench_memory.py [--sizes-mb 2.7,8,16,27] [--repeats 7]
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def fill_gb_per_s(buffers: list[np.ndarray], pool: ThreadPoolExecutor, calls: int) -> float:
    """GB/s written by ``memset`` over ``buffers``, one thread per buffer, ``calls`` times each."""
    libc = ctypes.CDLL(None)
    nbytes = buffers[0].nbytes

    def fill(buffer: np.ndarray) -> None:
        for _ in range(calls):
            libc.memset(ctypes.c_void_p(buffer.ctypes.data), 7, ctypes.c_size_t(nbytes))

    began = time.perf_counter()
    for future in [pool.submit(fill, b) for b in buffers]:
        future.result()
    return len(buffers) * calls * nbytes / (time.perf_counter() - began) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="2.7,8,16,27", help="buffer size per thread, MB")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for size_mb in (float(s) for s in args.sizes_mb.split(",")):
            nbytes = int(size_mb * (1 << 20))
            buffers = [np.ones(nbytes, dtype=np.uint8) for _ in range(3)]  # touched: no page faults timed
            calls = max(1, int(2e9 // nbytes) // 4)
            one, two = [], []
            for _ in range(args.repeats):
                one.append(fill_gb_per_s(buffers[:1], pool, calls))
                two.append(fill_gb_per_s(buffers[1:], pool, calls))
            ratios = [t / o for o, t in zip(one, two)]
            print(f"{size_mb:6.1f} MB per thread: one thread {statistics.median(one):5.1f} GB/s, "
                  f"two threads {statistics.median(two):5.1f} GB/s "
                  f"(ratio median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
