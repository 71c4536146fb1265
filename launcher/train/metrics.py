"""Per-step metrics: one JSON line per step in metrics.jsonl (rank 0), MFU from the model's FLOPs per token."""
from __future__ import annotations

import json
import resource
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from launcher.config.schema import ArchConfig

# Dense bf16 peak per GPU (TFLOP/s), by a substring of torch.cuda.get_device_name() (the longest that matches wins).
# Datasheet figures, except those in ESTIMATED_PEAKS. GB10: NVIDIA publishes 1 PFLOP of sparse FP4 and no dense bf16
# figure; a quarter for dense FP8 and half again for bf16 gives 125, a guess. A peak measured on the GPU model
# (`python -m launcher.preflight --peak`, launcher/peaks.py) takes precedence over this table.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "GB200": 2500.0, "A100": 312.0,
               "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "GB10": 125.0, "RTX 6000 Ada": 364.0}
ESTIMATED_PEAKS = {"GB10"}


@dataclass(frozen=True)
class Peak:
    """The peak an MFU figure is taken against, and what it rests on: a measurement here, a datasheet, or a guess."""

    flops: float
    basis: str  # measured | datasheet | estimated

    @property
    def label(self) -> str:
        return f"of {self.basis} peak"


def find_peak(device_name: str, recorded: dict[str, float]) -> Peak | None:
    """A peak recorded for this exact device name (TFLOP/s), else the table's; None for an unknown GPU."""
    if recorded.get(device_name):
        return Peak(recorded[device_name] * 1e12, "measured")
    keys = sorted((k for k in PEAK_TFLOPS if k.upper() in device_name.upper()), key=len, reverse=True)
    if not keys:
        return None
    return Peak(PEAK_TFLOPS[keys[0]] * 1e12, "estimated" if keys[0] in ESTIMATED_PEAKS else "datasheet")


def peak_flops(device_name: str, recorded: dict[str, float] | None = None) -> float | None:
    peak = find_peak(device_name, recorded or {})
    return peak.flops if peak else None


def flops_per_token(arch: ArchConfig, params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·h·s for attention (PaLM appendix B)."""
    return 6.0 * params + 12.0 * arch.num_layers * arch.hidden_size * seq_len


def memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by this rank, or the peak resident memory of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


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
    mfu: float | None = None
    memory_gb: float = 0.0


@dataclass
class EvalMetrics:
    """A validation score: its own metrics.jsonl row (`eval_loss` with the global step it was taken after)."""

    step: int
    eval_loss: float
    eval_tokens: int
    eval_time_s: float
    time: float


class MetricsWriter:
    """Appends (a resumed run continues the same file), flushing each line so a crash loses nothing written. With
    `peak` each MFU says what it is taken against (a row's `mfu_peak`: measured, datasheet or estimated)."""

    def __init__(self, path: Path, max_steps: int, peak: Peak | None = None) -> None:
        self.path = path
        self.max_steps = max_steps
        self.peak = peak
        self.file = open(path, "a", buffering=1)

    def write(self, m: StepMetrics | EvalMetrics) -> None:
        row = asdict(m)
        if isinstance(m, StepMetrics) and m.mfu is not None and self.peak:
            row["mfu_peak"] = self.peak.basis
        self.file.write(json.dumps(row) + "\n")

    def line(self, m: StepMetrics) -> str:
        grad = f"{m.grad_norm:.3f}" if m.grad_norm is not None else "n/a"
        of = f" {self.peak.label}" if self.peak else ""
        mfu = f" | MFU {m.mfu:.1%}{of}" if m.mfu is not None else ""
        return (f"step {m.step}/{self.max_steps} | loss {m.loss:.4f} | lr {m.lr:.2e} | grad norm {grad} | "
                f"{m.tokens_per_s:,.0f} tok/s{mfu} | mem {m.memory_gb:.1f} GiB | {m.step_time_s:.2f} s")

    def eval_line(self, m: EvalMetrics) -> str:
        return (f"eval after step {m.step}/{self.max_steps} | eval loss {m.eval_loss:.4f} over {m.eval_tokens:,} "
                f"tokens | {m.eval_time_s:.2f} s")

    def close(self) -> None:
        self.file.close()


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop lines of steps after the checkpoint: they are recomputed, and plots must not show them twice."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
