"""Measured bf16 matmul peaks per GPU model, kept between runs: `python -m launcher.preflight --peak` records them and
rank 0's MFU uses them (launcher/train/metrics.py). Shared by both sides: the preflight writes, the rank reads.

One small JSON file in the launcher's cache dir ($LAUNCHER_CACHE_DIR, else $XDG_CACHE_HOME/launcher, else
~/.cache/launcher), keyed by torch's device name: {"NVIDIA GB10": {"tflops": ..., "measured": ..., ...}}.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

PEAK_FILE = "peak.json"


def peak_path(environ: dict[str, str]) -> Path:
    from launcher.data.cache import cache_root

    return cache_root(environ) / PEAK_FILE


def read_peaks(path: Path) -> dict[str, float]:
    """device name -> measured TFLOP/s; {} when the file is missing or unreadable (MFU then uses the table)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(name): float(entry["tflops"]) for name, entry in doc.items()
            if isinstance(entry, dict) and isinstance(entry.get("tflops"), (int, float)) and entry["tflops"] > 0}


def record_peak(path: Path, device_name: str, entry: dict[str, object]) -> None:
    """Add or replace one device's entry, keeping the others; written whole (rename) so a reader never sees half."""
    try:
        doc = json.loads(path.read_text())
        doc = doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        doc = {}
    doc[device_name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
