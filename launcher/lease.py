"""One job per run dir: the launcher's lease on it, and the ranks' watch on the launcher through it.

`<run dir>/lease.json` is created atomically (O_EXCL, also on NFS) before anything is written into the run dir. It
names the job's holder - host, pid, process start time and boot id of the launcher, or a Slurm job id once a batch
job holds it - and carries a counter the launcher advances every RENEW_S seconds, and the state of the job
(`running`, `stop`: save at the next step and exit, `abort`: exit now). flock is not used: NFS emulates it with POSIX
locks that any close drops, or keeps it local, and a crashed client can hold it until it reboots.

The record is rewritten in place (one write of a fixed-size block), never renamed over: a reader on another NFS client
keeps opening the same file, and close-to-open consistency shows it the new content.

This module is the record, shared by both sides; the launcher takes, renews, judges and releases it in
launcher/launch/lease_holder.py (a second launch is refused while the holder's job lives, a dead one's lease is
taken over with a warning).

The ranks read the same file (launcher/lease_watch.py): a stop or abort reaches every host through it, and a rank
whose launcher is gone (SIGKILL, the OOM killer, a closed terminal) exits within seconds, on the launcher's host by
its pid, elsewhere when the counter stops. Standard library only: a rank starts its watch before the engine's
imports (deepspeed, transformers), and an accelerate script's ranks from launcher/script/site/sitecustomize.py.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
