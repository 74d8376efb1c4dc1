"""Wire fuzzing at scale: hostile requests to every RPC and REST route of a real `navi serve` (issue 17, item 1).

    python benchmarks/wire_fuzz.py [--count 200000] [--warmup 20000] [--seed 1]
    python benchmarks/wire_fuzz.py --http [--count 50000] [--warmup 5000] [--seed 1]

Starts `navi serve --model-dir models/home --model-dir models/dense` on free
ports and runs ``navi.bench.wirefuzz.fuzz`` (gRPC) or, with ``--http``,
``fuzz_http`` on the REST port (TF Serving REST and KServe V2 HTTP). gRPC:
every answer a status with a message (never UNKNOWN / INTERNAL, never a hang to
the deadline). HTTP: every error a 4xx (or a route's own 501 / 503) with a
JSON ``{"error": ...}`` body, never another 5xx, never a hang. Both: the
answers to the valid reference requests byte-identical before and after, RSS
at the end within 10% of RSS after the warm-up. Prints the counts per (method,
code) and exits 1 on any violation. Take the bench lock on a shared machine.
"""
from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from daemon import start_navi  # noqa: E402 - benchmarks/daemon.py, beside this script
sys.path.insert(0, str(REPO))

from navi.bench import wirefuzz  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="default 200,000 (gRPC) or 50,000 (--http)")
    parser.add_argument("--warmup", type=int, default=None, help="default 20,000 (gRPC) or 5,000 (--http)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--http", action="store_true", help="fuzz the REST port instead of gRPC")
    args = parser.parse_args()
    count = args.count if args.count is not None else (50_000 if args.http else 200_000)
    warmup = args.warmup if args.warmup is not None else (5_000 if args.http else 20_000)
    log_path = Path(tempfile.mkdtemp()) / "navi.log"
    flags = ["--rest-api-port", str(_free_port())] if args.http else []
    server, port = start_navi(["models/home", "models/dense"], log_path, *flags)
    try:

        def progress(report):
            print(f"  {report.sent:,} sent, {time.monotonic() - started:.0f} s, "
                  f"RSS {wirefuzz.rss_bytes(server.pid) / 2**20:.0f} MiB", flush=True)

        started = time.monotonic()
        if args.http:
            rest_port = int(re.search(r"navi REST listening on [^ ]+:(\d+) ", log_path.read_text()).group(1))
            report = wirefuzz.fuzz_http("127.0.0.1", rest_port, server.pid,
                                        wirefuzz.http_seeds(REPO / "models" / "home"), count=count, warmup=warmup,
                                        seed=args.seed, threads=args.threads, progress=progress)
        else:
            report = wirefuzz.fuzz(f"127.0.0.1:{port}", server.pid, wirefuzz.valid_seeds(REPO / "models" / "home"),
                                   count=count, warmup=warmup, seed=args.seed, threads=args.threads,
                                   progress=progress)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
    by_code: dict[str, int] = {}
    for (method, code), n in sorted(report.codes.items(), key=str):
        by_code[str(code)] = by_code.get(str(code), 0) + n
        print(f"{method:28s} {code!s:20s} {n:8,d}")
    print("by code:", ", ".join(f"{code} {n:,}" for code, n in sorted(by_code.items(), key=lambda kv: -kv[1])))
    print(f"sent {report.sent:,} in {report.elapsed_s:.0f} s; slowest answer {report.slowest_s * 1000:.0f} ms; "
          f"RSS after warm-up {report.rss_warm_bytes / 2**20:.0f} MiB, at the end "
          f"{report.rss_end_bytes / 2**20:.0f} MiB ({report.rss_growth:+.1%}); references identical: "
          f"{report.references_identical}; daemon alive: {alive}; violations: {len(report.violations)}")
    for violation in report.violations[:20]:
        print("VIOLATION", violation)
    for diff in report.reference_diffs[:5]:
        print("REFERENCE CHANGED", diff)
    tracebacks = log_path.read_text().count("Traceback")
    print(f"tracebacks in the daemon's log: {tracebacks}")
    ok = (not report.violations and report.references_identical and report.rss_growth < 0.10 and alive)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
