"""The one call site that starts a LaunchSpec: a child process group, signals passed on, its exit code returned."""
from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType

from launcher.render.launch import LaunchSpec

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def run(spec: LaunchSpec, inherited: dict[str, str]) -> int:
    """Run the command with the inherited environment plus the spec's; forward preemption signals to it."""
    env = {**inherited, **spec.env}
    proc = subprocess.Popen(list(spec.argv), env=env, cwd=spec.cwd, start_new_session=True)

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
