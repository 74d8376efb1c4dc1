"""Slow clients against a running `navi serve` REST port: how many it holds, for how long, at what memory.

    python benchmarks/slow_clients.py --port 8501 --pid $(pgrep -f "navi.cli.main serve") --connections 5000

Opens N connections that each send a request line and one header, never the
rest (a slowloris client), then reports the server's RSS (from /proc) before
and 1 s after, and how many of the connections the server closed within
``--watch-s`` seconds and when. Run it against two builds one after the other
to compare them (benchmarks/RESULTS.md, "Reliability").
"""
from __future__ import annotations

import argparse
import selectors
import socket
import time
from pathlib import Path

HALF_REQUEST = b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: navi\r\n"


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the REST port")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (for its RSS)")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--watch-s", type=float, default=20.0, help="how long to wait for the server to close them")
    args = parser.parse_args()

    before_mib = rss_mib(args.pid)
    selector = selectors.DefaultSelector()
    for _ in range(args.connections):
        sock = socket.create_connection((args.host, args.port))
        sock.sendall(HALF_REQUEST)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    opened_s = time.monotonic()
    time.sleep(1.0)
    held_mib = rss_mib(args.pid)
    closed_after_s: list[float] = []
    while len(closed_after_s) < args.connections and time.monotonic() - opened_s < args.watch_s:
        for key, _ in selector.select(0.5):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                closed_after_s.append(time.monotonic() - opened_s)
    line = (f"{args.connections} half-sent requests: server RSS {before_mib} -> {held_mib} MiB; "
            f"closed by the server within {args.watch_s:g} s: {len(closed_after_s)}")
    if closed_after_s:
        line += f" (the last {max(closed_after_s):.1f} s after the last was opened)"
    print(line)


if __name__ == "__main__":
    main()
