"""Atomic checkpoints: DeepSpeed's format, made visible only when every rank has written and flushed.

A save goes to `.tmp-global_step<N>/`; after a barrier rank 0 fsyncs every file, renames the directory to
`global_step<N>/`, writes `complete.json` (a manifest of file sizes) and finally updates `latest`. A save killed at
any moment leaves the previous complete checkpoint as the newest one `latest_complete` will pick.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from launcher.errors import LauncherError

COMPLETE = "complete.json"
TAG_RE = re.compile(r"^global_step(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    global_step: int
    meta: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.path.name


def tag_for(step: int) -> str:
    return f"global_step{step}"


def manifest(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def problems(path: Path) -> str:
    """Why a checkpoint directory is not usable, or "" when it is complete and every listed file is intact."""
    marker = path / COMPLETE
    if not marker.exists():
        return "no completion marker (the save was interrupted)"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "unreadable completion marker"
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.exists():
            return f"file {name} is missing"
        if f.stat().st_size != size:
            return f"file {name} is truncated ({f.stat().st_size} of {size} bytes)"
    return ""


def candidates(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := TAG_RE.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def latest_complete(root: Path, warn: Callable[[str], None] | None = None) -> Checkpoint | None:
    """The newest usable checkpoint; partial or damaged newer ones are skipped, each named in a warning."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    for step, path in candidates(root):
        why = problems(path)
        if not why:
            return Checkpoint(path, step, json.loads((path / COMPLETE).read_text()))
        warn(f"warning: skipping checkpoint {path}: {why}")
    return None


HF_TAG_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers.Trainer's checkpoint-<global step>
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it after the weights, optimizer and RNG states


def hf_problems(path: Path) -> str:
    """Why a Trainer `checkpoint-N` directory is not usable, or "": it needs its trainer_state.json, and every
    safetensors and torch zip file in it must be whole (a truncated file is named)."""
    try:
        json.loads((path / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE} (the save was interrupted)"
    except (OSError, ValueError):
        return f"unreadable {TRAINER_STATE}"
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        why = _safetensors_problem(f) if f.suffix == ".safetensors" else _zip_problem(f) if f.suffix in (
            ".pt", ".pth", ".bin") else ""
        if why:
            return f"file {f.relative_to(path)} {why}"
    return ""


def _safetensors_problem(f: Path) -> str:
    """A safetensors file is an 8-byte header length, a JSON header of tensor offsets, then the data."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n)) if 8 + n <= size else None
    except (OSError, ValueError):
        header = None
    if header is None:
        return f"is truncated ({size} bytes, its header is incomplete)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return f"is truncated ({size} of {8 + n + end} bytes)" if size < 8 + n + end else ""


def _zip_problem(f: Path) -> str:
    """torch.save writes a zip archive; one cut short has lost its central directory at the end."""
    import zipfile

    with open(f, "rb") as fh:
        is_zip_start = fh.read(2) == b"PK"
    return "is truncated (its zip directory is missing)" if is_zip_start and not zipfile.is_zipfile(f) else ""


def latest_complete_any(root: Path, warn: Callable[[str], None] | None = None) -> Checkpoint | None:
    """The newest usable checkpoint in the launcher's format (`global_step<N>`) or the Trainer's (`checkpoint-<N>`):
    what a user script resumes from. Partial or damaged newer ones are skipped, each named in a warning."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    found = [(step, 1, p) for step, p in candidates(root)]
    if root.is_dir():
        found += [(int(m.group(1)), 0, p) for p in root.iterdir() if (m := HF_TAG_RE.match(p.name)) and p.is_dir()]
    for step, launcher_format, path in sorted(found, reverse=True):
        why = problems(path) if launcher_format else hf_problems(path)
        if not why:
            meta = json.loads((path / (COMPLETE if launcher_format else TRAINER_STATE)).read_text())
            return Checkpoint(path, step, meta)
        warn(f"warning: skipping checkpoint {path}: {why}")
    return None


def resolve_resume(root: Path, resume: str, warn: Callable[[str], None] | None = None) -> Checkpoint | None:
    """run.resume: auto (newest complete), never, a global step number, or a checkpoint directory."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(root, warn)
    path = root / tag_for(int(resume)) if resume.isdigit() else Path(resume)
    why = problems(path) if path.is_dir() else "it does not exist"
    if why:
        raise LauncherError("run.resume", resume, "use auto, never, a global step that has a complete checkpoint, "
                            "or the path of a global_step<N> directory", problem=f"{path}: {why}")
    meta = json.loads((path / COMPLETE).read_text())
    return Checkpoint(path, int(meta["global_step"]), meta)


def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def prepare_save(root: Path, step: int) -> str:
    """Rank 0, before a save: clear a stale temporary directory of the same step. Returns the temporary tag."""
    tmp_tag = f".tmp-{tag_for(step)}"
    shutil.rmtree(root / tmp_tag, ignore_errors=True)
    return tmp_tag


def commit_save(root: Path, step: int, meta: dict[str, Any], keep_last: int) -> Checkpoint:
    """Rank 0, after every rank has written: fsync, rename, completion marker, then `latest`; then retention."""
    tmp = root / f".tmp-{tag_for(step)}"
    final = root / tag_for(step)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)  # an earlier save of this step that never completed
    os.replace(tmp, final)
    _fsync_dir(root)
    full_meta = {**meta, "global_step": step, "saved_at": time.time(), "files": manifest(final)}
    write_atomic(final / COMPLETE, json.dumps(full_meta, indent=2, sort_keys=True))
    write_atomic(root / "latest", tag_for(step))
    prune(root, keep_last, keep=final)
    return Checkpoint(final, step, full_meta)


def prune(root: Path, keep_last: int, keep: Path) -> None:
    """Keep the newest `keep_last` complete checkpoints and never the one `latest` names; 0 keeps all."""
    if keep_last <= 0:
        return
    complete = [p for _, p in candidates(root) if (p / COMPLETE).exists()]
    for path in complete[keep_last:]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
