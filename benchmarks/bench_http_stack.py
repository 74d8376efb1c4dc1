"""Which HTTP server library for the REST port: aiohttp vs uvicorn + httptools (+ uvloop).

Each server does what navi's REST port does per request, minus the model:
read the whole body (a 2.5 MB V2 binary request, or a 200-byte JSON one),
hand a small piece of work to a thread pool and await it (the handler pool),
answer ~100 bytes of JSON. Closed loop, ``--callers`` client processes with
http.client over kept-alive connections, servers alternated per round; median
requests/s. uvicorn runs from another venv (``--uvicorn-python``): it is not a
navi dependency.

Usage: python benchmarks/bench_http_stack.py --uvicorn-python /tmp/venv-mls/bin/python
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import subprocess
import sys
import textwrap
import time

AIOHTTP_SERVER = textwrap.dedent("""
    import asyncio, sys
    from concurrent.futures import ThreadPoolExecutor
    from aiohttp import web
    pool = ThreadPoolExecutor(2)
    async def infer(request):
        body = await request.read()
        size = await asyncio.get_running_loop().run_in_executor(pool, len, body)
        return web.json_response({"outputs": [{"name": "y", "shape": [1], "data": [size]}]})
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/m/infer", infer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""")

UVICORN_SERVER = textwrap.dedent("""
    import asyncio, json, sys
    from concurrent.futures import ThreadPoolExecutor
    import uvicorn
    pool = ThreadPoolExecutor(2)
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        size = await asyncio.get_running_loop().run_in_executor(pool, len, body)
        answer = json.dumps({"outputs": [{"name": "y", "shape": [1], "data": [size]}]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
                log_level="warning", access_log=False)
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _caller(port: int, body: bytes, duration_s: float, out) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port)
    done = 0
    stop = time.monotonic() + duration_s
    while time.monotonic() < stop:
        connection.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/octet-stream"})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"HTTP {answer.status}")
        done += 1
    out.put(done)


def measure(port: int, body: bytes, callers: int, duration_s: float) -> float:
    out: mp.Queue = mp.Queue()
    processes = [mp.Process(target=_caller, args=(port, body, duration_s, out)) for _ in range(callers)]
    for process in processes:
        process.start()
    total = sum(out.get() for _ in processes)
    for process in processes:
        process.join()
    return total / duration_s


def wait_port(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no server on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvicorn-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()
    servers = {"aiohttp": [sys.executable, "-c", AIOHTTP_SERVER],
               "uvicorn+httptools+uvloop": [args.uvicorn_python, "-c", UVICORN_SERVER]}
    bodies = {"2.5 MB": b"\x00" * 2_500_000, "200 B": b"{" + b" " * 198 + b"}"}
    results: dict[tuple[str, str], list[float]] = {}
    running = {}
    try:
        for name, command in servers.items():
            port = free_port()
            running[name] = (subprocess.Popen(command + [str(port)]), port)
            wait_port(port)
        for _ in range(args.rounds):
            for body_name, body in bodies.items():
                for name, (_, port) in running.items():
                    results.setdefault((body_name, name), []).append(measure(port, body, args.callers, args.duration))
    finally:
        for process, _ in running.values():
            process.terminate()
            process.wait(10)
    print(f"{args.rounds} rounds x {args.duration:.0f} s, {args.callers} callers; median (min) requests/s")
    print("| body | " + " | ".join(servers) + " |")
    print("|---|" + "---|" * len(servers))
    for body_name in bodies:
        cells = [f"{statistics.median(results[(body_name, n)]):,.0f} ({min(results[(body_name, n)]):,.0f})"
                 for n in servers]
        print(f"| {body_name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
