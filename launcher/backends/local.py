"""One host, N processes, through torchrun (or DeepSpeed's launcher): the engine spawns and restarts ranks."""
from __future__ import annotations

from launcher.plan import Plan
from launcher.render.launch import LaunchSpec

WORKER = ("-m", "launcher.train.worker")


def torchrun_argv(plan: Plan, python: str, master_port: int) -> tuple[str, ...]:
    """torchrun never restarts by itself: launcher.supervisor does (run.max_restarts), with a back-off and a log line."""
    return (
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={plan.procs_per_host}",
        *(("--master-addr=127.0.0.1", f"--master-port={master_port}") if master_port else ("--standalone",)),
        "--max-restarts=0",
        f"--log-dir={plan.run_dir}/logs/torchrun",
        *WORKER,
        plan.run_dir,
    )


def deepspeed_argv(plan: Plan, python: str, master_port: int) -> tuple[str, ...]:
    return (
        python,
        "-m",
        "deepspeed.launcher.runner",
        f"--num_gpus={plan.procs_per_host}",
        f"--master_port={master_port or 29500}",
        "--no_local_rank",
        "--module",
        "launcher.train.worker",
        plan.run_dir,
    )


def local_spec(
    plan: Plan, python: str, master_port: int, env: dict[str, str], cwd: str, launcher: str
) -> LaunchSpec:
    if launcher == "deepspeed":
        argv = deepspeed_argv(plan, python, master_port)
    else:
        argv = torchrun_argv(plan, python, master_port)
    return LaunchSpec(argv=argv, env=env, cwd=cwd)
