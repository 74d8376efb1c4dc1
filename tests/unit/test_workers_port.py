"""The supervisor's port reservation and the benchmarks' process-tree CPU, on real sockets and processes."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from navi.bench.machine import process_cpu_s, process_tree, process_tree_cpu_s
from navi.errors import ConfigError
from navi.server.workers import memory_bytes, reserve_port


def reuse_port_listener(port: int = 0) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    return listener


def test_a_port_a_stale_reuse_port_process_listens_on_is_refused():
    with reuse_port_listener() as stale:
        with pytest.raises(ConfigError, match="cannot bind"):
            reserve_port("127.0.0.1", stale.getsockname()[1])


def test_the_reserved_port_takes_reuse_port_workers_and_nothing_else():
    holder = reserve_port("127.0.0.1", 0)
    port = holder.getsockname()[1]
    try:
        with reuse_port_listener(port) as worker:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            worker.settimeout(5)
            worker.accept()[0].close()  # the connection went to the worker, not the holder
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        holder.close()


def test_a_process_tree_counts_its_childrens_cpu():
    child_code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ninput()"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {child_code!r}], "
                               "stdin=subprocess.PIPE); sys.stdin.readline(); c.communicate(b'\\n')"],
        stdin=subprocess.PIPE)
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            members = process_tree(parent.pid)
            if len(members) == 2 and process_cpu_s(members[1]) >= 0.25:
                break
            time.sleep(0.05)
        assert len(members) == 2
        assert process_tree_cpu_s(parent.pid) >= process_cpu_s(parent.pid) + 0.25
        assert memory_bytes(parent.pid)["rss"] > 0
    finally:
        parent.communicate(b"\n", timeout=30)
    assert process_tree_cpu_s(parent.pid) is None
