"""One launch: checked inputs -> Plan -> artifacts in the run dir -> the engine's command, spawned (or printed)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from launcher import inputs
from launcher.backends.hostfile import hostfile_spec
from launcher.backends.hostfile import preflight as hostfile_preflight
from launcher.backends.local import local_spec
from launcher.backends.slurm import preflight as slurm_preflight
from launcher.backends.slurm import slurm_spec
from launcher.checkpoint import latest_complete
from launcher.config import LauncherConfig
from launcher.errors import LauncherError
from launcher.hardware import Hardware, detect
from launcher.plan import Plan, resolve
from launcher.preflight import run_before_launch
from launcher.render.deepspeed import render_ds_config
from launcher.render.env import rank_env
from launcher.render.launch import LaunchSpec, render_launch_sh
from launcher.rundir import default_run_name, write_artifacts
from launcher.summary import print_summary


def plan_job(cfg: LauncherConfig, cwd: str, environ: dict[str, str]) -> tuple[LauncherConfig, Plan, Hardware]:
    """Checked inputs -> Plan, the same for a launch and for a standalone preflight."""
    import importlib.util

    hw = detect()
    cfg = inputs.check_model(cfg, cwd)
    cfg = inputs.check_tokenizer(cfg, cwd)
    cfg, num_rows = inputs.check_data(cfg, cwd)
    name = cfg.run.name or default_run_name(cfg.model.name, cfg.method.name, cfg.plan.name)
    run_dir = Path(inputs.absolute(cfg.run.dir or str(Path(cfg.run.output_dir) / name), cwd))
    wandb_env = (environ.get("WANDB_MODE", ""), bool(environ.get("WANDB_API_KEY")),
                 importlib.util.find_spec("wandb") is not None)
    plan = resolve(cfg, hw, run_dir=str(run_dir), run_name=name, num_samples=num_rows, wandb_env=wandb_env)
    return cfg, plan, hw


def run_job(cfg: LauncherConfig, composed: DictConfig, cwd: str, environ: dict[str, str]) -> int:
    cfg, plan, hw = plan_job(cfg, cwd, environ)
    name, run_dir = plan.run_name, Path(plan.run_dir)
    if not cfg.run.dry_run:
        check_host_fits(plan, hw)
    spec = _launch_spec(cfg, plan, hw, environ, cwd)
    resume = latest_complete(run_dir / "checkpoints") if cfg.run.resume == "auto" else None
    print_summary(plan, spec, resume)
    if resume is not None and resume.global_step >= plan.max_steps and not cfg.run.dry_run:
        print(f"run {name} is already complete at global step {resume.global_step} ({resume.path}); nothing to do. "
              f"Use run.name=<new> for a new run or train.max_steps=<more> to continue it.")
        return 0
    _write(run_dir, cfg, composed, plan, spec)
    if cfg.run.dry_run:
        print(f"dry run: artifacts written to {run_dir}; nothing launched")
        return 0
    run_before_launch(plan, cfg, environ)
    from launcher.supervisor import run_supervised

    code = run_supervised(spec, environ, run_dir, cfg.run.max_restarts, cfg.run.restart_backoff_s)
    _plots(run_dir)
    if plan.backend == "slurm" and "sbatch" in spec.argv and code == 0:
        print(f"run {name} submitted to Slurm (see the job id above); its log and checkpoints go to {run_dir}")
    else:
        print(f"run {name} finished with exit code {code}; run dir {run_dir}", file=sys.stderr if code else sys.stdout)
    return code


def _plots(run_dir: Path) -> None:
    """loss.png and throughput.png at the end of every run that trained (python -m launcher.report redraws them)."""
    if (run_dir / "metrics.jsonl").exists():
        from launcher import report

        report.plot(run_dir, report.read_metrics(run_dir))


def check_host_fits(plan: Plan, hw: Hardware) -> None:
    """A local plan cannot use more GPUs than this host has."""
    if plan.backend != "local" or plan.accelerator != "cuda":
        return
    if plan.procs_per_host > hw.gpu_count:
        raise LauncherError(
            "topo.gpus_per_host", plan.procs_per_host,
            f"use topo.gpus_per_host={hw.gpu_count} (or +topo=local to use what is here)" if hw.gpu_count
            else "use +topo=local to train on this machine's CPU, or run.dry_run=true to only render the job",
            problem=f"the plan needs {plan.procs_per_host} GPUs on this host, which has {hw.gpu_count}",
        )


def _launch_spec(cfg: LauncherConfig, plan: Plan, hw: Hardware, environ: dict[str, str], cwd: str) -> LaunchSpec:
    """The backend's command. Multi-host backends first check the hosts or the cluster (not on a dry run), then
    write the files their engine reads (hostfile + deepspeed_env, or job.sbatch) into the run dir."""
    env = rank_env(plan, environ, hw.cpu_count, plan.run_dir)
    env.update({k: str(v) for k, v in cfg.topo.env.items()})
    topo, live = cfg.topo, not cfg.run.dry_run
    if plan.backend == "hostfile":
        spec, files = hostfile_spec(plan, sys.executable, topo.master_addr, topo.master_port, env, cwd, environ)
        if live:
            source = ("hostfile", cfg.hostfile) if cfg.hostfile else ("topo.hosts", list(plan.hosts))
            ssh_args = shlex.split(environ.get("PDSH_SSH_ARGS_APPEND", ""))  # the options pdsh will use
            hostfile_preflight(plan, sys.executable, cwd, env, topo.mtu, ssh_args, source, environ.get("PATH", ""))
    elif plan.backend == "slurm":
        spec, files = slurm_spec(plan, topo.slurm, sys.executable, cwd, env, topo.master_addr, topo.master_port, environ)
        if live:
            slurm_preflight(plan, topo.slurm, files["job.sbatch"], environ)
    else:
        return local_spec(plan, sys.executable, topo.master_port, env, cwd, cfg.run.launcher)
    (Path(plan.run_dir) / "logs").mkdir(parents=True, exist_ok=True)
    write_artifacts(Path(plan.run_dir), files, executable=("job.sbatch",))
    return spec


def _write(run_dir: Path, cfg: LauncherConfig, composed: DictConfig, plan: Plan, spec: LaunchSpec) -> None:
    files = {
        "resolved.yaml": OmegaConf.to_yaml(composed),
        "plan.json": plan.to_json(),
        "ds_config.json": json.dumps(render_ds_config(plan), indent=2) + "\n",
        "launch.sh": render_launch_sh(spec, plan.run_name),
    }
    moved = write_artifacts(run_dir, files, executable=("launch.sh",))
    if moved:
        print(f"note: {', '.join(moved)} changed since the last launch; the old versions are under {run_dir}/history/")
