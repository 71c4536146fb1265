"""Plan -> job.sbatch: one Slurm task per node, each running DeepSpeed's per-node launcher for that node's ranks.

The same file is the batch script (sbatch), the per-node step (`--step`, started by srun) and the way to run inside
an allocation one already holds (`--in-allocation`). Preemption: Slurm sends SIGUSR1 to the batch shell before the
time limit (`--signal=B:USR1@N`, or `scancel --batch --signal=USR1`); the shell passes it to srun, srun to every
process of the step; DeepSpeed's launcher ignores it and the ranks save at the next step boundary and exit; the
shell then requeues the job, which resumes from the latest complete checkpoint.
"""
from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.plan.placement import DEFAULT_MASTER_PORT
from launcher.plan.types import Plan, SlurmConfig
from launcher.secrets import is_secret
from launcher.render.launch import RankProgram, worker_program



@dataclass(frozen=True)
class AllocationCheck:
    """Preflight's all-reduce, run as the first step of every (re)start: the nodes are known only then."""

    timeout_s: int
    link: str = ""
    expects_rdma: bool = False
NODE_ADDR = "$(scontrol show node \"$head_node\" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"


def world_info(plan: Plan) -> str:
    """deepspeed.launcher.launch's --world_info (runner.encode_world_info): node -> local slots, base64 JSON. Only
    the count and order of nodes matter to it, so node names are placeholders and --node_rank is $SLURM_NODEID."""
    info = {f"node{i}": list(range(plan.procs_per_host)) for i in range(plan.num_hosts)}
    return base64.urlsafe_b64encode(json.dumps(info).encode()).decode()


def sbatch_options(plan: Plan, slurm: SlurmConfig, cwd: str) -> list[str]:
    opts = [f"--job-name={plan.run_name}", f"--nodes={plan.num_hosts}", "--ntasks-per-node=1"]
    if plan.accelerator == "cuda":
        opts.append(f"--gpus-per-node={plan.procs_per_host}")
    if slurm.exclusive:
        opts.append("--exclusive")
    for name in ("partition", "account", "time"):
        if getattr(slurm, name):
            opts.append(f"--{name}={getattr(slurm, name)}")
    opts += [f"--chdir={cwd}", f"--output={plan.run_dir}/logs/slurm-%j.out", "--open-mode=append"]
    opts.append("--requeue" if slurm.requeue else "--no-requeue")
    if slurm.signal_before_s:
        opts.append(f"--signal=B:USR1@{slurm.signal_before_s}")
    return opts + [str(line) for line in slurm.extra]


