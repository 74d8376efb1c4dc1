"""Start `navi serve` for a benchmark script and wait until it is ready (serve_rss, wire_fuzz, soak)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_navi(model_dirs, log_path: Path, *flags: str, ready_timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``navi serve`` on free loopback ports with ``model_dirs`` and ``flags``: (process, gRPC port).

    Its log goes to ``log_path``; a daemon that exits or is not ready in time stops the script
    with that log.
    """
    command = [sys.executable, "-m", "navi.cli.main", "serve", "--host", "127.0.0.1", "--port", "0",
               "--prometheus-port", "0", "--rest-api-port", "0"]
    for model_dir in model_dirs:
        command += ["--model-dir", str(model_dir)]
    with open(log_path, "w") as log:
        server = subprocess.Popen([*command, *flags], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + ready_timeout_s
    while "navi ready" not in log_path.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(log_path.read_text())
        time.sleep(0.2)
    return server, re.search(r"navi gRPC listening on [^ ]+:(\d+)", log_path.read_text()).group(1)
