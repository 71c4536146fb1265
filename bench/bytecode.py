"""Python bytecode for every package a bench row imports, compiled before anything is timed.

A `pip install` writes each module's bytecode at install time, so a user's process start reads it. On a lent GPU
machine one import of torch, DeepSpeed and transformers compiled 918 modules from source (5.3 s of
`builtins.compile`), in the fifth process of a call to import them (bench/results/perf.md, 2026-12-07 19:43): no
bytecode was there and none got written, and the carried wheels are installed with `--no-compile`. That cost falls
on every row's start-up, and more on the launcher's, which also imports Hydra, OmegaConf and its own modules, so it
made the launch overhead partly a measure of the machine's image. Compiling once ahead removes it for every row
alike. The bytecode is used even where PYTHONDONTWRITEBYTECODE is set: that variable only stops an import from
writing it.
"""
from __future__ import annotations

import compileall
import importlib.util
import os
import time
from pathlib import Path

PACKAGES = ("launcher", "bench", "torch", "deepspeed", "transformers", "tokenizers", "hydra", "omegaconf", "antlr4",
            "liger_kernel", "torchao", "peft", "accelerate", "safetensors", "jinja2", "rich", "triton")


def package_dirs(names: tuple[str, ...] = PACKAGES) -> list[Path]:
    """The installed folders of the packages that are importable here."""
    dirs = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def missing(dirs: list[Path]) -> int:
    """Modules under `dirs` whose bytecode is absent or older than their source."""
    count = 0
    for d in dirs:
        for path in d.rglob("*.py"):
            cached = Path(importlib.util.cache_from_source(str(path)))
            try:
                if cached.stat().st_mtime < path.stat().st_mtime:
                    count += 1
            except OSError:
                count += 1
    return count


def compile_ahead(dirs: list[Path] | None = None, workers: int = 0) -> str:
    """Compile what is missing; says how many modules lacked bytecode and how long it took."""
    dirs = package_dirs() if dirs is None else dirs
    before = missing(dirs)
    if not before:
        return "bytecode: already compiled for every package the rows import"
    started = time.time()
    for d in dirs:
        compileall.compile_dir(str(d), quiet=2, workers=workers or os.cpu_count() or 1)
    left = missing(dirs)
    unwritable = f"; {left} still lack it (a read-only folder, or source this Python does not compile)" if left else ""
    return (f"bytecode: {before} modules had none and were compiled ahead in {time.time() - started:.0f} s, as a pip "
            f"install does{unwritable}")
