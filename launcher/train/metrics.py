"""Per-step metrics: one JSON line per step in metrics.jsonl (rank 0) and a plain console line."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    tokens_per_s: float
    step_time_s: float
    time: float


class MetricsWriter:
    """Appends (a resumed run continues the same file), flushing each line so a crash loses nothing written."""

    def __init__(self, path: Path, max_steps: int) -> None:
        self.path = path
        self.max_steps = max_steps
        self.file = open(path, "a", buffering=1)

    def write(self, m: StepMetrics) -> None:
        self.file.write(json.dumps(asdict(m)) + "\n")

    def line(self, m: StepMetrics) -> str:
        grad = f"{m.grad_norm:.3f}" if m.grad_norm is not None else "n/a"
        return (f"step {m.step}/{self.max_steps} | loss {m.loss:.4f} | lr {m.lr:.2e} | grad norm {grad} | "
                f"{m.tokens_per_s:,.0f} tok/s | {m.step_time_s:.2f} s")

    def close(self) -> None:
        self.file.close()


def now() -> float:
    return time.time()


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop lines of steps after the checkpoint: they are recomputed, and plots must not show them twice."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
