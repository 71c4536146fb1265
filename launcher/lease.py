"""One job per run dir: the launcher's lease on it, and the ranks' watch on the launcher through it.

`<run dir>/lease.json` is created atomically (O_EXCL, also on NFS) before anything is written into the run dir. It
names the job's holder - host, pid, process start time and boot id of the launcher, or a Slurm job id once a batch
job holds it - and carries a counter the launcher advances every RENEW_S seconds, and the state of the job
(`running`, `stop`: save at the next step and exit, `abort`: exit now). flock is not used: NFS emulates it with POSIX
locks that any close drops, or keeps it local, and a crashed client can hold it until it reboots.

The record is rewritten in place (one write of a fixed-size block), never renamed over: a reader on another NFS client
keeps opening the same file, and close-to-open consistency shows it the new content.

A second launch judges an existing lease: the holder is alive (refused), or its job is gone - on its host the pid,
start time or boot id no longer match and no process there still runs in the run dir; elsewhere the counter has
stopped; for a Slurm holder, squeue no longer lists the job - and it is taken over with a warning.

The ranks read the same file (`watch_launcher`): a stop or abort reaches every host through it, and a rank whose
launcher is gone (SIGKILL, the OOM killer, a closed terminal) exits within seconds, on the launcher's host by its
pid, elsewhere when the counter stops. Only the standard library is used: the ranks start the watch before they
import torch, and a user script's ranks start it from launcher/script/site/sitecustomize.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

LEASE_FILE = "lease.json"
RENEW_S = 1.0  # the launcher advances the counter this often
GONE_AFTER_S = 8.0  # default (run.lease_timeout_s): a counter that has not moved for this long means the holder is gone
POLL_S = 1.0  # how often a rank reads the lease
RECORD_BYTES = 4096  # the record is padded to one block, written with one pwrite
SUBMITTING = "submitting"  # slurm_job_id while sbatch runs: the batch job's ranks must not watch the launcher
LAUNCHER_GONE_EXIT = 129  # a rank that left because its launcher disappeared (as if it got SIGHUP)
ABORT_EXIT = 130  # a rank that left on the second Ctrl-C


@dataclass(frozen=True)
class Holder:
    """Who holds a run dir, as written in lease.json."""

    host: str
    pid: int
    start_time: int  # the launcher's start time in clock ticks since boot (/proc/<pid>/stat field 22)
    boot_id: str
    nonce: str
    started_at: float
    command: str = ""
    hosts: tuple[str, ...] = ()  # the job's hosts: remote ranks need GONE_AFTER_S to notice a dead launcher
    slurm_job_id: str = ""  # set once a submitted batch job holds the run dir (no launcher process then)
    counter: int = 0
    renewed_at: float = 0.0  # the holder's clock: compared only on the holder's own host
    gone_after_s: float = GONE_AFTER_S  # run.lease_timeout_s: how long a stopped counter takes to mean "gone"
    state: str = "running"  # running | stop | abort

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        if self.slurm_job_id and self.slurm_job_id != SUBMITTING:
            return f"Slurm job {self.slurm_job_id} (submitted from {self.host} at {since})"
        return f"launcher pid {self.pid} on host {self.host} (started {since})"

    def how_to_stop(self) -> str:
        if self.slurm_job_id and self.slurm_job_id != SUBMITTING:
            return f"scancel {self.slurm_job_id}"
        return f"Ctrl-C in its terminal, or `kill -INT {self.pid}` on {self.host}"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int:
    """Clock ticks since boot at which pid started; -1 when there is no such process. With the pid, it tells a
    process from a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the command name in parentheses may hold spaces


def this_process(command: str = "", hosts: tuple[str, ...] = (), gone_after_s: float = GONE_AFTER_S) -> Holder:
    pid = os.getpid()
    return Holder(host=socket.gethostname(), pid=pid, start_time=process_start_time(pid), boot_id=boot_id(),
                  nonce=uuid.uuid4().hex, started_at=time.time(), command=command[:1000], hosts=hosts,
                  renewed_at=time.time(), gone_after_s=gone_after_s)


def encode(holder: Holder) -> bytes:
    data = json.dumps(asdict(holder), sort_keys=True).encode()
    if len(data) > RECORD_BYTES - 1:
        data = json.dumps(asdict(replace(holder, command=""))).encode()
    return data + b" " * (RECORD_BYTES - 1 - len(data)) + b"\n"


def decode(data: bytes) -> Holder | None:
    """None for a record that is empty or torn (being created, or read in the middle of a write)."""
    try:
        raw = json.loads(data.decode())
        raw["hosts"] = tuple(raw.get("hosts", ()))
        return Holder(**raw)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def read(path: Path) -> Holder | None:
    try:
        return decode(path.read_bytes())
    except OSError:
        return None


def on_this_host(holder: Holder) -> bool:
    return holder.host == socket.gethostname() and holder.boot_id == boot_id()


def pid_alive(holder: Holder) -> bool:
    return holder.start_time >= 0 and process_start_time(holder.pid) == holder.start_time


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
    _lock: threading.Lock = field(default_factory=threading.Lock)
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
