"""Checks of the user's inputs done at the entry, before anything is launched or written: paths exist, rows parse,
the run dir can be written, the checkpoint to resume from is there and complete.

Failing here costs a second; failing in a rank costs a queue wait and a traceback per process. Nothing here writes:
a refused launch leaves the run dir (or its absence) as it found it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from launcher.checkpoint.store import (HF_TAG_RE, TRAINER_STATE, candidates, hf_problems, problems, resolve_resume,
                                 tag_for)
from launcher.config.schema import ArchConfig, LauncherConfig
from launcher.errors import LauncherError
from launcher.rundir import CHECKPOINTS

MIN_FREE_BYTES = 4_000_000  # a run dir needs room for its configs and logs; checkpoint sizes are checked at each save
RESUME_CHOICES = ("auto", "never", "a global step number", "the path of a checkpoint directory")


def looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or path.count("/") != 1


def absolute(path: str, cwd: str) -> str:
    return str(Path(cwd, os.path.expanduser(path)).resolve()) if path else ""


def check_model(cfg: LauncherConfig, cwd: str) -> LauncherConfig:
    """A local model dir must hold config.json; its shape replaces the preset's for estimates."""
    path = cfg.model.path
    if not path or not looks_local(path):
        return cfg
    full = absolute(path, cwd)
    config_json = Path(full) / "config.json"
    if not config_json.exists():
        what = "does not exist" if not Path(full).exists() else "has no config.json"
        raise LauncherError(
            "model.path", path, "give a Hugging Face model directory (config.json + weights) or a hub id such as "
            "meta-llama/Llama-3.2-3B-Instruct", problem=f"{full} {what}",
        )
    arch = arch_from_hf_config(json.loads(config_json.read_text()), cfg.model.arch)
    model = dataclasses.replace(cfg.model, path=full, arch=arch)
    return dataclasses.replace(cfg, model=model)


