"""One launch: the Plan -> the lease -> artifacts in the run dir -> preflight -> the engine's command, spawned (or
printed by a dry run). The user's config is not read here: what a launch needs is in plan.launch."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from launcher import lease, processes, report
from launcher.launch import lease_holder
from launcher.config import services
from launcher.plan.auto import memory_error
from launcher.backends.hostfile import hostfile_spec
from launcher.backends.hostfile import check_hosts_memory
from launcher.backends.hostfile import preflight as hostfile_preflight
from launcher.backends.local import local_spec
from launcher.backends.slurm import preflight as slurm_preflight
from launcher.backends.slurm import slurm_spec
from launcher.checkpoint.store import Checkpoint, latest_complete, latest_complete_any, resolve_resume
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.types import Plan
from launcher.preflight import CPU_TIMEOUT_S, GPU_TIMEOUT_S, TIMEOUT_VAR, mode_for, run_before_launch
from launcher.render.deepspeed import render_ds_config, universal_ds_config
from launcher.render.env import rank_env
from launcher.secrets import mask_override
from launcher.render.launch import LaunchSpec, render_launch_sh
from launcher.render.slurm import AllocationCheck
from launcher.script.launch import ScriptLaunch
from launcher.rundir import (CHECKPOINTS, DS_CONFIG_FILE, DS_UNIVERSAL_FILE, LOGS, METRICS_FILE,
                             OOM_REPLAN_EXIT_CODE, PLAN_FILE, dry_run_dir, write_artifacts)
from launcher.launch.replan import replanned
from launcher.launch.summary import plan_table, print_summary


def launch_plan(plan: Plan, hw: Hardware, resolved_yaml: str, script: ScriptLaunch | None, dry_run: bool, cwd: str,
                environ: dict[str, str]) -> int:
    """Every check first (plan, hosts, services), then the lease on the run dir, then the first write into it. Takes
    the Plan only: what the launch needs from the config was resolved into plan.launch."""
    name, run_dir = plan.run_name, Path(plan.run_dir)
    if not dry_run:
        check_host_fits(plan, hw)
        check_memory_fits(plan, plan.launch.check_memory)
        services.check_hub(plan.model.path, plan.model.tokenizer, environ)
        plan = wandb_decided(plan, environ)
    spec, files = _launch_spec(plan, environ, cwd, script, live=not dry_run)
    find = latest_complete_any if script else latest_complete  # a script may save Trainer checkpoint-N dirs
    resume = (find(run_dir / CHECKPOINTS) if plan.resume == "auto" else None if plan.resume == "never" or script
              else resolve_resume(run_dir / CHECKPOINTS, plan.resume))
    print_summary(plan, spec, resume, script.script if script else None)
    if plan.auto_reason and not dry_run:  # a dry run prints it in its table
        print(plan.auto_reason)
    if resume is not None and resume.global_step >= plan.max_steps and not dry_run and not script:
        print(f"run {name} is already complete at global step {resume.global_step} ({resume.path}); nothing to do. "
              f"Use run.name=<new> for a new run or train.max_steps=<more> to continue it.")
        return 0
    if dry_run:
        return dry_run_to_disk(plan, resolved_yaml, spec, files, environ, script)
    submits = plan.backend == "slurm" and "sbatch" in spec.argv  # returns at once: the job trains later
    with holding(run_dir, plan, submits) as held:
        (run_dir / LOGS).mkdir(parents=True, exist_ok=True)
        _write(run_dir, resolved_yaml, plan, spec, {**files, **universal_config(plan, resume, script)}, script)
        held.keep = True  # from here the run dir holds what the user reads: preflight.json, then the run
        run_before_launch(plan, environ)
        return _launch(plan, spec, environ, held.lease, submits, 0 if script else plan.max_steps)


def wandb_decided(plan: Plan, environ: dict[str, str]) -> Plan:
    """A run that would log online asks the W&B server first (seconds); if it cannot work online, it runs offline
    and the plan says why, so the ranks never sit in wandb's 90-second start and fail."""
    if plan.wandb_mode != "online":
        return plan
    why = services.wandb_offline_reason(environ, plan.wandb_entity)
    if not why:
        return plan
    print(f"wandb: offline for this run: {why}; upload it later with `wandb sync {plan.run_dir}/wandb/offline-run-*`")
    return dataclasses.replace(plan, wandb_mode="offline", wandb_note=why)


