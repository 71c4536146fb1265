"""Slurm: submit job.sbatch with sbatch (which prints the job id), or run it inside the allocation one is in.

Before submitting, the cluster is asked what would otherwise fail in the queue: is Slurm here, does the partition
have that many nodes, would the controller accept the job (`sbatch --test-only`: account, time, GPUs).
Secret-looking variables are left out of sbatch's environment: Slurm stores a batch job's environment on disk.
"""
from __future__ import annotations

import shutil
import subprocess

from launcher.errors import LauncherError
from launcher.plan.types import Plan, SlurmConfig
from launcher.secrets import is_secret
from launcher.render.launch import LaunchSpec, RankProgram
from launcher.render.slurm import AllocationCheck, render_sbatch

TIMEOUT_S = 60
NOT_INSTALLED = ("install the Slurm client commands (sbatch, srun, scontrol) on this host, or use another topology "
                 "(+topo=local, hostfile=FILE)")


def slurm_spec(plan: Plan, slurm: SlurmConfig, python: str, cwd: str, rank_env: dict[str, str], master_addr: str,
               master_port: int, environ: dict[str, str], check: AllocationCheck | None = None,
               program: RankProgram | None = None) -> tuple[LaunchSpec, dict[str, str]]:
    """sbatch job.sbatch; inside an allocation (SLURM_JOB_ID set) the script itself, which calls srun."""
    files = {"job.sbatch": render_sbatch(plan, slurm, python, cwd, rank_env, master_addr, master_port, check,
                                         program)}
    script = f"{plan.run_dir}/job.sbatch"
    if in_allocation(environ):
        return LaunchSpec(argv=("bash", script, "--in-allocation"), cwd=cwd, signal_to="launcher"), files
    hidden = sorted(k for k in environ if is_secret(k))
    unset = ("env", *(a for k in hidden for a in ("-u", k))) if hidden else ()
    return LaunchSpec(argv=(*unset, "sbatch", script), cwd=cwd, signal_to="launcher"), files


def in_allocation(environ: dict[str, str]) -> bool:
    return bool(environ.get("SLURM_JOB_ID"))


def preflight(plan: Plan, slurm: SlurmConfig, script: str, environ: dict[str, str]) -> None:
    """Fail before submitting anything the cluster would refuse or could never run."""
    path = environ.get("PATH", "")
    if in_allocation(environ):
        if not shutil.which("srun", path=path):
            raise LauncherError("topo.backend", "slurm", NOT_INSTALLED, problem="srun is not on PATH")
        have = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
        if plan.num_hosts > have:
            raise LauncherError("topo.nodes", plan.num_hosts, f"use topo.nodes={have}, or allocate more nodes "
                                f"(salloc -N {plan.num_hosts})",
                                problem=f"the allocation this runs in (job {environ['SLURM_JOB_ID']}) has {have} node(s)")
        return
    for tool in ("sbatch", "scontrol"):
        if not shutil.which(tool, path=path):
            raise LauncherError("topo.backend", "slurm", NOT_INSTALLED,
                                problem=f"{tool} is not on PATH: Slurm is not installed on this host")
    name, total = partition_size(slurm.partition, environ)
    if plan.num_hosts > total:
        raise LauncherError("topo.nodes", plan.num_hosts, f"use topo.nodes<={total}, or a larger partition "
                            "(topo.slurm.partition=NAME; `sinfo -s` lists them)",
                            problem=f"partition {name} has {total} node(s)")
    test = _run(["sbatch", "--test-only"], environ, stdin=script)
    if test.returncode != 0:
        raise LauncherError("topo.slurm", name, "fix the Slurm settings (topo.slurm.account, .time, .extra, "
                            "topo.gpus_per_host) to what this cluster allows",
                            problem=f"Slurm refuses the job: {_last_line(test)}")


def partition_size(partition: str, environ: dict[str, str]) -> tuple[str, int]:
    """(name, TotalNodes) of the named partition, or of the cluster's default one."""
    result = _run(["scontrol", "show", "partition", "--oneliner", *([partition] if partition else [])], environ)
    if result.returncode != 0:
        raise LauncherError("topo.slurm.partition", partition or "(default)", "name a partition `sinfo -s` lists, "
                            "and check that slurmctld answers (`scontrol ping`)", problem=_last_line(result))
    parts = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in result.stdout.splitlines()]
    parts = [p for p in parts if p.get("PartitionName")]
    chosen = [p for p in parts if p["PartitionName"] == partition] if partition else \
        [p for p in parts if p.get("Default") == "YES"]
    if not chosen:
        raise LauncherError("topo.slurm.partition", partition or "(default)", "name one: topo.slurm.partition="
                            f"{'|'.join(p['PartitionName'] for p in parts) or 'NAME'}",
                            problem="the cluster has no such partition" if partition else "the cluster has no default")
    return chosen[0]["PartitionName"], int(chosen[0].get("TotalNodes", "0"))


def _run(argv: list[str], environ: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, env=environ, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise LauncherError("topo.backend", "slurm", "check that slurmctld is up (`scontrol ping`)",
                            problem=f"`{' '.join(argv)}` did not answer within {TIMEOUT_S} s") from e


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"
