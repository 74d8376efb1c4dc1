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
