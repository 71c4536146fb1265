"""SIGTERM and SIGHUP at the entry points (`python -m launcher`, `python -m launcher.preflight`) while no job runs.

Python stops on them without running a `finally`, so a `kill` or a closed terminal during planning or the preflight
check would leave the check's processes (in a session of their own) and the run dir's lease behind. Raised as a
KeyboardInterrupt instead, they take the path Ctrl-C takes. While the job runs, launcher.launch.spawn handles them.
"""
from __future__ import annotations

import signal
import sys


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C's KeyboardInterrupt is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def stop_on_term_and_hangup() -> None:
    """SIGTERM and SIGHUP end this process the way Ctrl-C does; one already ignored (nohup) stays ignored."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_stopped)


def stopped(err: KeyboardInterrupt) -> int:
    """One line for the console (none for a closed terminal: nobody is left to read it); the shell's exit code."""
    signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
    if signum != signal.SIGHUP:
        print(f"\nstopped ({'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum
