"""Does the converter scale to two threads as far as the machine lets two processes scale?

Conversion timed three ways side by side in each repetition: one thread; two
threads of one process, each with its own buffer; two forked processes doing
the same. `--shape per-request` (default) converts one BPR at a time into a
reused buffer, as a server batch thread does; `--shape one-output` converts
all BPRs in one call into one output far larger than the cache (27 MB for 10
home BPRs), as the bench's `cython_2threads` does with its halves. If two
threads fall short of 2x but match two processes, the machine (shared or
throttled cores, memory bandwidth) sets the limit, not the decoder (the GIL,
shared state). Prints each repetition and the min / median ratios over one
thread.

    python benchmarks/bench_convert_threads.py [--bprs 10] [--passes 8] [--repeats 7]
        [--shape one-output]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from navi.converter import BprConverter  # noqa: E402 - after the BLAS thread setting
from navi.segdense import load_layout  # noqa: E402
from navi.workload import home_layout_files, make_bprs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bprs", type=int, default=10, help="generated BPRs of 100 candidates")
    parser.add_argument("--passes", type=int, default=8, help="passes over the BPRs per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", choices=("per-request", "one-output"), default="per-request")
    args = parser.parse_args()

    layout = load_layout(*home_layout_files(Path(tempfile.mkdtemp(prefix="navi-bench-"))))
    payloads = make_bprs(layout, args.bprs, seed=0)
    converter = BprConverter(layout)
    counts = converter.count_rows(payloads)
    per_request = args.shape == "per-request"
    rows = int(counts.max() if per_request else counts.sum())

    def convert(buffer) -> None:
        for _ in range(args.passes):
            if per_request:
                for payload in payloads:
                    converter.convert_into([payload], buffer)
            else:
                converter.convert_into(payloads, buffer)

    def timed_process(start, done) -> None:
        buffer = layout.allocate(rows)
        convert(buffer)  # warm: first-touch page faults
        start.wait()
        began = time.perf_counter()
        convert(buffer)
        done.put(time.perf_counter() - began)

    buffers = [layout.allocate(rows) for _ in range(2)]
    for buffer in buffers:
        convert(buffer)
    context = mp.get_context("fork")
    thread_ratios, process_ratios = [], []
    for repeat in range(args.repeats):
        began = time.perf_counter()
        convert(buffers[0])
        one_s = time.perf_counter() - began

        threads = [threading.Thread(target=convert, args=(b,)) for b in buffers]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        threads_s = time.perf_counter() - began

        start, done = context.Event(), context.Queue()
        workers = [context.Process(target=timed_process, args=(start, done)) for _ in range(2)]
        for w in workers:
            w.start()
        time.sleep(1.0)  # both warmed and waiting
        start.set()
        processes_s = max(done.get() for _ in workers)
        for w in workers:
            w.join()

        thread_ratios.append(2 * one_s / threads_s)
        process_ratios.append(2 * one_s / processes_s)
        print(f"repeat {repeat + 1}: one thread {one_s * 1e3:6.1f} ms   two threads "
              f"{thread_ratios[-1]:.2f}x   two processes {process_ratios[-1]:.2f}x", flush=True)
    for name, ratios in (("two threads", thread_ratios), ("two processes", process_ratios)):
        print(f"{name}: min {min(ratios):.2f}x  median {statistics.median(ratios):.2f}x  "
              f"max {max(ratios):.2f}x over one thread")


if __name__ == "__main__":
    main()
