"""Two threads over one, for the converter and for two machine controls, timed in the same moments.

On a shared VM the speed of one vCPU moves by half again from moment to
moment with what other tenants run on the physical core behind it (its SMT
sibling): a loop that touches no memory at all moves as much as the
converter does. A two-thread ratio measured at one moment and compared with a
single-thread speed measured at another mostly measures the neighbours. This
script times, round after round, each workload on one thread and then on two
threads doing the two halves of the same work (the order flips every round),
for:

- ``one-output``: the converter, all BPRs in one call into one output (two
  halves into two outputs), as ``navi bench convert``'s ``cython_2threads``;
- ``per-request``: the converter, one BPR per call into a reused 100-row
  buffer, each thread its half, as the server's batch threads;
- ``alu``: ``benchmarks/cores.py``'s ``alu_loop``, register-only integer adds and xors
  (no memory, no shared state at all): what the cores themselves give two
  threads at that moment;
- ``memset``: libc ``memset`` over an output of the one-output shape's size:
  what memory gives two writing threads.

Each timing is wall time until both threads are done. Per workload it prints
the median, quartiles and extremes of the per-round ratios, and the per-round
ratio of the converter's ratio to the ``alu`` ratio of the same round (the
share of the cores' own scaling the converter keeps), and how closely each
workload's one-thread time follows ``alu``'s from round to round.

    python benchmarks/bench_scaling.py [--rounds 60] [--bprs 20] [--target-ms 100] [--json OUT]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from cores import alu_loop  # noqa: E402 - benchmarks/cores.py, beside this script
from navi.bench.converter_speed import convert_per_request, in_two_threads, repeated  # noqa: E402
from navi.converter import BprConverter  # noqa: E402
from navi.segdense import load_layout  # noqa: E402
from navi.workload import home_layout_files, make_bprs  # noqa: E402

WORKLOADS = ("one-output", "per-request", "alu", "memset")


def build_machine_control(pool: ThreadPoolExecutor, iterations: int = 20_000_000):
    """(one thread, two threads) runs of the register-only loop: the same work whole, or halved per thread."""
    halves = [repeated(alu_loop, iterations // 2), repeated(alu_loop, iterations - iterations // 2)]
    return repeated(alu_loop, iterations), in_two_threads(pool, halves)


def build_workloads(bprs: int, scratch: Path, pool: ThreadPoolExecutor) -> dict[str, tuple[Callable[[int], None], Callable[[int], None]]]:
    """Workload name -> (whole(repeats) on one thread, halves(repeats) on ``pool``'s two threads)."""
    layout = load_layout(*home_layout_files(scratch / "spec"))
    payloads = make_bprs(layout, bprs, 100, seed=0)
    converter = BprConverter(layout)
    rows = converter.count_rows(payloads)
    half = len(payloads) // 2
    halves = [payloads[:half], payloads[half:]]

    whole_out = layout.allocate(int(rows.sum()))
    half_outs = [layout.allocate(int(rows[:half].sum())), layout.allocate(int(rows[half:].sum()))]
    request_buffers = [layout.allocate(int(rows.max())) for _ in range(3)]

    libc = ctypes.CDLL(None)
    libc.memset.argtypes, libc.memset.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t], ctypes.c_void_p
    whole_bytes = sum(a.nbytes for a in whole_out.values())
    memory = [bytearray(whole_bytes), bytearray(whole_bytes // 2), bytearray(whole_bytes - whole_bytes // 2)]

    def memset(buffer: bytearray) -> Callable[[int], None]:
        # the ctypes view (not a bare address) keeps the buffer alive inside the run
        view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        return repeated(libc.memset, view, 7, len(buffer))

    return {
        "one-output": (repeated(converter.convert_into, payloads, whole_out),
                       in_two_threads(pool, [repeated(converter.convert_into, part, out)
                                             for part, out in zip(halves, half_outs)])),
        "per-request": (repeated(convert_per_request, converter, payloads, request_buffers[2]),
                        in_two_threads(pool, [repeated(convert_per_request, converter, part, buffer)
                                              for part, buffer in zip(halves, request_buffers)])),
        "alu": build_machine_control(pool),  # ~10-20 ms a call
        "memset": (memset(memory[0]), in_two_threads(pool, [memset(memory[1]), memset(memory[2])])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--bprs", type=int, default=20, help="generated home BPRs of 100 candidates")
    parser.add_argument("--target-ms", type=float, default=100.0, help="one-thread time of each timing")
    parser.add_argument("--json", type=Path, help="write the per-round ratios and their summary here")
    args = parser.parse_args()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-scaling") as pool:
        workloads = build_workloads(args.bprs, Path(tempfile.mkdtemp(prefix="navi-scaling-")), pool)

        def timed(run: Callable[[int], None], repeats: int) -> float:
            began = time.perf_counter()
            run(repeats)
            return time.perf_counter() - began

        def one_thread(name: str, repeats: int) -> float:
            return timed(workloads[name][0], repeats)

        def two_threads(name: str, repeats: int) -> float:
            return timed(workloads[name][1], repeats)

        repeats = {}
        for name in WORKLOADS:  # warm (first-touch page faults), then size each timing
            two_threads(name, 1)
            repeats[name] = max(1, round(args.target_ms / 1e3 / one_thread(name, 1)))
        ratios: dict[str, list[float]] = {name: [] for name in WORKLOADS}
        one_thread_s: dict[str, list[float]] = {name: [] for name in WORKLOADS}
        for round_index in range(args.rounds):
            for name in WORKLOADS:
                if round_index % 2:
                    two_s = two_threads(name, repeats[name])
                    one_s = one_thread(name, repeats[name])
                else:
                    one_s = one_thread(name, repeats[name])
                    two_s = two_threads(name, repeats[name])
                ratios[name].append(one_s / two_s)
                one_thread_s[name].append(one_s)

    def summary(values: list[float]) -> dict:
        q1, _, q3 = statistics.quantiles(values, n=4)
        return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}

    report = {"rounds": args.rounds, "bprs": args.bprs, "target_ms": args.target_ms,
              "ratios": {name: summary(values) for name, values in ratios.items()},
              "of_alu": {name: summary([r / a for r, a in zip(ratios[name], ratios["alu"])])
                         for name in ("one-output", "per-request")},
              # does the one-thread speed move with the cores (alu) from round to round?
              "one_thread_speed_correlation_with_alu": {
                  name: statistics.correlation(one_thread_s[name], one_thread_s["alu"])
                  for name in ("one-output", "per-request", "memset")},
              "per_round": ratios, "one_thread_s": one_thread_s}
    print(f"two threads over one, {args.rounds} rounds ({args.bprs} home BPRs, ~{args.target_ms:g} ms a timing)")
    print(f"{'workload':<12} {'median':>7} {'q1':>6} {'q3':>6} {'min':>6} {'max':>6}")
    for name, s in report["ratios"].items():
        print(f"{name:<12} {s['median']:>6.2f}x {s['q1']:>5.2f}x {s['q3']:>5.2f}x {s['min']:>5.2f}x {s['max']:>5.2f}x")
    for name, s in report["of_alu"].items():
        print(f"{name} ratio / alu ratio, same round: median {s['median']:.3f}, q1 {s['q1']:.3f}, q3 {s['q3']:.3f}")
    print("one-thread time's correlation with alu's, round by round: " + ", ".join(
        f"{name} {value:.2f}" for name, value in report["one_thread_speed_correlation_with_alu"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
