"""The launcher's side of the run dir's lease (the record is launcher/lease.py): take it - or refuse, when the job
that holds it is alive - renew it every RENEW_S seconds, carry a stop or an abort to the ranks through it, hand it
to a submitted Slurm job, and release it.

Judging an existing lease: on its holder's host the pid, start time and boot id must match and no process of its job
may be left; elsewhere its counter must still move; a Slurm holder lives while squeue lists its job.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from launcher.lease import (GONE_AFTER_S, LEASE_FILE, POLL_S, RENEW_S, SUBMITTING, Holder, encode, on_this_host,
                            pid_alive, read)


def processes_in(run_dir: Path) -> list[int]:
    """Processes of this host that belong to a job in run_dir: the launcher gives the engine, and so every rank,
    LAUNCHER_RUN_DIR (a `tail -f` of its metrics is not one of them)."""
    needle = b"\0LAUNCHER_RUN_DIR=" + str(run_dir).encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = b"\0" + (proc / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ:
            found.append(int(proc.name))
    return found


def slurm_job_listed(job_id: str) -> bool | None:
    """True while squeue lists the job (pending, running, completing); None when squeue cannot say."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


@dataclass
class Verdict:
    alive: bool
    why: str
    wait_s: float = 0.0  # how long the judge waited for a dying job


def judge(path: Path, run_dir: Path, say: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Is the job that holds this lease still alive? May wait up to about the holder's gone_after_s to find out."""
    holder = read(path)
    gone_after_s = holder.gone_after_s if holder else GONE_AFTER_S
    if holder is None:
        age = time.time() - path.stat().st_mtime if path.exists() else gone_after_s
        if age < gone_after_s:  # another launch is creating it right now
            return Verdict(True, f"another launch is taking the run dir right now ({path} is {age:.0f} s old)")
        return Verdict(False, f"its lease file {path} is unreadable and {age:.0f} s old")
    if holder.slurm_job_id and holder.slurm_job_id != SUBMITTING:
        listed = slurm_job_listed(holder.slurm_job_id)
        if listed is None:
            return Verdict(True, f"it is held by {holder.describe()} and squeue cannot say whether that job still "
                                 f"exists (remove {path} if it does not)")
        return Verdict(listed, f"{holder.describe()} is {'still queued or running' if listed else 'no longer listed'}")
    if on_this_host(holder):
        return _judge_local(holder, run_dir, say, sleep, gone_after_s)
    return _judge_counter(path, holder, say, sleep, gone_after_s)


def _judge_local(holder: Holder, run_dir: Path, say: Callable[[str], None], sleep: Callable[[float], None],
                 gone_after_s: float) -> Verdict:
    if pid_alive(holder):
        return Verdict(True, f"it is held by {holder.describe()}, which is running")
    # The launcher is gone; its ranks notice within POLL_S here and within gone_after_s on other hosts.
    remote = [h for h in holder.hosts if h not in ("localhost", "127.0.0.1", holder.host)]
    deadline = time.monotonic() + gone_after_s + POLL_S
    settle = max(0.0, holder.renewed_at + gone_after_s + RENEW_S - time.time()) if remote else 0.0
    waited, told = 0.0, False
    while True:
        left = processes_in(run_dir)
        if not left and waited >= settle:
            return Verdict(False, f"{holder.describe()} is gone and none of its processes is left", waited)
        if time.monotonic() > deadline and left:
            return Verdict(True, f"{holder.describe()} is gone but processes of its job still run in the run dir "
                                 f"(pids {', '.join(map(str, left[:8]))})", waited)
        if not told:
            say(f"waiting for the previous job in this run dir to stop ({holder.describe()} is gone)")
            told = True
        sleep(POLL_S)
        waited += POLL_S


def _judge_counter(path: Path, holder: Holder, say: Callable[[str], None], sleep: Callable[[float], None],
                   gone_after_s: float) -> Verdict:
    """Another host's launcher: watch its counter (clocks of two hosts cannot be compared)."""
    say(f"checking whether {holder.describe()} is alive (its counter, up to {gone_after_s + 2 * RENEW_S:.0f} s)")
    waited = 0.0
    while waited < gone_after_s + 2 * RENEW_S:
        sleep(POLL_S)
        waited += POLL_S
        now = read(path)
        if now is None or now.nonce != holder.nonce:
            return Verdict(True, "the lease changed hands while it was being checked", waited)
        if now.counter != holder.counter:
            return Verdict(True, f"it is held by {holder.describe()}, whose lease is being renewed", waited)
    return Verdict(False, f"{holder.describe()} stopped renewing its lease {waited:.0f} s ago or earlier", waited)


class LeaseTaken(Exception):
    """The run dir is held by a job that is alive: the message says by whom and how to stop it."""

    def __init__(self, holder: Holder | None, why: str) -> None:
        super().__init__(why)
        self.holder, self.why = holder, why


@dataclass
class Lease:
    """The launcher's hold on a run dir; `renew` runs in a thread until `release`."""

    path: Path
    holder: Holder
    lost: Callable[[str], None] = field(default=lambda why: None)
    # Reentrant: a signal handler (a second Ctrl-C, launch/spawn.py) sets the state from the main thread, and may run
    # while that thread is inside set_state for the previous signal; a plain Lock deadlocked the launcher there.
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _held: bool = True

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="launcher-lease")
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_S):
            with self._lock:
                if not self._held:
                    return
                current = read(self.path)
                if current is not None and current.nonce != self.holder.nonce:
                    self._held = False
                    self.lost(f"another launch took over {self.path} ({current.describe()})")
                    return
                self._bump()

    def _bump(self, **changes: str) -> None:
        self.holder = replace(self.holder, counter=self.holder.counter + 1, renewed_at=time.time(), **changes)
        self._write()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, encode(self.holder), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_state(self, state: str) -> None:
        """`stop` or `abort`: every rank on every host reads it within POLL_S."""
        with self._lock:
            if self._held:
                self._bump(state=state)

    def hand_to_slurm(self, job_id: str) -> None:
        """A submitted batch job now holds the run dir: no launcher process is left to renew it."""
        self._stop.set()
        with self._lock:
            if self._held:
                self._bump(slurm_job_id=job_id)
                self._held = False

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._held and (current := read(self.path)) is not None and current.nonce == self.holder.nonce:
                self.path.unlink(missing_ok=True)
            self._held = False


def acquire(run_dir: Path, holder: Holder, say: Callable[[str], None]) -> Lease:
    """Create the lease, or take over one whose job is gone; raise LeaseTaken when its job is alive. The run dir
    itself is created here: nothing is written into it before the lease is held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LEASE_FILE
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            previous = read(path)
            verdict = judge(path, run_dir, say)
            if verdict.alive:
                raise LeaseTaken(previous, verdict.why)
            say(f"warning: taking over run dir {run_dir}: {verdict.why}")
            _set_aside(path, previous)
            continue
        try:
            os.write(fd, encode(holder))
            os.fsync(fd)
        finally:
            os.close(fd)
        return Lease(path, holder)
    raise LeaseTaken(read(path), "another launch took the run dir while this one was taking it over")


def _set_aside(path: Path, previous: Holder | None) -> None:
    """Move a dead job's lease out of the way, unless it changed since it was judged."""
    current = read(path)
    if previous is not None and (current is None or current.nonce != previous.nonce):
        return
    try:
        os.replace(path, path.with_name(f".{LEASE_FILE}.gone"))
    except FileNotFoundError:
        pass
