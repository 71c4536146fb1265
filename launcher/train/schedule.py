"""Learning-rate schedule: linear warmup then cosine decay to min_lr_ratio x lr.

Built here rather than by DeepSpeed's WarmupCosineLR, which gives the first optimizer step a learning rate of 0
(its scheduler has not "started" before the first step).
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_ratio(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    decay_steps = max(total - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup: int, total: int, min_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_ratio(step, warmup, total, min_ratio))


def resync(scheduler: LambdaLR) -> None:
    """After a resume, set the optimizer's lr to this schedule's value at the restored step: the optimizer state
    carries the lr of the schedule it was saved under, which differs when train.max_steps changed."""
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
