"""Soak: a long mixed load on a real `navi serve` while a new model version lands every minute.

    nohup flock /work/notes/bench.lock -c 'python benchmarks/soak.py --minutes 30' > out/soak.txt &

Serves copies of models/dense and models/home from a temporary repository
(polled every 5 s) and sends, from ``--processes`` client processes of
``--threads`` threads each plus one burst thread per process (32 calls at
once, then a pause: mixed concurrency): dense Predict and KServe ModelInfer,
BPR Predict, malformed requests (expected INVALID_ARGUMENT) and metadata /
status calls. Every ``--version-every-s`` a new dense version is copied in
(to a temporary name, then renamed) and the oldest is removed. Any answer
other than the one its kind expects is an unexpected error. The daemon's
RSS, open file descriptors and threads are sampled every 5 s and reported at
10%, 50% and 100% of the run. Exits 1 on any unexpected error or when RSS at
100% is more than 5% above RSS at 10%.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from daemon import start_navi  # noqa: E402 - benchmarks/daemon.py, beside this script
sys.path.insert(0, str(REPO))

#: kind -> the status code it must get
EXPECTED = {"dense": "OK", "dense_v2": "OK", "bpr": "OK", "malformed": "INVALID_ARGUMENT", "metadata": "OK",
            "status": "OK"}


def _payloads() -> dict[str, tuple[str, bytes]]:
    from navi.bench.wirefuzz import PREDICTION, valid_seeds

    seeds = valid_seeds(REPO / "models" / "home")
    by = {}
    for seed in seeds:
        name = seed.path.rsplit("/", 1)[1]
        if name == "Predict" and seed.message.model_spec.name == "dense" and "dense" not in by:
            by["dense"] = (seed.path, seed.payload())
        elif name == "Predict" and seed.message.model_spec.name == "home":
            by["bpr"] = (seed.path, seed.payload())
        elif name == "ModelInfer" and seed.message.model_name == "dense" and "dense_v2" not in by:
            by["dense_v2"] = (seed.path, seed.payload())
        elif name == "GetModelMetadata":
            by["metadata"] = (seed.path, seed.payload())
        elif name == "GetModelStatus":
            by["status"] = (seed.path, seed.payload())
    by["malformed"] = (PREDICTION + "Predict", by["dense"][1][:-7])
    return by


def _client(address: str, stop_at: float, threads: int, results: mp.Queue) -> None:
    import grpc

    payloads = _payloads()
    kinds = ["dense", "dense", "dense_v2", "bpr", "malformed", "metadata", "status"]
    counts: Counter = Counter()
    examples: list = []
    lock = threading.Lock()
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    calls = {kind: channel.unary_unary(path, request_serializer=None, response_deserializer=None)
             for kind, (path, _) in payloads.items()}

    def record(kind: str, code: str, details: str) -> None:
        with lock:
            counts[(kind, code)] += 1
            if code != EXPECTED[kind] and len(examples) < 20:
                examples.append((kind, code, details[:200]))

    def steady(index: int) -> None:
        i = index
        while time.monotonic() < stop_at:
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                calls[kind](payloads[kind][1], timeout=30)
                record(kind, "OK", "")
            except grpc.RpcError as error:
                record(kind, error.code().name, error.details() or "")

    def burst() -> None:
        while time.monotonic() < stop_at:
            futures = [(kinds[j % len(kinds)], calls[kinds[j % len(kinds)]].future(
                payloads[kinds[j % len(kinds)]][1], timeout=30)) for j in range(32)]
            for kind, future in futures:
                try:
                    future.result()
                    record(kind, "OK", "")
                except grpc.RpcError as error:
                    record(kind, error.code().name, error.details() or "")
            time.sleep(0.5)

    workers = [threading.Thread(target=steady, args=(i,)) for i in range(threads)]
    workers.append(threading.Thread(target=burst))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    channel.close()
    results.put((dict(counts), examples))


def _proc(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {"rss_mib": int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)) // 1024,
            "threads": int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1)),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _publish(model_dir: Path, version: int) -> None:
    """A new version: copied under a temporary name, then renamed into place."""
    newest = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    staging = model_dir / f".incoming-{version}"
    shutil.copytree(newest, staging)
    staging.rename(model_dir / str(version))
    versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for old in versions[:-2]:
        shutil.rmtree(old)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--version-every-s", type=float, default=60.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="navi-soak-"))
    for name in ("dense", "home"):
        shutil.copytree(REPO / "models" / name, root / name)
    log_path = root / "navi.log"
    server, port = start_navi([root / "dense", root / "home"], log_path, "--model-check-interval-secs", "5")
    samples: list[tuple[float, dict]] = []
    try:
        duration_s = args.minutes * 60
        started = time.monotonic()
        stop_at = started + duration_s
        results: mp.Queue = mp.Queue()
        clients = [mp.Process(target=_client, args=(f"127.0.0.1:{port}", stop_at, args.threads, results))
                   for _ in range(args.processes)]
        for client in clients:
            client.start()
        version = 1_900_000_000_000
        next_version_at = started + args.version_every_s
        published = 0
        while time.monotonic() < stop_at:
            time.sleep(min(5.0, max(0.0, stop_at - time.monotonic())))
            samples.append((time.monotonic() - started, _proc(server.pid)))
            if time.monotonic() >= next_version_at:
                version += 1
                _publish(root / "dense", version)
                published += 1
                next_version_at += args.version_every_s
        outcomes = [results.get(timeout=120) for _ in clients]
        for client in clients:
            client.join(60)
        elapsed_s = time.monotonic() - started
        final = _proc(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
    counts: Counter = Counter()
    examples = []
    for part, part_examples in outcomes:
        counts.update(part)
        examples += part_examples
    total = sum(counts.values())
    unexpected = sum(n for (kind, code), n in counts.items() if code != EXPECTED[kind])

    def at(fraction: float) -> dict:
        target = fraction * elapsed_s
        return min(samples, key=lambda s: abs(s[0] - target))[1] if fraction < 1 else final

    points = {f"{int(f * 100)}%": at(f) for f in (0.1, 0.5, 1.0)}
    loaded = log_path.read_text().count("loaded in")
    print(f"soak: {total:,} requests in {elapsed_s / 60:.1f} min ({total / elapsed_s:.0f}/s), "
          f"{args.processes} processes x ({args.threads} threads + 1 burst of 32), {published} new versions "
          f"published, {loaded} version loads logged; daemon alive: {alive}")
    for (kind, code), n in sorted(counts.items()):
        print(f"  {kind:10s} {code:20s} {n:10,d}")
    print(f"unexpected: {unexpected}")
    for example in examples[:10]:
        print("  UNEXPECTED", example)
    for label, point in points.items():
        print(f"  at {label:>4s}: RSS {point['rss_mib']} MiB, threads {point['threads']}, fds {point['fds']}")
    rss_drift = points["100%"]["rss_mib"] / points["10%"]["rss_mib"] - 1
    print(f"RSS 10% -> 100%: {rss_drift:+.1%}")
    return 0 if unexpected == 0 and alive and rss_drift <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
