"""Shared fixtures of the integration tests: a real ``navi serve`` daemon.

``start_navi(*args)`` (module scoped) launches ``python -m navi.cli.main serve``
on free loopback ports with the given flags, waits until it logs that it is
ready, and stops it (SIGTERM) when the module ends. Keep additions additive:
other suites put their own fixtures below.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"navi gRPC listening on [^ ]+:(\d+) \(([^)]*)\), metrics on :(\d+)/metrics")
_READY = "navi ready"
_REST_LISTENING = re.compile(r"navi REST listening on [^ ]+:(\d+) ")


def free_port() -> int:
    """A TCP port free on loopback now (the REST port has no "any free port" value: 0 turns it off)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status(pid: int, key: str) -> int:
    """A number of ``/proc/<pid>/status``: memory (``VmRSS``, ``VmHWM``) in bytes, ``Threads`` as is."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            fields = line.split()
            return int(fields[1]) * (1024 if fields[-1] == "kB" else 1)
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class NaviDaemon:
    """One ``navi serve`` subprocess; its log goes to a file, read back by the test."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path | None = None,
                 navi_command: tuple[str, ...] = (sys.executable, "-m", "navi.cli.main"),
                 env: dict[str, str] | None = None):
        self.args = list(args)
        # the REST port has no "any free port" value, so one is picked here; another socket may
        # take it before the daemon binds it, and then the daemon is started again on a new one
        self._rest_port_picked = "--rest-api-port" not in self.args
        if self._rest_port_picked:
            self.args += ["--rest-api-port", str(free_port())]
        self.log_path = log_path
        self._command = [*navi_command, "serve", "--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0"]
        self._cwd = cwd or REPO_ROOT
        self._env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        self._launch()
        self.port = 0
        self.prometheus_port = 0
        self.rest_port = 0
        self.address = ""

    def _launch(self) -> None:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([*self._command, *self.args], stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self._cwd, env=self._env)

    def _rest_port_taken(self, text: str) -> bool:
        """The daemon stopped because the REST port picked for it was taken meanwhile."""
        return (self._rest_port_picked and "cannot serve REST on port" in text
                and "address already in use" in text)

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90.0, ready_line: str = _READY) -> "NaviDaemon":
        """Block until the daemon logged ``ready_line``; fail with its log otherwise."""
        deadline = time.monotonic() + timeout_s
        relaunches = 0
        while time.monotonic() < deadline:
            text = self.log_text()
            match = _LISTENING.search(text)
            if match and not self.port:
                self.port = int(match.group(1))
                self.prometheus_port = int(match.group(3))
                self.address = f"127.0.0.1:{self.port}"
            rest = _REST_LISTENING.search(text)
            if rest and not self.rest_port:
                self.rest_port = int(rest.group(1))
            if match and ready_line in text:
                return self
            if self.process.poll() is not None:
                if self._rest_port_taken(text) and relaunches < 3:
                    relaunches += 1
                    self._log.close()
                    self.port = self.prometheus_port = self.rest_port = 0
                    self.args[self.args.index("--rest-api-port") + 1] = str(free_port())
                    self._launch()
                    continue
                pytest.fail(f"navi serve exited with {self.process.returncode}:\n{text}")
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"navi serve not ready after {timeout_s} s:\n{self.log_text()}")

    def channel(self, **options) -> grpc.Channel:
        """An insecure channel to the daemon (close it, or use it in a ``with``)."""
        opts = [("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20)]
        return grpc.insecure_channel(self.address, options=opts + list(options.items()))

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        """Wait for the daemon to exit on its own (e.g. after a signal the test sent)."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"navi serve did not exit within {timeout_s} s:\n{self.log_text()}")
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """Stop at once (test cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def start_navi(tmp_path_factory):
    """Factory: ``start_navi(*flags, wait=True) -> NaviDaemon``; all are stopped at module end."""
    daemons: list[NaviDaemon] = []

    def start(*args: str, wait: bool = True, cwd: Path | None = None) -> NaviDaemon:
        log_path = tmp_path_factory.mktemp("navi-log") / "navi.log"
        daemon = NaviDaemon([str(a) for a in args], log_path, cwd=cwd)
        daemons.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in daemons:
        daemon.terminate(timeout_s=15)


# A module that defines a ``navi`` fixture (its module-scoped daemon) gets these stubs of it.

@pytest.fixture(scope="module")
def stub(navi):
    """The module's daemon's TF Serving PredictionService stub."""
    from navi._proto.tensorflow_serving.apis import prediction_service_pb2_grpc

    with navi.channel() as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def kstub(navi):
    """The module's daemon's KServe V2 GRPCInferenceService stub."""
    from navi._proto.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc

    with navi.channel() as channel:
        yield kserve_grpc.GRPCInferenceServiceStub(channel)
