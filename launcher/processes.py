"""A process and its descendants, read from /proc: torchrun starts each rank in a session of its own, so a process
group misses them. Shared by the launch side (spawn.py) and preflight's collective check."""
from __future__ import annotations

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
