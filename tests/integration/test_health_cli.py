"""`navi health` against a real daemon: exit 0 only for SERVING."""
from __future__ import annotations

import subprocess
import sys

from tests.integration.conftest import REPO_ROOT


def navi_health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "navi.cli.main", "health", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_health_exit_code_follows_the_serving_status(start_navi):
    daemon = start_navi("--model-dir", "models/home", "--model-dir", "models/dense")
    result = navi_health("--target", daemon.address)
    assert result.returncode == 0 and "SERVING" in result.stdout, result
    result = navi_health("--target", daemon.address, "--service", "dense")
    assert result.returncode == 0 and "'dense': SERVING" in result.stdout, result
    result = navi_health("--target", daemon.address, "--service", "no-such-model")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr, result
    assert daemon.terminate() == 0
    result = navi_health("--target", daemon.address, "--timeout", "1")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr, result
