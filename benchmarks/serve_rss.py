"""Memory of `navi serve` on the demo models, from /proc: the figure deploy/k8s sizes requests from.

    python benchmarks/serve_rss.py

Starts `navi serve --model-dir models/home --model-dir models/dense` on free
ports, prints VmRSS / VmHWM (peak) when ready and after 5 s of 8-way load on
each model (`navi bench serve`: 100-candidate home BPRs, then dense inputs).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from daemon import start_navi  # noqa: E402 - benchmarks/daemon.py, beside this script


def memory_mib(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) // 1024 for key in ("VmRSS", "VmHWM")}


def main() -> None:
    server, port = start_navi(["models/home", "models/dense"], Path(tempfile.mkdtemp()) / "navi.log")
    try:
        time.sleep(1)
        print("ready (MiB):", memory_mib(server.pid))
        for model, workload in (("home", ["--workload", "home", "--candidates", "100"]), ("dense", ["--workload", "dense"])):
            subprocess.run([sys.executable, "-m", "navi.cli.main", "bench", "serve", "--target", f"127.0.0.1:{port}",
                            "--model", model, "--concurrency", "8", "--duration", "5", "--warmup-s", "1", *workload],
                           check=True, capture_output=True, cwd=REPO)
            print(f"after 8-way {model} load (MiB):", memory_mib(server.pid))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
