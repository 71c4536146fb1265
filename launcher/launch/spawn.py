"""The one call site that starts a LaunchSpec: a child session, stop requests passed on, its exit code returned.

The engine runs in a session of its own, so a Ctrl-C in the terminal reaches only the launcher, which turns it into a
graceful stop: the first SIGINT, SIGTERM or SIGUSR1 asks every rank to save at the next step boundary and exit. On
one host the ranks (the leaf processes) get the signal themselves, once: torchrun is never signalled, so its
30-second kill timer never cuts a save short. On several hosts (DeepSpeed's runner over pdsh, srun inside an
allocation) the request travels through the run dir's lease (launcher.lease), which every rank reads: DeepSpeed's
runner is not signalled either, for the same reason. A second signal stops everything at once: the lease says
abort (the ranks on every host exit within a second) and every local process of the job gets SIGKILL. SIGHUP (the
terminal closed) does the same without a word: nobody is left to read one; under `nohup`, which ignores SIGHUP, the
job goes on.

The engine's stderr (torchrun's and DeepSpeed's messages, rank 0's warnings and tracebacks) goes to a log file in the
run dir, so the console shows the progress and the launcher's own lines only; the supervisor names that file.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable

from launcher.processes import children, process_tree
from launcher.render.launch import LaunchSpec

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
TO_LAUNCHER = (signal.SIGUSR2,)


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


def _has_rank_env(pid: int) -> bool:
    try:
        return b"\0LOCAL_RANK=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def rank_processes(pid: int) -> list[int]:
    """The ranks under pid: the first processes down the tree that were started with LOCAL_RANK set (torchrun,
    DeepSpeed's launcher and accelerate set it for their workers only). A rank's own children - wandb's service,
    compile workers - are not ranks and must not get a rank's signal. Falls back to the leaves."""
    ranks, stack = [], children(pid)
    while stack:
        p = stack.pop()
        if _has_rank_env(p):
            ranks.append(p)
        else:
            stack += children(p)
    return ranks or leaf_descendants(pid)


def _send(pids: list[int], signum: int) -> None:
    for p in pids:
        try:
            os.kill(p, signum)
        except ProcessLookupError:
            pass


@dataclass
class StopControl:
    """How a stop request reaches ranks the launcher cannot signal directly (the lease), and what it tells the user."""

    request: Callable[[], None] = lambda: None  # every rank saves at its next step boundary and exits
    abort: Callable[[], None] = lambda: None  # every rank exits now
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)


def run(spec: LaunchSpec, inherited: dict[str, str], control: StopControl | None = None,
        stderr_path: Path | None = None, stdout_path: Path | None = None) -> tuple[int, list[int]]:
    """Run the command with the inherited environment plus the spec's. Returns (exit code, stop signals received)."""
    control = control or StopControl()
    env = {**inherited, **spec.env}
    err = open(stderr_path, "ab") if stderr_path else None
    out = (err if stdout_path == stderr_path else open(stdout_path, "ab")) if stdout_path else None
    try:
        proc = subprocess.Popen(list(spec.argv), env=env, cwd=spec.cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
    finally:
        for f in {err, out} - {None}:
            f.close()
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            control.say(f"stopping ({what}): saving at the next step (Ctrl-C again to stop now)")
            if spec.signal_to == "ranks":  # one host: the ranks themselves; SIGTERM is what the README gives scripts
                _send(rank_processes(proc.pid) or [proc.pid], signal.SIGTERM if signum == signal.SIGINT else signum)
            else:
                control.request()
        else:
            control.say("stopping now, without saving")
            _abort(proc, control)

    def hang_up(_signum: int, _frame: FrameType | None) -> None:
        received.append(signal.SIGHUP)
        _abort(proc, control)

    def forward(signum: int, _frame: FrameType | None) -> None:
        _send([proc.pid], signum)

    # under nohup (SIGHUP ignored) a closed terminal must not stop the job: the ignore is kept
    hup = {} if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else {signal.SIGHUP: hang_up}
    handlers = {**{s: stop for s in STOPS}, **hup, **{s: forward for s in TO_LAUNCHER}}
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        while True:
            try:
                return proc.wait(), received
            except KeyboardInterrupt:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _abort(proc: subprocess.Popen, control: StopControl) -> None:
    """Every rank on every host exits now: remote ones through the lease, local processes by SIGKILL."""
    try:
        control.abort()
    finally:
        kill_tree(proc.pid)