def render_sbatch(plan: Plan, slurm: SlurmConfig, python: str, cwd: str, rank_env: dict[str, str],
                  master_addr: str = "", master_port: int = 0, check: AllocationCheck | None = None,
                  program: RankProgram | None = None) -> str:
    secrets = sorted(k for k in rank_env if is_secret(k))
    if secrets:
        raise LauncherError(f"topo.env.{secrets[0]}", "<hidden>", "export it on the cluster (or log in there: wandb "
                            "login, hf auth login)", problem="secrets are never written into job.sbatch")
    q = shlex.quote
    run_dir, nodes, port = q(plan.run_dir), plan.num_hosts, master_port or DEFAULT_MASTER_PORT
    script = f"{plan.run_dir}/job.sbatch"
    launch = (f"{q(python)} -u -m deepspeed.launcher.launch --world_info={world_info(plan)} "
              f'--node_rank="$SLURM_NODEID" --master_addr="$LAUNCHER_MASTER_ADDR" --master_port={port} '
              "--module --no_local_rank")
    lines = [
        "#!/bin/bash",
        f"# Rendered by launcher for run {plan.run_name}: submit with `sbatch {script}` (the launcher does), or run",
        f"# `bash {script} --in-allocation` inside an allocation. Each (re)start resumes from the latest checkpoint.",
        *(f"#SBATCH {o}" for o in sbatch_options(plan, slurm, cwd)),
        "set -uo pipefail",
        f"cd {q(cwd)}",
        *(f"export {k}={q(v)}" for k, v in sorted(rank_env.items())),
        f"run_dir={run_dir}",
        "",
        'if [ "${1:-}" = "--step" ]; then',
        "  # One task per node. DeepSpeed's launcher ignores SIGUSR1 (inherited), each rank catches it and saves.",
        "  trap '' USR1",
        f"  exec {_step_command(launch, python, program or worker_program(plan.run_dir), port)}",
        "fi",
        *(_preflight_step(launch, plan) if check else ()),
        "",
        f'if [ "${{SLURM_JOB_NUM_NODES:-0}}" -lt {nodes} ]; then',
        f'  echo "launcher: this allocation has ${{SLURM_JOB_NUM_NODES:-no}} node(s); the plan needs {nodes}" >&2',
        "  exit 2",
        "fi",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export LAUNCHER_MASTER_ADDR={q(master_addr) if master_addr else NODE_ADDR}",
        'echo "launcher: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST,'
        f' master $LAUNCHER_MASTER_ADDR:{port}"',
        *(_preflight_call(python, plan, script, check) if check else ()),
        "preempted=0",
        'if [ "${1:-}" = "--in-allocation" ]; then',
        "  trap 'preempted=1' USR1  # srun itself got the signal and passes it on",
        "else",
        "  trap 'preempted=1; [ -n \"${step:-}\" ] && kill -USR1 \"$step\" 2>/dev/null' USR1  # Slurm signals this shell only",
        "fi",
        f'srun --nodes={nodes} --ntasks-per-node=1 --cpus-per-task="${{SLURM_CPUS_ON_NODE:-1}}" --kill-on-bad-exit=1 \\',
        f"  bash {q(script)} --step &",
        "step=$!",
        'rc=0; wait "$step" || rc=$?',
        'while kill -0 "$step" 2>/dev/null; do rc=0; wait "$step" || rc=$?; done  # a trap interrupts wait',
        *(_complete_check(plan) if program is None or program.builtin else ()),
    ]
    if slurm.requeue:
        lines += [
            'if { [ "$preempted" = 1 ] || [ "$rc" = 75 ]; } && [ "${1:-}" != "--in-allocation" ]; then',
            '  echo "launcher: stopped on request; requeueing job $SLURM_JOB_ID to resume from its newest complete checkpoint"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "fi",
        ]
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"


def _step_command(launch: str, python: str, program: RankProgram, port: int) -> str:
    """This node's launcher: DeepSpeed's per-node launcher, or for an accelerate script `accelerate launch`."""
    q = shlex.quote
    args = " ".join(q(a) for a in program.args)
    if not program.accelerate_config:
        return f"{launch} {program.module} {args}"
    return (f"{q(python)} -u -m accelerate.commands.launch --config_file {q(program.accelerate_config)} "
            f'--machine_rank="$SLURM_NODEID" --main_process_ip="$LAUNCHER_MASTER_ADDR" --main_process_port={port} '
            f"-m {program.module} {args}")


def _complete_check(plan: Plan) -> list[str]:
    """The built-in job is done when `latest` names its last step; a user script's last step is its own business."""
    return [
        f'if [ "$(cat "$run_dir/checkpoints/latest" 2>/dev/null)" = "global_step{plan.max_steps}" ]; then',
        f'  echo "launcher: run complete at global step {plan.max_steps}"',
        "  exit 0",
        "fi",
    ]


def _preflight_step(launch: str, plan: Plan) -> list[str]:
    return [
        'if [ "${1:-}" = "--preflight-step" ]; then',
        f"  exec {launch} launcher.preflight.collective {plan.accelerator}",
        "fi",
    ]


def _preflight_call(python: str, plan: Plan, script: str, check: AllocationCheck) -> list[str]:
    """launcher.preflight.allocation srun's the step above on every node, judges it and exits 2 when it fails."""
    q = shlex.quote
    args = [f"--nodes={plan.num_hosts}", f"--procs-per-node={plan.procs_per_host}", f"--timeout={check.timeout_s}"]
    args += [f"--link={check.link}"] if check.link else []
    args += ["--expects-rdma"] if check.expects_rdma else []
    return [f"{q(python)} -m launcher.preflight.allocation {q(plan.run_dir)} {q(script)} {' '.join(args)} || exit 2"]
