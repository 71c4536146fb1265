"""A thin supervisor around the engine's launcher: restart a failed job from the latest complete checkpoint with a
back-off (`run.max_restarts`), report a user error from the ranks as one, and turn a preemption into exit code 75.

It restarts the same command; resuming is the worker's job (it finds the newest complete checkpoint). The engine's
stderr goes to ENGINE_LOG in the run dir; when the job fails, the console gets the failing rank's error and the log
file that holds it, not the tracebacks of every process.
"""
from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from launcher.launch import spawn
from launcher.checkpoint.store import latest_complete, latest_complete_any
from launcher.render.launch import LaunchSpec
from launcher.rundir import (CHECKPOINTS, ENGINE_LOG, EXCEPTION_LINE, LOGS, OOM_REPLAN_EXIT_CODE, PREEMPTED_EXIT_CODE,
                             USER_ERROR_GLOB, by_cause, is_consequence)

MAX_BACKOFF_S = 300.0
SUBMITTED = re.compile(r"Submitted batch job (\d+)")


def submit(spec: LaunchSpec, environ: dict[str, str], run_dir: Path) -> tuple[int, str]:
    """sbatch: its output is shown and kept (logs/sbatch.out); returns (exit code, the job id it printed)."""
    out = run_dir / LOGS / "sbatch.out"
    code, _ = spawn.run(spec, environ, stderr_path=out, stdout_path=out)
    text = out.read_text(errors="replace") if out.exists() else ""
    print(text.strip(), file=sys.stdout if code == 0 else sys.stderr)
    found = SUBMITTED.findall(text)
    return code, found[-1] if found else ""


def backoff(attempt: int, base_s: float) -> float:
    return min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


def run_supervised(spec: LaunchSpec, environ: dict[str, str], run_dir: Path, max_restarts: int, backoff_s: float,
                   say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                   control: spawn.StopControl | None = None, final_step: int = 0) -> int:
    """The job under the engine's launcher, restarted up to max_restarts times. `final_step`: the global step that
    completes the run (0 for a user's script, which may not honour it), so a stop that arrives after the last save
    does not call a finished run stopped."""
    ckpt_root = run_dir / CHECKPOINTS
    code = 0
    for attempt in range(max_restarts + 1):
        for stale in run_dir.glob(USER_ERROR_GLOB):
            stale.unlink()
        env = {**environ, "LAUNCHER_RESTART": str(attempt)}
        before = latest_complete_any(ckpt_root, warn=lambda _m: None)
        code, signals = spawn.run(spec, env, control, run_dir / ENGINE_LOG)
        errors = by_cause(run_dir)
        if errors and errors[0].get("replan"):
            return OOM_REPLAN_EXIT_CODE  # the caller re-plans with a smaller micro batch and says so
        if errors:
            say(errors[0]["paragraph"])
            if not errors[0].get("restartable"):
                return 2
            code = code or 1
        if signals:
            return _after_signal(code, signals, ckpt_root, before.global_step if before else 0, say, final_step)
        if code == 0:
            return 0
        if not errors:
            say(failure_paragraph(run_dir, code))
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
                  say: Callable[[str], None], final_step: int = 0) -> int:
    """75 when the job stopped with a complete checkpoint to resume from: it exited cleanly, or it completed a new
    one during this attempt (DeepSpeed's multi-host runner exits 1 after any stop, however well the ranks saved).
    0 when it exited cleanly with the run's final step saved: the stop came after the work was done.
    A second signal, or a closed terminal, stops without saving: the code of the last signal. A user script's
    Trainer saves checkpoint-N directories: those count too."""
    latest = latest_complete_any(ckpt_root, warn=lambda _m: None)
    if code == 0 and final_step and latest is not None and latest.global_step >= final_step:
        say(f"the job had already finished: all {final_step} steps are saved ({latest.path}); the stop changed nothing")
        return 0
    saved = latest is not None and len(signals) == 1 and signals[0] != signal.SIGHUP and (
        code == 0 or latest.global_step > step_before)
    if saved:
        say(f"stopped: saved at global step {latest.global_step} ({latest.path}); rerun the same command to resume "
            f"from it (exit code {PREEMPTED_EXIT_CODE})")
        return PREEMPTED_EXIT_CODE
    where = (f"the newest complete checkpoint is global step {latest.global_step} ({latest.path})" if latest
             else "there is no complete checkpoint yet")
    say(f"stopped without saving a new checkpoint; {where}. Rerun the same command to resume "
        f"(exit code {128 + signals[-1]})")
    return 128 + signals[-1]


def failure_paragraph(run_dir: Path, code: int) -> str:
    """The job failed without a user-facing error: the first real exception found in the logs, and where it is."""
    found = first_exception(run_dir)
    if found is None:
        return (f"the job failed with exit code {code}; its output is in {run_dir / 'logs'} ({ENGINE_LOG} holds "
                "what the engine printed)")
    line, path = found
    return f"the job failed with exit code {code}: {line} (see {path})"


def first_exception(run_dir: Path) -> tuple[str, Path] | None:
    """The last line of a traceback in the rank logs and the engine log, preferring a cause over the communication
    errors that follow another rank's exit."""
    logs = run_dir / LOGS
    files = sorted(logs.glob("rank*.out")) + sorted(logs.glob("rank*.log")) + [run_dir / ENGINE_LOG]
    found: list[tuple[str, Path]] = []
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        seen_traceback = False
        for line in lines:
            seen_traceback = seen_traceback or "Traceback (most recent call last)" in line
            m = EXCEPTION_LINE.match(line.strip())
            if seen_traceback and m:
                found.append((m.group(1)[:300], path))
                seen_traceback = False
    causes = [f for f in found if not is_consequence(f[0])]
    return (causes or found or [None])[0]