def _launch(plan: Plan, spec: LaunchSpec, environ: dict[str, str], held: lease_holder.Lease, submits: bool,
            final_step: int) -> int:
    """Start the job under the supervisor; the lease carries Ctrl-C to ranks on every host. `final_step`: the global
    step that completes the run (0 for a user's script)."""
    from launcher.launch.spawn import StopControl
    from launcher.launch.supervisor import run_supervised, submit

    name, run_dir = plan.run_name, Path(plan.run_dir)
    if submits:
        code, job_id = submit(spec, environ, run_dir)
        if code == 0 and job_id:
            held.hand_to_slurm(job_id)
            print(f"run {name} submitted to Slurm as job {job_id}; its log and checkpoints go to {run_dir}")
        return code
    preload = report.preload()
    _say_start_age()
    control = StopControl(request=lambda: held.set_state("stop"), abort=lambda: held.set_state("abort"))
    try:
        code = run_supervised(spec, environ, run_dir, plan.launch.max_restarts, plan.launch.restart_backoff_s,
                              control=control, final_step=final_step)
        while code == OOM_REPLAN_EXIT_CODE:
            plan = replanned(plan)
            if plan is None:
                return 2
            code = run_supervised(spec, environ, run_dir, plan.launch.max_restarts, plan.launch.restart_backoff_s,
                                  control=control, final_step=final_step)
    finally:  # also on an error or Ctrl-C: an import cut off by the interpreter's exit can crash it
        preload.join()
    _plots(run_dir)
    print(f"run {name} finished with exit code {code}; run dir {run_dir}", file=sys.stderr if code else sys.stdout)
    return code


def _say_start_age() -> None:
    """How long this process took before the ranks start (config, plan, rendering, checks): with rank 0's own "ready
    in" line it splits a slow start between the launcher and the ranks (bench/perf.py reads both)."""
    age = processes.age_s()
    if age is not None:
        print(start_age_line(age), flush=True)


def start_age_line(age_s: float) -> str:
    return f"ranks starting {age_s:.1f} s after `python -m launcher` started (config, plan, checks)"


class _Held:
    """What `holding` yields: the lease, and whether the run dir is to be kept (a launch refused before its preflight
    leaves a fresh run dir uncreated; a failed preflight's report stays)."""

    def __init__(self, held: lease_holder.Lease) -> None:
        self.lease, self.keep = held, False


@contextmanager
def holding(run_dir: Path, plan: Plan, submits: bool) -> Iterator[_Held]:
    """The run dir's lease for the life of the job (launcher.lease): a second launch on it is refused."""
    fresh = not run_dir.exists()
    holder = lease.this_process("python -m launcher " + shlex.join(mask_override(a) for a in sys.argv[1:]),
                                hosts=tuple(h.rpartition("@")[2] for h in plan.hosts),
                                gone_after_s=plan.launch.lease_timeout_s)
    if submits:
        holder = dataclasses.replace(holder, slurm_job_id=lease.SUBMITTING)
    try:
        taken = lease_holder.acquire(run_dir, holder, say=lambda m: print(m, file=sys.stderr, flush=True))
    except lease_holder.LeaseTaken as err:
        raise _taken_error(run_dir, plan, err) from None
    held = _Held(taken)
    taken.lost = lambda why: print(f"warning: {why}; this launch no longer holds the run dir", file=sys.stderr)
    taken.start_renewing()
    try:
        yield held
    except BaseException:
        taken.release()
        if fresh and not held.keep:
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused launch leaves no trace
        raise
    taken.release()  # a submitted batch job holds it by its job id now (hand_to_slurm); then this does nothing


def _taken_error(run_dir: Path, plan: Plan, err: lease_holder.LeaseTaken) -> LauncherError:
    who = err.holder
    stop = f"Stop it ({who.how_to_stop()}) or wait for it to finish, " if who else "Wait for it to finish, "
    return LauncherError("run.name", plan.run_name, f"{stop}or choose another run.name=... (or run.dir=...) for a new "
                         "run", problem=f"another job is using the run dir {run_dir}: {err.why}")


def dry_run_to_disk(plan: Plan, resolved_yaml: str, spec: LaunchSpec, files: dict[str, str],
                    environ: dict[str, str], script: ScriptLaunch | None) -> int:
    """Render everything, launch nothing. Into the run dir when it holds no run yet; otherwise into its dry_run/
    folder, so that a running or finished run's files are never touched."""
    out = dry_run_dir(Path(plan.run_dir))
    _write(out, resolved_yaml, plan, spec, files, script)
    dry_run_report(plan, environ)
    if script and plan.backend != "local":  # the local command is the one above
        from launcher.render.launch import node_commands

        print("\n".join(["per node:", *node_commands(plan, script.program, sys.executable, plan.launch.master_addr,
                                                      plan.launch.master_port)]))
    print(f"dry run: artifacts written to {out}; nothing launched")
    return 0


def _plots(run_dir: Path) -> None:
    """loss.png and throughput.png at the end of every run that trained (python -m launcher.report redraws them)."""
    if (run_dir / METRICS_FILE).exists():
        try:
            report.plot(run_dir, report.read_metrics(run_dir))
        except KeyboardInterrupt:
            print(f"plots skipped (stopped); python -m launcher.report {run_dir} draws them", file=sys.stderr)


def check_host_fits(plan: Plan, hw: Hardware) -> None:
    """A local plan cannot use more GPUs than this host has."""
    if plan.backend != "local" or plan.accelerator != "cuda":
        return
    if plan.procs_per_host > hw.gpu_count:
        raise LauncherError("topo.gpus_per_host", plan.procs_per_host, _fewer_gpus_hint(plan, hw),
                            problem=f"the plan needs {plan.procs_per_host} GPUs on this host, which has {hw.gpu_count}")


