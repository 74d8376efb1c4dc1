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


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks of it and its reaped children) of every process."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the ")": state, ppid (field 4) ... utime 14, stime 15, cutime 16, cstime 17
        stats[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]))
    return stats


def process_tree(pid: int, stats: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``pid`` and its live descendants ([] if ``pid`` is gone)."""
    stats = _proc_stats() if stats is None else stats
    if pid not in stats:
        return []
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, (ppid, _) in stats.items() if ppid == parent and child not in tree]
        tree.extend(children)
        frontier.extend(children)
    return tree


def process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a local process and every live descendant, or None if ``pid`` is gone.

    A server with ``--workers`` is a supervisor and its workers: their CPU is the
    server's. Each process counts its own time and that of children it already
    reaped (a restarted worker's), so nothing is counted twice.
    """
    stats = _proc_stats()
    tree = process_tree(pid, stats)
    if not tree:
        return None
    return sum(stats[member][1] for member in tree) / os.sysconf("SC_CLK_TCK")
