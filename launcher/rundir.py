"""The run directory: where artifacts are written without ever destroying what an earlier launch left there."""
from __future__ import annotations

import os
import time
from pathlib import Path


def write_artifacts(run_dir: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> list[str]:
    """Write each file; one that exists with other content is first moved to history/<time>/. Returns moved names."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved: list[str] = []
    for name, text in files.items():
        path = run_dir / name
        if path.exists() and path.read_text() != text:
            keep = run_dir / "history" / stamp / name
            keep.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, keep)
            moved.append(name)
        if not path.exists():
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            if name in executable:
                tmp.chmod(0o755)
            os.replace(tmp, path)
    return moved


RUN_MARKS = ("lease.json", "metrics.jsonl", "checkpoints", "logs")  # what a launch leaves: this dir holds a run


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / mark).exists() for mark in RUN_MARKS)


def dry_run_dir(run_dir: Path) -> Path:
    """Where a dry run writes: the run dir while no launch has used it, else its dry_run/ folder (a running or
    finished run's files are never overwritten by a dry run)."""
    return run_dir / "dry_run" if holds_a_run(run_dir) else run_dir


def default_run_name(model: str, method: str, plan: str) -> str:
    """Deterministic, so that rerunning the same command resumes the same run."""
    return f"{model}-{method}-{plan}"
