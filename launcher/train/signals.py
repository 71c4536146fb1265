"""Preemption: SIGTERM or SIGUSR1 (or a stop request through the launcher's lease) asks for a save at the next step
boundary; a SIGTERM well after it exits at once."""
from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

# One stop reaches a rank more than once: Slurm signals every process of a step, so the rank gets it directly and again
# through its parent (torchrun, the script entry that forwards signals), and on a loaded node the copies arrived more
# than a second apart (the rank then took its own copy for a second signal and exited without saving). A repeat within
# this window is the same stop; a real second stop is the launcher's (a lease abort and SIGKILL), not a signal here.
SAME_EVENT_S = 10.0
# SIGUSR1 is Slurm's warning before the time limit: it asks for a save and never for haste, so a repeat of it, however
# late (a copy forwarded by a stalled parent, a retried delivery; a CI run lost its save to one), is the same stop.
# Only a SIGTERM after the window means "exit now".
HURRY = (signal.SIGTERM,)


def say(message: str) -> None:
    """One line to stderr from a signal handler: a raw write, because the handler can run while the main thread is
    inside a write to sys.stderr, and a print then re-enters that stream's buffer (RuntimeError: reentrant call)."""
    try:
        os.write(2, (message + "\n").encode())
    except OSError:
        pass


class PreemptionFlag:
    """Installed in every rank; the loop all-reduces it each step so all ranks stop at the same global step."""

    def __init__(self) -> None:
        self.requested = False
        self.first_at = 0.0
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested and (signum not in HURRY or time.monotonic() - self.first_at < SAME_EVENT_S):
            return
        if self.requested:
            say(f"second signal {signal.Signals(signum).name}: exiting now without saving")
            os._exit(128 + signum)
        self.requested = True
        self.first_at = time.monotonic()
        say(f"received {signal.Signals(signum).name}: saving at the next step boundary")

    def request(self, why: str) -> None:
        """A stop asked for through the lease (a Ctrl-C in the launcher's terminal on another host): idempotent."""
        if not self.requested:
            self.requested = True
            self.first_at = time.monotonic()
            print(f"{why}: saving at the next step boundary", file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.requested