def arch_from_hf_config(hf: dict, fallback: ArchConfig) -> ArchConfig:
    heads = hf.get("num_attention_heads", fallback.num_heads)
    return ArchConfig(
        model_type=hf.get("model_type", fallback.model_type),
        hidden_size=hf.get("hidden_size", fallback.hidden_size),
        num_layers=hf.get("num_hidden_layers", fallback.num_layers),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        intermediate_size=hf.get("intermediate_size", fallback.intermediate_size),
        vocab_size=hf.get("vocab_size", fallback.vocab_size),
        max_position_embeddings=hf.get("max_position_embeddings", fallback.max_position_embeddings),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def check_data(cfg: LauncherConfig, cwd: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Read and parse every row of every data set now, as the ranks will (a set with no usable row is a user error,
    not a rank crash; dropped rows are counted by reason once, here): the training and validation sets, counted."""
    from launcher.data.selection import plan_sets

    for field, path in (("data.path", cfg.data.path), ("data.eval_path", cfg.data.eval_path)):
        problem = _data_file_problem(Path(absolute(path, cwd))) if path and looks_local(path) else ""
        if problem:
            raise LauncherError(field, path, "give a data file (.json, .jsonl, .parquet, .csv, .arrow) in alpaca "
                                "or sharegpt form, a folder of them, or a hub id", problem=f"{absolute(path, cwd)} {problem}")
    train, evals = plan_sets(cfg.data, cfg.train.seed, cwd)
    if cfg.train.eval_every and not (evals or any(s.val_rows for s in train)):
        raise LauncherError("train.eval_every", cfg.train.eval_every, "hold out validation rows with "
                            "data.val_size=0.05 (a fraction) or data.val_size=200 (rows), or give data.eval_path / "
                            "data.eval_datasets", problem="there is no validation set to score")
    return train, evals


def _data_file_problem(path: Path) -> str:
    if path.is_dir():
        return "" if any(p.is_file() for p in path.iterdir()) else "is an empty directory"
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read by this user"
    return "is empty (0 bytes)" if path.stat().st_size == 0 else ""


def check_tokenizer(cfg: LauncherConfig, cwd: str) -> LauncherConfig:
    tok = cfg.model.tokenizer
    if tok and looks_local(tok):
        full = absolute(tok, cwd)
        if not Path(full).exists():
            raise LauncherError("model.tokenizer", tok, "give a tokenizer directory or hub id", problem=f"{full} does not exist")
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tokenizer=full))
    return cfg


def check_run_dir(run_dir: Path, field: str = "run.dir", value: str | None = None) -> None:
    """The run dir exists as a directory, or can be created: its nearest existing ancestor is a directory this user
    may write to, on a writable filesystem with room for a run's files. Creates nothing. `field` and `value` name
    where the path came from (run.dir, or run.output_dir + run.name)."""
    shown = str(run_dir) if value is None else value
    existing = run_dir
    while not os.path.exists(existing) and existing != existing.parent:
        if os.path.islink(existing):
            raise LauncherError(field, shown, "remove the link or point it at a directory",
                                problem=f"{existing} is a link to {os.readlink(existing)}, which does not exist")
        existing = existing.parent
    below = "" if existing == run_dir else f", so {run_dir} cannot be created"
    if not existing.is_dir():
        kind = "a regular file" if existing.is_file() else "not a directory"
        raise LauncherError(field, shown, f"remove or rename {existing}, or choose another {field}",
                            problem=f"{existing} is {kind}{below}")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:  # root passes os.access even on a read-only mount
        raise LauncherError(field, shown, f"choose a {field} on a writable filesystem",
                            problem=f"{existing} is on a read-only filesystem{below}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LauncherError(field, shown, f"choose a {field} this user can write to, or make {existing} writable",
                            problem=f"{existing} is not writable by this user{below}")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise LauncherError(field, shown, f"free disk space there, or choose a {field} on another filesystem",
                            problem=f"the filesystem of {existing} is full: {free / 1e6:.1f} MB free, and a run needs "
                            f"at least {MIN_FREE_BYTES / 1e6:.0f} MB for its configs and logs")


def check_resume(resume: str, run_dir: Path, cwd: str = "", script: bool = False) -> None:
    """run.resume, resolved here as every rank will resolve it, so that a step or path with no complete checkpoint
    stops the launch before a rank starts. A user script (`script`) may also resume from a Trainer checkpoint-N."""
    if resume in ("auto", "never"):
        return
    root = run_dir / CHECKPOINTS
    path = Path(cwd or os.getcwd(), resume)
    if not resume.isdigit() and not path.is_dir():
        missing = "does not exist" if not path.exists() else "is not a directory"
        problem = f"{path} {missing}" if os.sep in resume or path.exists() else (
            f"it is not auto, never or a global step number, and no directory {path} exists")
        raise LauncherError("run.resume", resume, f"use {_resume_choices(root, script)}", problem=problem)
    trainer = _trainer_checkpoint(root, resume, path, script)
    if trainer is not None:
        why = hf_problems(trainer) if script else "it is a Trainer checkpoint, which only a script= run resumes from"
        if why:
            raise LauncherError("run.resume", resume, f"use {_resume_choices(root, script)}",
                                problem=f"{trainer}: {why}")
        return
    try:
        resolve_resume(root, resume if resume.isdigit() else str(path))
    except LauncherError as err:  # the same refusal the ranks would give, with this run dir's choices
        raise LauncherError("run.resume", resume, f"use {_resume_choices(root, script)}", problem=err.problem) from err


def _trainer_checkpoint(root: Path, resume: str, path: Path, script: bool) -> Path | None:
    """The Trainer checkpoint-N directory run.resume names, if it names one rather than a global_step<N>."""
    if resume.isdigit():
        trainer = root / f"checkpoint-{int(resume)}"
        return trainer if script and trainer.is_dir() and not (root / tag_for(int(resume))).is_dir() else None
    return path if HF_TAG_RE.match(path.name) or (path / TRAINER_STATE).exists() else None


def _resume_choices(root: Path, script: bool) -> str:
    """The choices, with the global steps this run dir has complete checkpoints for."""
    steps = [step for step, path in candidates(root) if not problems(path)]
    if script and root.is_dir():
        steps += [int(m[1]) for p in root.iterdir() if (m := HF_TAG_RE.match(p.name)) and not hf_problems(p)]
    shown = ", ".join(str(step) for step in sorted(set(steps))[-5:])
    have = f"complete checkpoints in {root}: global step {shown}" if steps else f"{root} holds no complete checkpoint"
    return f"{', '.join(RESUME_CHOICES[:-1])} or {RESUME_CHOICES[-1]} ({have})"
