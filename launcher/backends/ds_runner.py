"""DeepSpeed's multinode runner (`deepspeed.launcher.runner`) with its stop narrowed to this run's ranks.

    python -m launcher.backends.ds_runner --launcher-run-dir=RUN_DIR <the arguments of deepspeed.launcher.runner>

On SIGINT or SIGTERM the runner stops a pdsh job with `pkill -f "<python> -u -m deepspeed.launcher.launch"` on every
host: every DeepSpeed launch there matches, other runs' and other users' included. Here the pattern also names the
run dir (every host sees it at the same path: the hostfile preflight checks that), so the stop ends this run's
per-host launchers (which pass SIGTERM on to their ranks, which save) and nothing else. The rest is DeepSpeed's runner
unchanged.
"""
from __future__ import annotations

import re
import shlex
import sys
from typing import Any

RUN_DIR_FLAG = "--launcher-run-dir="


def own_kill_command(kill_command: list[str], python: str, run_dir: str) -> list[str]:
    """The runner's pdsh kill command with its trailing `pkill -f PATTERN` words replaced by one naming run_dir. The
    first character goes in brackets so that the pattern does not match the command line that carries it."""
    own = re.escape(f"{python} -u -m deepspeed.launcher.launch") + ".* " + re.escape(run_dir) + "( |$)"
    at = next(i for i, word in enumerate(kill_command) if word.strip() == "pkill -f")
    return [*kill_command[:at], f"pkill -f {shlex.quote(f'[{own[0]}]{own[1:]}')}"]


def main(argv: list[str]) -> None:
    if not argv or not argv[0].startswith(RUN_DIR_FLAG):
        raise SystemExit(f"usage: python -m launcher.backends.ds_runner {RUN_DIR_FLAG}DIR <deepspeed runner args>")
    run_dir = argv[0].removeprefix(RUN_DIR_FLAG)
    from deepspeed.launcher import multinode_runner, runner

    original = multinode_runner.PDSHRunner.get_cmd

    def get_cmd(self: Any, environment: Any, active_resources: Any) -> tuple[list[str], list[str], Any]:
        cmd, kill, env = original(self, environment, active_resources)
        return cmd, own_kill_command(kill, sys.executable, run_dir), env

    multinode_runner.PDSHRunner.get_cmd = get_cmd
    runner.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