def _fewer_gpus_hint(plan: Plan, hw: Hardware) -> str:
    if hw.gpu_count:
        return f"use topo.gpus_per_host={hw.gpu_count} (or +topo=local to use what is here)"
    cpu = ("this machine has no GPU, so it trains on its CPU: choose the number of processes with "
           "topo.cpu_procs_per_host=N (default 2) instead of topo.gpus_per_host")
    if plan.topo_name != "local":
        cpu = f"{cpu}, on +topo=local"
    return f"{cpu}; run.dry_run=true renders the GPU job without launching it"


def check_memory_fits(plan: Plan, check: bool) -> None:
    """A plan whose memory estimate does not fit stops here, saying by how much and what would fit."""
    if check and not plan.memory.fits:
        raise memory_error(plan)


def dry_run_report(plan: Plan, environ: dict[str, str]) -> None:
    """The plan table, what a launch would refuse, and this host's static preflight (no ssh, no processes, nothing
    written: preflight.json is the launch's)."""
    print("\n".join(plan_table(plan)))
    if not plan.memory.fits:
        print(f"a launch would stop here: {memory_error(plan).paragraph()}")
    if plan.launch.preflight == "skip":
        return
    from launcher.preflight import run_checks
    from launcher.preflight.report import print_table, summary_line

    rows, _ = run_checks(plan, environ, "quick")
    if any(r.status != "pass" for r in rows):
        print_table(rows, only_problems=True)
    print(summary_line(rows, "quick, this host"))


def _launch_spec(plan: Plan, environ: dict[str, str], cwd: str, script: ScriptLaunch | None, live: bool
                 ) -> tuple[LaunchSpec, dict[str, str]]:
    """The backend's command and the files its engine reads (hostfile + deepspeed_env, or job.sbatch). Multi-host
    backends first check the hosts or the cluster (not on a dry run). Nothing is written here."""
    env = rank_env(plan, environ)
    launch = plan.launch
    program = script.program if script else None
    if plan.backend == "hostfile":
        spec, files = hostfile_spec(plan, sys.executable, launch.master_addr, launch.master_port, env, cwd, environ,
                                    program)
        if live:
            source = ("hostfile", launch.hostfile) if launch.hostfile else ("topo.hosts", list(plan.hosts))
            ssh_args = shlex.split(environ.get("PDSH_SSH_ARGS_APPEND", ""))  # the options pdsh will use
            facts = hostfile_preflight(plan, sys.executable, cwd, env, launch.mtu, ssh_args, source,
                                       environ.get("PATH", ""))
            if launch.check_memory:
                check_hosts_memory(plan, facts, source)
    elif plan.backend == "slurm":
        spec, files = slurm_spec(plan, launch.slurm, sys.executable, cwd, env, launch.master_addr, launch.master_port,
                                 environ, allocation_check(plan, environ), program)
        if live:
            slurm_preflight(plan, launch.slurm, files["job.sbatch"], environ)
    else:
        return local_spec(plan, sys.executable, launch.master_port, env, cwd, launch.engine, program), {}
    return spec, files


def allocation_check(plan: Plan, environ: dict[str, str]) -> AllocationCheck | None:
    """A full preflight on Slurm ends inside the allocation: job.sbatch runs the all-reduce across its nodes."""
    if mode_for(plan.launch.preflight, plan.num_hosts) != "full":
        return None
    default = GPU_TIMEOUT_S if plan.accelerator == "cuda" else CPU_TIMEOUT_S
    return AllocationCheck(int(float(environ.get(TIMEOUT_VAR) or default)), plan.launch.link, plan.launch.expects_rdma)


def universal_config(plan: Plan, resume: Checkpoint | None, script: ScriptLaunch | None) -> dict[str, str]:
    """ds_config.universal.json when the checkpoint this launch resumes from was saved with another layout (world
    size, ZeRO stage): the rank converts it and loads it with this file, so it runs a config that is on disk."""
    from launcher.checkpoint.universal import needs_conversion

    if script or resume is None or not needs_conversion(resume.meta, plan):
        return {}
    ds = universal_ds_config(render_ds_config(plan))
    return {DS_UNIVERSAL_FILE: json.dumps(ds, indent=2) + "\n"}


def _write(run_dir: Path, resolved_yaml: str, plan: Plan, spec: LaunchSpec, backend_files: dict[str, str],
           script: ScriptLaunch | None = None) -> None:
    ds = script.ds_config(render_ds_config(plan)) if script else render_ds_config(plan)
    files = {
        **backend_files,
        "resolved.yaml": resolved_yaml,
        PLAN_FILE: plan.to_json(),
        DS_CONFIG_FILE: json.dumps(ds, indent=2) + "\n",
        "launch.sh": render_launch_sh(spec, plan.run_name),
        **(script.files if script else {}),
    }
    moved = write_artifacts(run_dir, files, executable=("launch.sh", "job.sbatch"))
    if moved:
        print(f"note: {', '.join(moved)} changed since the last launch; the old versions are under {run_dir}/history/")
