"""Plan -> the files DeepSpeed's multinode runner reads: the hostfile and the environment file for remote ranks.

DeepSpeed's runner copies into every remote command only the caller's variables whose names start with PYTHON,
MLFLOW, MV2, UCX (and NCCL on CUDA), plus the `KEY=VALUE` lines of the file named by `DS_ENV_FILE`. The launcher
points DS_ENV_FILE at `deepspeed_env` in the run dir and writes there exactly the rank environment it rendered:
nothing inherited, so no secret can land in it.
"""
from __future__ import annotations

import re

from launcher.errors import LauncherError
from launcher.plan.types import Plan
from launcher.secrets import is_secret

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
UNSAFE_VALUE = re.compile(r'["`$\\\n\r]')  # DeepSpeed pastes values into a remote shell line in double quotes


def render_hostfile(plan: Plan) -> str:
    """DeepSpeed's format, hosts in rank order: the file the runner is given, whatever the user's file looked like."""
    lines = [f"# Rendered by launcher for run {plan.run_name}: {plan.num_hosts} hosts x {plan.procs_per_host} slots"]
    lines += [f"{host} slots={plan.procs_per_host}" for host in plan.hosts]
    return "\n".join(lines) + "\n"


def render_deepspeed_env(env: dict[str, str]) -> str:
    """`KEY=VALUE` lines for DS_ENV_FILE. Refuses secrets and values the runner could not pass through a shell."""
    lines = []
    for key, value in sorted(env.items()):
        if not ENV_NAME.match(key):
            raise LauncherError(f"topo.env.{key}", value, "use a shell variable name (letters, digits, _)")
        if is_secret(key):
            raise LauncherError(f"topo.env.{key}", "<hidden>", "log in on each host instead (wandb login, hf auth "
                                "login) or export it there", problem="secrets are never written into the run dir")
        if UNSAFE_VALUE.search(value):
            raise LauncherError(f"topo.env.{key}", value, "remove quotes, $, backticks, backslashes and newlines",
                                problem="DeepSpeed passes each value to the remote shell inside double quotes")
        lines.append(f"{key}={value}")
    return "".join(line + "\n" for line in lines)  # no blank line: the runner splits every line on "="
