"""`navi bench convert`: the BPR converter against an object-building baseline.

Methods, timed side by side and interleaved in every round:
- ``cython``: our one-pass decode-and-scatter into preallocated arrays;
- ``cython_per_request``: the same, one BPR at a time into one reused
  buffer, as the server converts a one-request batch (the output stays in
  cache; ``cython`` writes one array of every row, far larger than the cache);
- ``cython_2threads``: the same as ``cython``, two threads converting two halves;
- ``cython_per_request_2threads``: two threads, each converting its half one
  BPR at a time into its own reused buffer (the server's two batch threads);
  both two-thread methods run on two long-lived pool threads;
- ``thriftpy2``: thriftpy2's Cython binary protocol decoding each BPR into
  Python objects, with no scatter at all (the original's design does this
  before it scatters, so it bounds that design from above);
- ``reference``: the plain-Python twin (on a few BPRs: it is slow);
- ``cython_report10`` / ``cython_per_request_report10``: ``cython`` /
  ``cython_per_request`` with ten reported features counted as the server
  counts them (``report_feature_ids`` picks them); the rounds alternate them
  with the methods without, and ``report10_vs_none_*`` is their throughput
  ratio per round (min, median) and best against best (the cost of feature
  monitoring; >= 0.97x wanted).
Throughput is reported as the median and the best over rounds.
The two-thread ratios are the converter's alone; ``benchmarks/bench_scaling.py``
sets them against a register-only control loop timed in the same minutes,
what the machine's cores give code that shares nothing.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from navi.bench.machine import machine_info


METHODS = ("cython", "cython_per_request", "cython_2threads", "cython_per_request_2threads", "thriftpy2",
           "reference", "cython_report10", "cython_per_request_report10")

#: features the report A/B methods count
REPORTED_FEATURES = 10


def _time(run: Callable[[int], None], passes: int = 1) -> float:
    """Seconds per pass of ``run(passes)``."""
    # Collect the previous method's garbage first (thriftpy2 leaves millions of
    # objects), so no method pays for another's collections.
    gc.collect()
    start = time.perf_counter()
    run(passes)
    return (time.perf_counter() - start) / passes


def passes_for(seconds_per_pass: float, min_round_s: float) -> int:
    """Passes that make one timing last at least ``min_round_s``.

    A 15 ms timing is at the mercy of one scheduler hiccup on a shared
    machine; repeating the work until a timing lasts ~0.2 s makes rounds
    comparable, while methods stay interleaved round by round.
    """
    if seconds_per_pass <= 0:
        return 1
    return max(1, math.ceil(min_round_s / seconds_per_pass))


def repeated(one_pass: Callable[..., None], *arguments) -> Callable[[int], None]:
    """``run(passes)``: ``one_pass(*arguments)`` that many times."""
    def run(passes: int) -> None:
        for _ in range(passes):
            one_pass(*arguments)
    return run


def in_two_threads(pool: ThreadPoolExecutor, halves: Sequence[Callable[[int], None]]) -> Callable[[int], None]:
    """``run(passes)``: each of ``halves`` makes all its passes on a ``pool`` thread; done when both are."""
    def run(passes: int) -> None:
        for future in [pool.submit(work, passes) for work in halves]:
            future.result()
    return run


def convert_per_request(converter, payloads: Sequence[bytes], buffer) -> None:
    """Convert ``payloads`` one BPR per call into ``buffer``, as the server converts one-request batches."""
    for payload in payloads:
        converter.convert_into([payload], buffer, feature_counts=converter.new_feature_counts())


def convert_counting(converter, payloads: Sequence[bytes], out) -> None:
    """One ``convert_into`` of every payload, counting the reported features as the server does per batch."""
    converter.convert_into(payloads, out, feature_counts=converter.new_feature_counts())


def report_feature_ids(layout, payloads: Sequence[bytes], count: int = REPORTED_FEATURES):
    """(continuous ids, discrete ids): the ``count`` layout features met most often in the first BPR's
    candidates, about 70% continuous, so the report methods count as many values as ten ids can give."""
    from collections import Counter

    import numpy as np

    from navi.idl import decode_bpr

    continuous, discrete = Counter(), Counter()
    known_continuous = set(np.asarray(layout.continuous_ids).tolist())
    known_discrete = set(np.asarray(layout.discrete_ids).tolist())
    for record in decode_bpr(payloads[0]).individualFeaturesList:
        continuous.update(fid for fid in (record.continuousFeatures or {}) if fid in known_continuous)
        discrete.update(fid for fid in (record.discreteFeatures or {}) if fid in known_discrete)
    n_discrete = min(len(discrete), count - (count * 7 + 9) // 10)
    n_continuous = count - n_discrete
    return ([fid for fid, _ in continuous.most_common(n_continuous)],
            [fid for fid, _ in discrete.most_common(n_discrete)])


def build_methods(layout, payloads: Sequence[bytes], reference_bprs: int, pool: ThreadPoolExecutor):
    """Method name -> (run(passes) doing the work ``passes`` times, candidates per pass, input bytes).

    The two-thread methods run on ``pool``'s two long-lived threads, each
    making all its passes without waiting for the other, as the server's
    batch threads do: a thread started per pass would time thread start-up
    and a fresh malloc arena, and a barrier per pass would time the slower
    thread's every hiccup.
    """
    from navi._fast import _bpr_ref
    from navi.converter import BprConverter
    from navi.idl import bpr_thrift

    converter = BprConverter(layout)
    from navi.metrics import FEATURE_VALUE_BUCKETS

    report_continuous, report_discrete = report_feature_ids(layout, payloads)
    reporting = BprConverter(layout, report_continuous_ids=report_continuous, report_discrete_ids=report_discrete,
                             report_bounds=FEATURE_VALUE_BUCKETS)
    rows = converter.count_rows(payloads)
    total_rows = int(rows.sum())
    total_bytes = sum(len(p) for p in payloads)
    out = layout.allocate(total_rows)
    half = len(payloads) // 2
    halves = [payloads[:half], payloads[half:]]
    half_outs = [layout.allocate(int(rows[:half].sum())), layout.allocate(int(rows[half:].sum()))]

    # one buffer of a request's rows for the single thread, one per thread for two
    request_buffers = [layout.allocate(int(rows.max()) if len(rows) else 0) for _ in range(3)]

    from thriftpy2.protocol import TCyBinaryProtocolFactory
    from thriftpy2.utils import deserialize

    factory = TCyBinaryProtocolFactory()
    bpr_type = bpr_thrift().BatchPredictionRequest

    def thriftpy2_decode():
        for payload in payloads:
            deserialize(bpr_type(), payload, factory)

    ref_payloads = list(payloads[:max(1, reference_bprs)])
    ref_rows = int(rows[:len(ref_payloads)].sum())
    ref_out = layout.allocate(ref_rows)
    ref_decoder = _bpr_ref.BprDecoder(layout)

    def reference():
        ref_decoder.decode_into(ref_payloads, ref_out["continuous"], ref_out["binary"], ref_out["discrete"],
                                [ref_out[t.name] for t in layout.tensors[3:]])

    methods = {
        "cython": (repeated(converter.convert_into, payloads, out), total_rows, total_bytes),
        "cython_per_request": (repeated(convert_per_request, converter, payloads, request_buffers[2]),
                               total_rows, total_bytes),
        "cython_2threads": (in_two_threads(pool, [repeated(converter.convert_into, part, part_out)
                                                  for part, part_out in zip(halves, half_outs)]),
                            total_rows, total_bytes),
        "cython_per_request_2threads": (in_two_threads(pool, [repeated(convert_per_request, converter, part, buffer)
                                                              for part, buffer in zip(halves, request_buffers)]),
                                        total_rows, total_bytes),
        "thriftpy2": (repeated(thriftpy2_decode), total_rows, total_bytes),
        "cython_report10": (repeated(convert_counting, reporting, payloads, out), total_rows, total_bytes),
        "cython_per_request_report10": (repeated(convert_per_request, reporting, payloads, request_buffers[2]),
                                        total_rows, total_bytes),
    }
    if reference_bprs > 0:
        methods["reference"] = (repeated(reference), ref_rows, sum(len(p) for p in ref_payloads))
    return methods


def run_convert_bench(layout, payloads: Sequence[bytes], rounds: int = 7, reference_bprs: int = 1,
                      methods: Sequence[str] = METHODS, log: Callable[[str], None] | None = None,
                      min_round_s: float = 0.2) -> dict:
    """Time each method ``rounds`` times, interleaved; return the results dict.

    Each timing repeats its method until it lasts at least ``min_round_s``
    (the count is fixed per method after a warm-up call) and reports seconds
    per pass over the workload.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-convert") as pool:
        available = build_methods(layout, payloads, reference_bprs if "reference" in methods else 0, pool)
        chosen = [m for m in methods if m in available]
        samples: dict[str, list[float]] = {m: [] for m in chosen}
        passes: dict[str, int] = {}
        for method in chosen:  # warm-up (first-touch page faults, imports), then calibration
            available[method][0](1)
            passes[method] = passes_for(_time(available[method][0]), min_round_s)
        for round_index in range(rounds):
            order = chosen[round_index % len(chosen):] + chosen[:round_index % len(chosen)]
            for method in order:
                samples[method].append(_time(available[method][0], passes[method]))
            if log:
                log(f"round {round_index + 1}/{rounds} done")
    results = {}
    for method in chosen:
        _, cand, nbytes = available[method]
        times = samples[method]
        results[method] = {
            "candidates_per_s": cand / statistics.median(times),
            "mb_per_s": nbytes / 1e6 / statistics.median(times),
            "best_candidates_per_s": cand / min(times),
            "best_mb_per_s": nbytes / 1e6 / min(times),
            "seconds": times,
            "passes_per_timing": passes[method],
        }
    ratios = {}
    if "cython" in results and "thriftpy2" in results:
        ratios["cython_vs_thriftpy2_median"] = results["cython"]["candidates_per_s"] / results["thriftpy2"]["candidates_per_s"]
        ratios["cython_vs_thriftpy2_best"] = results["cython"]["best_candidates_per_s"] / results["thriftpy2"]["best_candidates_per_s"]
        per_round = [t / c for t, c in zip(samples["thriftpy2"], samples["cython"])]
        ratios["cython_vs_thriftpy2_per_round_min"] = min(per_round)
        ratios["cython_vs_thriftpy2_per_round_median"] = statistics.median(per_round)
    if "cython_per_request" in results and "thriftpy2" in results:
        per_round = [t / c for t, c in zip(samples["thriftpy2"], samples["cython_per_request"])]
        ratios["cython_per_request_vs_thriftpy2_per_round_median"] = statistics.median(per_round)
    for prefix, one, two in (("two_threads", "cython", "cython_2threads"),
                             ("per_request_two_threads", "cython_per_request", "cython_per_request_2threads")):
        if one in results and two in results:
            per_round = [c / t for c, t in zip(samples[one], samples[two])]
            ratios[f"{prefix}_vs_one_median"] = statistics.median(per_round)
            ratios[f"{prefix}_vs_one_best"] = max(per_round)
    for prefix, none, report in (("report10_vs_none", "cython", "cython_report10"),
                                 ("per_request_report10_vs_none", "cython_per_request", "cython_per_request_report10")):
        if none in results and report in results:
            per_round = [t_none / t_report for t_none, t_report in zip(samples[none], samples[report])]
            ratios[f"{prefix}_per_round_min"] = min(per_round)
            ratios[f"{prefix}_per_round_median"] = statistics.median(per_round)
            # best against best: on a shared machine the least disturbed timing of each
            ratios[f"{prefix}_best"] = min(samples[none]) / min(samples[report])
    if "cython" in results and "reference" in results:
        ratios["cython_vs_reference_median"] = results["cython"]["candidates_per_s"] / results["reference"]["candidates_per_s"]
    return {
        "results": results,
        "ratios": ratios,
        "workload": {"bprs": len(payloads), "candidates": int(sum(available[chosen[0]][1:2])),
                     "input_mb": sum(len(p) for p in payloads) / 1e6, "rounds": rounds,
                     "min_round_s": min_round_s},
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }


def render(report: dict) -> str:
    """A plain-text table of a convert bench report."""
    lines = [f"{'method':<28} {'cand/s median':>14} {'cand/s best':>12} {'MB/s median':>12} {'MB/s best':>10}"]
    for method, r in report["results"].items():
        lines.append(f"{method:<28} {r['candidates_per_s']:>14,.0f} {r['best_candidates_per_s']:>12,.0f} "
                     f"{r['mb_per_s']:>12,.1f} {r['best_mb_per_s']:>10,.1f}")
    for name, value in report["ratios"].items():
        lines.append(f"{name}: {value:.2f}x")
    w = report["workload"]
    lines.append(f"workload: {w['bprs']} BPRs, {w['candidates']} candidates, {w['input_mb']:.1f} MB; "
                 f"{w['rounds']} rounds of >= {w.get('min_round_s', 0):g} s per method; machine: {report['machine']['cpu_model']} ({report['machine']['cores']} cores)")
    return "\n".join(lines)
