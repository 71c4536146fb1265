"""LaunchSpec -> launch.sh: the exact command of a run, so rerunning the file reproduces it."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchSpec:
    """What every backend returns: one command, the variables it adds, and where it runs."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    signal_to: str = "ranks"  # "ranks": local leaf processes; "launcher": the engine's runner fans out (multi-host)


def render_launch_sh(spec: LaunchSpec, run_name: str) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# Rendered by launcher for run {run_name}. Rerun this file to reproduce the run (it resumes from the",
        "# latest complete checkpoint in the run dir, as the launcher does).",
        "set -euo pipefail",
        f"cd {shlex.quote(spec.cwd)}",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.env.items())]
    lines.append("exec " + " \\\n  ".join(shlex.quote(a) for a in spec.argv))
    return "\n".join(lines) + "\n"
