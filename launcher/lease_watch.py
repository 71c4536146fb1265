"""In each rank: follow the launcher's lease (launcher/lease.py). A stop asked there (a Ctrl-C in the launcher's
terminal, on any host) becomes a save request, an abort ends the rank at once, and a launcher that is gone ends it
within seconds: on the launcher's host by its pid, elsewhere when the lease's counter stops. Standard library only:
the worker and a user script's rank entry start it before the engine's imports, accelerate ranks from sitecustomize.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from launcher.lease import LEASE_FILE, POLL_S, Holder, on_this_host, pid_alive, read


def watch_launcher(run_dir: Path, on_stop: Callable[[], None], on_gone: Callable[[str], None],
                   on_abort: Callable[[], None]) -> bool:
    """In a rank: follow the launcher's lease from a daemon thread. Returns False when there is nothing to watch (no
    lease: launch.sh run by hand; a Slurm batch job, which has no launcher process)."""
    path = run_dir / LEASE_FILE
    first = read(path)
    if first is None or first.slurm_job_id:
        return False
    threading.Thread(target=_watch, args=(path, first, on_stop, on_gone, on_abort), daemon=True,
                     name="launcher-lease-watch").start()
    return True


def _watch(path: Path, first: Holder, on_stop: Callable[[], None], on_gone: Callable[[str], None],
           on_abort: Callable[[], None]) -> None:
    local, counter, moved_at, stopped = on_this_host(first), first.counter, time.monotonic(), False
    while True:
        if local and not pid_alive(first):
            return on_gone(f"the launcher ({first.describe()}) is gone")
        now = read(path)
        if now is None and not path.exists():
            return on_gone(f"the launcher's lease {path} was removed")
        if now is not None:
            if now.nonce != first.nonce:
                return on_gone(f"another launch took over the run dir ({now.describe()})")
            if now.state == "abort":
                return on_abort()
            if now.state == "stop" and not stopped:
                stopped = True
                on_stop()
            if now.counter != counter:
                counter, moved_at = now.counter, time.monotonic()
        if not local and time.monotonic() - moved_at > first.gone_after_s:
            return on_gone(f"the launcher ({first.describe()}) has not renewed its lease for "
                           f"{first.gone_after_s:.0f} s")
        time.sleep(POLL_S)
