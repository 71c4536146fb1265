"""One host, N processes, through torchrun (or DeepSpeed's launcher): the engine spawns and restarts ranks."""
from __future__ import annotations

from launcher.plan.placement import DEFAULT_MASTER_PORT
from launcher.plan.types import Plan
from launcher.render.launch import LaunchSpec, RankProgram, accelerate_argv, worker_program


def torchrun_argv(plan: Plan, python: str, master_port: int, program: RankProgram | None = None) -> tuple[str, ...]:
    """torchrun never restarts by itself: launcher.launch.supervisor does (run.max_restarts), with a back-off and a log line."""
    program = program or worker_program(plan.run_dir)
    return (
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={plan.procs_per_host}",
        *(("--master-addr=127.0.0.1", f"--master-port={master_port}") if master_port else ("--standalone",)),
        "--max-restarts=0",
        f"--log-dir={plan.run_dir}/logs/torchrun",
        "-m",
        program.module,
        *program.args,
    )


def deepspeed_argv(plan: Plan, python: str, master_port: int, program: RankProgram | None = None) -> tuple[str, ...]:
    program = program or worker_program(plan.run_dir)
    return (
        python,
        "-m",
        "deepspeed.launcher.runner",
        f"--num_gpus={plan.procs_per_host}",
        f"--master_port={master_port or DEFAULT_MASTER_PORT}",
        "--no_local_rank",
        "--module",
        program.module,
        *program.args,
    )


def local_spec(
    plan: Plan, python: str, master_port: int, env: dict[str, str], cwd: str, launcher: str,
    program: RankProgram | None = None,
) -> LaunchSpec:
    """An accelerate script is started by `accelerate launch` (torchrun inside), whatever run.launcher says."""
    if program is not None and program.accelerate_config:
        argv = accelerate_argv(python, program)
    elif launcher == "deepspeed":
        argv = deepspeed_argv(plan, python, master_port, program)
    else:
        argv = torchrun_argv(plan, python, master_port, program)
    return LaunchSpec(argv=argv, env=env, cwd=cwd)
