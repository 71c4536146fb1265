"""Shared fixtures: a place for runs, and a helper that runs the launcher as a user would (a real subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def launcher_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAUNCHER_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_launcher(*overrides: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`python -m launcher <overrides>` in a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", *overrides],
        cwd=cwd or REPO, env=env or launcher_env(), capture_output=True, text=True, timeout=timeout,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
