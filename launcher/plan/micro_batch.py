"""train.micro_batch_size=auto: the largest micro batch the memory estimate fits with headroom, among those that
divide global batch / dp, so that gradient accumulation, and with it the optimization, stays the job's. Pure.

Why the largest: per micro step the engine, the data path and the kernels' launches cost the same whatever the batch
(measured on an H100, bench/results/perf.md: a 1.14B model trains ~25% faster at micro 8 than at 4). Why headroom:
the estimate is within a few percent of what DeepSpeed holds (tests/integration/test_memory_engine.py), but the
allocator fragments and a long batch may come late. On a CPU, where the estimate models no device memory, auto is
today's default, 2, so the default job stays what it was.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from launcher.errors import LauncherError
from launcher.plan.memory import MemoryEstimate

if TYPE_CHECKING:
    from launcher.plan.types import Plan

AUTO = "auto"
HEADROOM = 0.10  # of the device's capacity, left free by an auto-chosen micro batch
CPU_MICRO = 2
RECORD_FILE = "micro_batch.json"  # in the run dir: a micro batch lowered after an out-of-memory, kept for resumes
# Relative speed of the ZeRO stages at the same micro batch, and the per-micro-step cost in tokens: measured on H100s
# (bench/results/perf.md): ZeRO-3 trained at 0.74x ZeRO-2 on 2 GPUs; DDP ran 1.02x ZeRO-2 while both paid DeepSpeed's
# per-gradient bf16 overflow check, which ZeRO-1/2 no longer do (train.nonfinite=stop) and DDP's bf16 path cannot
# drop (~3.5% of a micro-16 step in the H100 profile of 2026-12-07); a 1.14B model at micro 4 and 8 of 2048 tokens
# fits step time = a + b x tokens with a = 6,500 tokens' worth (the engine, data path and launches every micro step
# costs whatever its size). The speed of a plan is then STAGE_SPEED x tokens / (tokens + a).
STAGE_SPEED = {0: 0.97, 1: 0.99, 2: 1.0, 3: 0.74}
MICRO_STEP_TOKENS = 6500


def speed(plan: "Plan") -> float:
    """Expected relative speed of a data-parallel plan (ddp, ZeRO-1/2/3) at its micro batch (constants above)."""
    tokens = plan.micro_batch_size * plan.train.seq_len / plan.sp
    return STAGE_SPEED[plan.zero_stage] * tokens / (tokens + MICRO_STEP_TOKENS)


def choices(global_batch: int, dp: int, cap: int = 0) -> list[int]:
    """Micro batches that split global batch / dp evenly, largest first, none above `cap` (0: no cap)."""
    if global_batch % dp:
        lower = max(dp, global_batch // dp * dp)
        raise LauncherError("train.global_batch_size", global_batch, f"use a multiple of the data-parallel size {dp}: "
                            f"train.global_batch_size={lower} or {lower + dp}",
                            problem=f"{global_batch} sequences cannot be shared evenly by {dp} data-parallel ranks")
    per_rank = global_batch // dp
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0 and (cap <= 0 or m <= cap)]


def fits_with_headroom(mem: MemoryEstimate) -> bool:
    return mem.fits and mem.need_gb <= mem.capacity_gb * (1 - HEADROOM)


def choose(global_batch: int, dp: int, accelerator: str, estimate_at: Callable[[int], MemoryEstimate],
           cap: int = 0) -> tuple[int, str]:
    """(micro batch, why) for train.micro_batch_size=auto; `cap` is a recorded lower ceiling (an out-of-memory)."""
    options = choices(global_batch, dp, cap) or [1]
    capped = f", at most {cap} after an out-of-memory (run dir's {RECORD_FILE})" if cap else ""
    if accelerator != "cuda":
        micro = next(m for m in options if m <= CPU_MICRO)
        return micro, f"auto: {micro} on the CPU{capped}"
    for micro in options:
        mem = estimate_at(micro)
        if fits_with_headroom(mem):
            return micro, (f"auto: the largest that divides {global_batch // dp} per data-parallel rank and fits "
                           f"with {HEADROOM:.0%} headroom (~{mem.need_gb:.1f} of {mem.capacity_gb:.0f} GiB){capped}")
    return options[-1], f"auto: {options[-1]}, the smallest; even it does not fit with {HEADROOM:.0%} headroom{capped}"


def next_smaller(global_batch: int, dp: int, micro: int) -> int:
    """The micro batch to retry with after an out-of-memory at `micro` (0: there is none)."""
    smaller = [m for m in choices(global_batch, dp) if m < micro]
    return smaller[0] if smaller else 0
