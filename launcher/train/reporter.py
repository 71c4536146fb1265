"""Rank 0's outputs for every step: metrics.jsonl, the console (bar or lines) and wandb, fed one StepMetrics."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from launcher.peaks import peak_path, read_peaks
from launcher.plan.types import Plan
from launcher.rundir import METRICS_FILE
from launcher.train.metrics import EvalMetrics, MetricsWriter, StepMetrics, find_peak, flops_per_token, memory_gb, truncate_after
from launcher.train.progress import Progress
from launcher.train.tracking import Tracker

log = logging.getLogger("launcher")


class Reporter:
    def __init__(self, plan: Plan, run_dir: Path, start_step: int, device: torch.device, world_size: int,
                 environ: dict[str, str] | None = None) -> None:
        self.device = device
        truncate_after(run_dir / METRICS_FILE, start_step)
        # MFU against a peak measured on this GPU model (launcher.preflight --peak) when one is recorded
        peak = find_peak(torch.cuda.get_device_name(device), read_peaks(peak_path(environ or {}))) \
            if device.type == "cuda" else None
        self.writer = MetricsWriter(run_dir / METRICS_FILE, plan.max_steps, peak)
        self.tracker = Tracker(plan, run_dir)  # first: the bar's clock and ETA start with training, not wandb's start
        self.progress = Progress(plan.max_steps, start_step, plan.train.log_every, self.writer.line, peak=peak)
        per_token = flops_per_token(plan.model.arch, plan.memory.params, plan.train.seq_len)
        self.flops_per_s_to_mfu = per_token / (peak.flops * world_size) if peak else None

    def __call__(self, m: StepMetrics) -> None:
        mfu = m.tokens_per_s * self.flops_per_s_to_mfu if self.flops_per_s_to_mfu else None
        m = dataclasses.replace(m, mfu=mfu, memory_gb=round(memory_gb(self.device), 3))
        self.writer.write(m)
        self.progress.update(m)
        self.tracker.log(m)

    def eval(self, m: EvalMetrics) -> None:
        """A validation score: a metrics.jsonl row, a console line (above the bar), wandb's eval_loss."""
        self.writer.write(m)
        log.info(self.writer.eval_line(m))
        self.tracker.log_eval(m)

    def close(self) -> None:
        self.progress.close()
        self.writer.close()
        self.tracker.finish()
