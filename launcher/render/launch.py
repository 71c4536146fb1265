"""LaunchSpec -> launch.sh: the exact command of a run, so rerunning the file reproduces it."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from launcher.plan.placement import DEFAULT_MASTER_PORT

if TYPE_CHECKING:
    from launcher.plan.types import Plan


@dataclass(frozen=True)
class LaunchSpec:
    """What every backend returns: one command, the variables it adds, and where it runs."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    signal_to: str = "ranks"  # "ranks": local leaf processes; "launcher": the engine's runner fans out (multi-host)


WORKER_MODULE = "launcher.train.worker"


@dataclass(frozen=True)
class RankProgram:
    """What every rank runs, `python -m module *args`: the built-in worker or a user script's entry. With
    `accelerate_config`, one `accelerate launch` per node starts the ranks instead of the engine's per-node launcher."""

    module: str
    args: tuple[str, ...]
    accelerate_config: str = ""

    @property
    def builtin(self) -> bool:
        return self.module == WORKER_MODULE


def worker_program(run_dir: str) -> RankProgram:
    return RankProgram(WORKER_MODULE, (run_dir,))


def accelerate_argv(python: str, program: RankProgram, *node_args: str) -> tuple[str, ...]:
    """`accelerate launch --config_file FILE [per-node args] -m MODULE ARGS` with this python."""
    return (python, "-m", "accelerate.commands.launch", "--config_file", program.accelerate_config, *node_args,
            "-m", program.module, *program.args)


def render_launch_sh(spec: LaunchSpec, run_name: str) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# Rendered by launcher for run {run_name}. Rerun this file to reproduce the run (it resumes from the",
        "# latest complete checkpoint in the run dir, as the launcher does).",
        "set -euo pipefail",
        f"cd {shlex.quote(spec.cwd)}",
    ]
    lines += [_export(k, v) for k, v in sorted(spec.env.items())]
    lines.append("exec " + " \\\n  ".join(shlex.quote(a) for a in spec.argv))
    return "\n".join(lines) + "\n"


def _export(name: str, value: str) -> str:
    """A secret (topo.env.HF_TOKEN=...) is never written: the file asks for it from the environment instead."""
    from launcher.secrets import is_secret

    if is_secret(name):
        return f'export {name}="${{{name}:?set {name} in the environment (its value is not written here)}}"'
    return f"export {name}={shlex.quote(value)}"


def node_commands(plan: Plan, program: RankProgram, python: str, master_addr: str,
                  master_port: int) -> list[str]:
    """What starts on each node, one line per node (a dry run prints them; launch.sh holds the whole command)."""
    addr = master_addr or ("$LAUNCHER_MASTER_ADDR" if plan.backend == "slurm" else plan.hosts[0].rpartition("@")[2])
    port = master_port or DEFAULT_MASTER_PORT
    lines = []
    for i, host in enumerate(plan.hosts):
        if program.accelerate_config:
            node = accelerate_argv(python, program, "--machine_rank", str(i),
                                   *(("--main_process_ip", addr) if plan.num_hosts > 1 else ()))
        else:
            node = (python, "-u", "-m", "deepspeed.launcher.launch", f"--node_rank={i}", f"--master_addr={addr}",
                    f"--master_port={port}", "--module", "--no_local_rank", program.module, *program.args)
        where = f"node {i} (srun)" if plan.backend == "slurm" else host
        lines.append(f"{where}: {shlex.join(node)}")
    return lines
