"""What a benchmark record says about the machine and a process's CPU time."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict[str, object]:
    """Cores, CPU model, platform and Python, recorded with every result."""
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a local process has used, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # fields after the ")" start at field 3 (state): utime is field 14, stime 15
    return (int(fields[11]) + int(fields[12])) / ticks


def process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a local process and every live descendant, or None if ``pid`` is gone.

    A server with ``--workers`` is a supervisor and its workers: their CPU is the
    server's. Each process counts its own time and that of children it already
    reaped (a restarted worker's), so nothing is counted twice.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    own: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the ")": state, ppid (field 4) ... utime 14, stime 15, cutime 16, cstime 17
        parents[int(entry.name)] = int(fields[1])
        own[int(entry.name)] = sum(int(value) for value in fields[11:15])
    if pid not in own:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(own[member] for member in tree) / ticks
