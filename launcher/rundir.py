"""The run directory's layout and the contract between the launcher and its ranks, in one place: file names, exit
codes, the error records a rank leaves for the supervisor; and writing artifacts without ever destroying what an
earlier launch left there. Standard library only: the launch side and every rank import it."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

PLAN_FILE = "plan.json"  # the resolved Plan: every rank reads it, nothing re-derives it
DS_CONFIG_FILE = "ds_config.json"
DS_UNIVERSAL_FILE = "ds_config.universal.json"  # the same, for a resume through a universal checkpoint
CHECKPOINTS = "checkpoints"
LOGS = "logs"  # logs/rank<N>.log (and .out), logs/engine.log
METRICS_FILE = "metrics.jsonl"
ENGINE_LOG = f"{LOGS}/engine.log"  # the engine's stderr: torchrun's or DeepSpeed's messages, rank 0's warnings
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: saved and stopped on request; rerunning the same command resumes
OOM_REPLAN_EXIT_CODE = 76  # a rank ran out of memory in its first steps at an auto-chosen micro batch: re-plan


USER_ERROR_FILE = "user_error.json"  # written by a rank that hit a user-facing failure (rank N>0: user_error.rankN.json)
USER_ERROR_GLOB = "user_error*.json"
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:?\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*)$")
# a communication error that follows another rank's exit is a consequence, not the cause
CONSEQUENCES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ChildFailedError",
                "DistBackendError", "DistNetworkError", "NCCL communicator was aborted", "SignalException")


def write_error_record(run_dir: Path, record: dict) -> None:
    """A rank's error for the supervisor (user_error.json for rank 0, user_error.rank<N>.json for the others)."""
    rank = record["rank"]
    path = run_dir / (USER_ERROR_FILE if rank == 0 else USER_ERROR_FILE.replace(".json", f".rank{rank}.json"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"time": time.time(), **record}))
    os.replace(tmp, path)


def is_consequence(text: str) -> bool:
    """A communication error that follows another rank's exit (a peer closed its socket, NCCL aborted)."""
    return any(marker in text for marker in CONSEQUENCES)


def by_cause(run_dir: Path) -> list[dict]:
    """The ranks' error records, the cause first: an error that is not a consequence of another rank's exit, then
    the lowest rank. Wall-clock order is not used: the clocks of two hosts are not comparable."""
    records = []
    for path in run_dir.glob(USER_ERROR_GLOB):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda e: (bool(e.get("consequence")), e["rank"]))


def rank_log(run_dir: Path, rank: int) -> Path:
    return run_dir / LOGS / f"rank{rank}.log"


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


RUN_MARKS = ("lease.json", METRICS_FILE, CHECKPOINTS, LOGS)  # what a launch leaves: this dir holds a run


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / mark).exists() for mark in RUN_MARKS)


def dry_run_dir(run_dir: Path) -> Path:
    """Where a dry run writes: the run dir while no launch has used it, else its dry_run/ folder (a running or
    finished run's files are never overwritten by a dry run)."""
    return run_dir / "dry_run" if holds_a_run(run_dir) else run_dir


def default_run_name(model: str, method: str, plan: str) -> str:
    """Deterministic, so that rerunning the same command resumes the same run."""
    return f"{model}-{method}-{plan}"
