"""The one call site that starts a LaunchSpec: a child process group, signals passed on, its exit code returned.

Preemption signals (SIGTERM, SIGUSR1) go to the ranks themselves (the leaf processes), once each: the ranks save at
the next step boundary and exit cleanly, so torchrun neither restarts nor kills them mid-save. On several hosts the
local leaves are ssh clients, so the signal goes to DeepSpeed's runner as SIGTERM, which signals every host's ranks.
SIGINT goes to the engine's launcher (torchrun, DeepSpeed's runner), which tears the ranks down.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType

from launcher.render.launch import LaunchSpec

TO_RANKS = (signal.SIGTERM, signal.SIGUSR1)
TO_LAUNCHER = (signal.SIGINT, signal.SIGUSR2, signal.SIGHUP)


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


def kill_tree(pid: int) -> None:
    """SIGKILL to pid and every descendant at once: a crash as the machine sees it."""
    _send(process_tree(pid), signal.SIGKILL)


def leaf_descendants(pid: int) -> list[int]:
    leaves, stack = [], children(pid)
    while stack:
        p = stack.pop()
        kids = children(p)
        if kids:
            stack += kids
        else:
            leaves.append(p)
    return leaves


def _send(pids: list[int], signum: int) -> None:
    for p in pids:
        try:
            os.kill(p, signum)
        except ProcessLookupError:
            pass


def run(spec: LaunchSpec, inherited: dict[str, str]) -> tuple[int, list[int]]:
    """Run the command with the inherited environment plus the spec's. Returns (exit code, signals received)."""
    env = {**inherited, **spec.env}
    proc = subprocess.Popen(list(spec.argv), env=env, cwd=spec.cwd, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if signum in TO_RANKS and spec.signal_to == "ranks":
            _send(leaf_descendants(proc.pid) or [proc.pid], signum)
        elif signum in TO_RANKS:
            _send([proc.pid], signal.SIGTERM)  # DeepSpeed's runner stops every host's ranks on TERM (they save)
        else:
            _send([proc.pid], signum)

    previous = {s: signal.signal(s, forward) for s in (*TO_RANKS, *TO_LAUNCHER)}
    try:
        while True:
            try:
                return proc.wait(), received
            except KeyboardInterrupt:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
