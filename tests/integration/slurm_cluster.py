"""A real, private Slurm on this machine: munged + slurmctld + two slurmd node names, all under one temp dir.

Everything (munge socket and key, ports, state, spool, logs) is private to the instance, so it neither needs nor
touches a system Slurm, and `stop()` ends exactly the daemons it started. Needs root and the Debian packages
slurmctld slurmd slurm-client munge (see ENGINE_NOTES.md, "A real Slurm on one machine").
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel")
CPUS_PER_NODE = 2


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def slurm_conf(root: Path, ports: list[int], nodes: int) -> str:
    """ENGINE_NOTES' measured configuration, with every path and port private to `root`."""
    lines = [
        "ClusterName=launchertest", "SlurmctldHost=localhost", f"SlurmctldPort={ports[0]}", "SlurmUser=root",
        f"AuthInfo=socket={root}/munge.sock,cred_expire=5", "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_interval=1", "ReturnToService=2", "MailProg=/bin/true",
        "KillWait=10", "MinJobAge=600", "InactiveLimit=0", "SlurmdTimeout=60",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd-%n.log",
    ]
    for i in range(1, nodes + 1):
        lines.append(f"NodeName=node{i} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[i]} "
                     f"CPUs={CPUS_PER_NODE} Sockets=1 CoresPerSocket={CPUS_PER_NODE} ThreadsPerCore=1 RealMemory=2000")
    lines.append(f"PartitionName=debug Nodes=node[1-{nodes}] Default=YES State=UP MaxTime=INFINITE")
    return "\n".join(lines) + "\n"


class SlurmCluster:
    def __init__(self, root: Path, nodes: int = 2) -> None:
        self.root = root
        self.nodes = nodes
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
            del self.env[var]  # a test run inside someone's allocation must not look like one

    def start(self) -> None:
        root = self.root
        for d in ("state", "spool"):
            (root / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mungekey", "--create", f"--keyfile={root}/munge.key"], check=True, capture_output=True)
        os.chmod(root / "munge.key", 0o600)
        self._daemon(["munged", "-F", "-f", f"--socket={root}/munge.sock", f"--key-file={root}/munge.key",
                      f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed"])
        self.wait_for(lambda: (root / "munge.sock").exists(), 30, "munged to listen")
        self.conf.write_text(slurm_conf(root, free_ports(self.nodes + 1), self.nodes))
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for i in range(1, self.nodes + 1):
            self._daemon(["slurmd", "-D", "-N", f"node{i}", "-f", str(self.conf)])
        self.wait_for(self._nodes_idle, 90, "both slurmd nodes to be idle")

    def _daemon(self, argv: list[str]) -> None:
        log = open(self.root / f"{Path(argv[0]).name}-{len(self.procs)}.out", "wb")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        return out.count("idle") == self.nodes

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (no accounting here, so no sacct)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id, check=False).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def stop(self) -> None:
        """Cancel jobs (their steps outlive slurmd otherwise), then end the daemons this instance started."""
        try:
            self.run("scancel", "--user=root", check=False, timeout=30)
            self.wait_for(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 60, "jobs to end")
        except (OSError, subprocess.SubprocessError, TimeoutError):
            pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
