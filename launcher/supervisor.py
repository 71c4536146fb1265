"""A thin supervisor around the engine's launcher: restart a failed job from the latest complete checkpoint with a
back-off (`run.max_restarts`), report a user error from the ranks as one, and turn a preemption into exit code 75.

It restarts the same command; resuming is the worker's job (it finds the newest complete checkpoint).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from launcher import spawn
from launcher.checkpoint import latest_complete
from launcher.render.launch import LaunchSpec
from launcher.train.signals import PREEMPTED_EXIT_CODE

USER_ERROR_FILE = "user_error.json"  # written by a rank that hit a user-facing failure (rank N>0: user_error.rankN.json)
USER_ERROR_GLOB = "user_error*.json"
MAX_BACKOFF_S = 300.0


def backoff(attempt: int, base_s: float) -> float:
    return min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


def run_supervised(spec: LaunchSpec, environ: dict[str, str], run_dir: Path, max_restarts: int, backoff_s: float,
                   say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    ckpt_root = run_dir / "checkpoints"
    code = 0
    for attempt in range(max_restarts + 1):
        for stale in run_dir.glob(USER_ERROR_GLOB):
            stale.unlink()
        env = {**environ, "LAUNCHER_RESTART": str(attempt)}
        before = latest_complete(ckpt_root, warn=lambda _m: None)
        code, signals = spawn.run(spec, env)
        # the first failure in time is the cause (a user script's other ranks fail after it); then the lowest rank
        errors = sorted((json.loads(p.read_text()) for p in run_dir.glob(USER_ERROR_GLOB)),
                        key=lambda e: (e.get("time", 0.0), e["rank"]))
        if errors:
            say(errors[0]["paragraph"])
            if not errors[0].get("restartable"):
                return 2
            code = code or 1
        if signals:
            return _after_signal(code, signals, ckpt_root, before.global_step if before else 0, say)
        if code == 0:
            return 0
        if attempt < max_restarts:
            delay = backoff(attempt + 1, backoff_s)
            latest = latest_complete(ckpt_root, warn=lambda _m: None)
            where = f"global step {latest.global_step}" if latest else "the start (no complete checkpoint yet)"
            say(f"restart {attempt + 1}/{max_restarts} in {delay:.0f} s: the job exited with code {code}; "
                f"it resumes from {where}")
            time.sleep(delay)
    if max_restarts:
        say(f"giving up after {max_restarts} restart(s): the job exited with code {code}")
    return code


def _after_signal(code: int, signals: list[int], ckpt_root: Path, step_before: int,
                  say: Callable[[str], None]) -> int:
    """75 when the job stopped with a complete checkpoint to resume from: it exited cleanly, or it completed a new
    one during this attempt (DeepSpeed's multi-host runner exits 1 after any stop, however well the ranks saved)."""
    latest = latest_complete(ckpt_root, warn=lambda _m: None)
    if latest is not None and (code == 0 or latest.global_step > step_before):
        say(f"stopped on signal {signals[0]}: saved at global step {latest.global_step} ({latest.path}); rerun the "
            f"same command to resume (exit code {PREEMPTED_EXIT_CODE})")
        return PREEMPTED_EXIT_CODE
    say(f"stopped on signal {signals[-1]} before a checkpoint was completed (exit code {code})")
    return 128 + signals[-1]
