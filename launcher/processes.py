"""A process and its descendants, read from /proc: torchrun starts each rank in a session of its own, so a process
group misses them. Shared by the launch side (spawn.py) and preflight's collective check."""
from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts the ranks in a session of their own, so a process group misses
    them)."""
    tree, stack = [], [pid]
    while stack:
        p = stack.pop()
        tree.append(p)
        stack += children(p)
    return tree


def age_s(pid: int | str = "self") -> float | None:
    """Seconds since the process started, from /proc (its start in clock ticks after boot against the uptime); None
    where /proc cannot say. Covers the interpreter's own start and imports, which a clock read in Python would miss."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        started = int(stat.rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)
